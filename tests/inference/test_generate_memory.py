"""The compiled generation loop keeps a bfloat16 embedding table as stored (no float32 copy of it)."""

from __future__ import annotations

import dataclasses
import importlib

import jax
import jax.numpy as jnp
import numpy as np

from bitnet_jax.config import ModelConfig
from bitnet_jax.io import random_checkpoint
from bitnet_jax.io.loading import model_from_checkpoint

gen = importlib.import_module("bitnet_jax.inference.generate")  # the module (the package exports the function)


def test_the_generation_loop_does_not_widen_a_bfloat16_table():
    """XLA's CPU backend widens a bfloat16 gather to float32 and, inside the decode loop, hoisted a float32
    copy of the whole table out of it (1.3 GB for 2B4T). With a table far larger than the KV cache, the
    loop's temporaries must stay well below the table's own size."""
    config = dataclasses.replace(ModelConfig.preset("bitnet-b1.58-2b-4t"), hidden_size=256, intermediate_size=512,
                                 num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                 head_dim=128, vocab_size=32768, bos_token_id=1, eos_token_id=2)
    ckpt = random_checkpoint(config, seed=0)
    for name, value in ckpt.tensors.items():  # bfloat16 values: the loader keeps the table in bfloat16
        if not hasattr(value, "codes") and np.ndim(value) == 2:
            ckpt.tensors[name] = np.asarray(value).astype(jnp.bfloat16).astype(np.float32)
    model = model_from_checkpoint(ckpt)
    table = model.params["embed_tokens"]
    assert table.dtype == jnp.bfloat16
    prep = gen._prepare(model, [[1, 2, 3]], 8, 0.0, None, None, 0, ())
    compiled = gen._generate_loop.lower(
        model.params, prep["tokens"], prep["lengths"], jnp.int32(8), prep["rng"], prep["sampling"],
        prep["stop_tokens"], module=gen._module(model), cache_len=prep["cache_len"],
        out_len=prep["out_len"]).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    assert temp < table.nbytes / 2, (temp, table.nbytes)  # a float32 copy would be 2x the table
