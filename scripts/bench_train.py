#!/usr/bin/env python
"""Train-step throughput: our jitted QAT step vs transformers' BitNetForCausalLM (online AutoBitLinear, torch CPU).

``python scripts/bench_train.py [CONFIG] [--batch B] [--steps N] [--set SECTION.FIELD=VALUE ...]``

Both sides train the config's model on the same random ``[B, seq_len]`` token batches with AdamW
(same hyper-parameters, f32); the reported number is tokens per second over ``N`` timed steps after
warm-up (compilation excluded on our side).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def bench_jax(cfg, model_cfg, batches: np.ndarray, warmup: int) -> float:
    """Tokens/s of the jitted train step."""
    import jax

    from bitnet_jax.parallel import make_mesh
    from bitnet_jax.train.step import batch_sharding, make_optimizer, make_train_step, sharded_init, windows_batch

    mesh = make_mesh(cfg.mesh)
    tx = make_optimizer(cfg)
    state = sharded_init(cfg, model_cfg, tx, mesh)
    step = make_train_step(cfg, model_cfg, tx, mesh)
    shard = batch_sharding(mesh)
    data = [jax.device_put({k: v[None] for k, v in windows_batch(b).items()}, shard) for b in batches]
    for b in data[:warmup]:
        state, m = step(state, b)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for b in data[warmup:]:
        state, m = step(state, b)
    jax.block_until_ready(m)
    return (len(data) - warmup) * batches[0].size / (time.perf_counter() - t0)


def bench_torch(cfg, model_cfg, batches: np.ndarray, warmup: int) -> float:
    """Tokens/s of transformers' BitNetForCausalLM with online-quantized AutoBitLinear layers."""
    import torch
    from torch import nn
    from transformers import BitNetConfig, BitNetForCausalLM
    from transformers.integrations.bitnet import AutoBitLinear

    from bitnet_jax.io.hf import config_to_hf

    hf = config_to_hf(model_cfg)
    hf.pop("torch_dtype", None)
    model = BitNetForCausalLM(BitNetConfig(**{k: v for k, v in hf.items() if k not in ("architectures", "model_type")}))
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    q = AutoBitLinear(child.in_features, child.out_features, bias=False, online_quant=True)
                    q.weight.data.copy_(child.weight.data)
                    setattr(parent, name, q)
    o = cfg.optimizer
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=(o.b1, o.b2), eps=o.eps, weight_decay=o.weight_decay)
    model.train()

    def step(b):
        ids = torch.from_numpy(b.astype(np.int64))
        out = model(input_ids=ids[:, :-1], labels=ids[:, :-1])  # HF shifts labels internally
        out.loss.backward()
        if o.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for b in batches[:warmup]:
        step(b)
    t0 = time.perf_counter()
    for b in batches[warmup:]:
        step(b)
    return (len(batches) - warmup) * batches[0][:, :-1].size / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    """Run both benchmarks and print a JSON line."""
    from bitnet_jax.config import load_config

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", nargs="?", default=str(ROOT / "configs/train/default-model.yaml"))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--set", action="append", default=[])
    args = p.parse_args(argv)
    cfg = load_config(args.config, [*args.set, f"training.batch_size={args.batch}", "training.grad_accum=1"])
    model_cfg = cfg.model.replace(vocab_size=cfg.tokenizer.vocab_size, bos_token_id=0, eos_token_id=0)
    rng = np.random.default_rng(0)
    total = args.warmup + args.steps
    batches = rng.integers(0, model_cfg.vocab_size, (total, args.batch, cfg.data.seq_len + 1)).astype(np.int32)
    ours = bench_jax(cfg, model_cfg, batches, args.warmup)
    theirs = bench_torch(cfg, model_cfg, batches, args.warmup)
    print(json.dumps({"config": args.config, "batch": args.batch, "seq_len": cfg.data.seq_len,
                      "bitnet_jax_tokens_per_s": round(ours, 1), "transformers_torch_tokens_per_s": round(theirs, 1),
                      "speedup": round(ours / theirs, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
