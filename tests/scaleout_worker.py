"""Subprocess worker of the scale-out tests: the device count must be fixed before JAX is imported.

``python tests/scaleout_worker.py checks``  -- one process with 8 simulated devices: sharded vs
    unsharded logits and tokens, per-device bytes, compiled collectives; prints one JSON line.
``python tests/scaleout_worker.py logits OUT.npz`` -- sharded logits/tokens on a ``tensor``-only mesh
    over every (global) device; runs as one process or under ``bitnet-jax launch``.
``python tests/scaleout_worker.py die`` -- process 1 exits right after start-up; process 0 keeps going.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bitnet_jax.parallel import distributed  # noqa: E402  (no JAX import at module level)

PROMPTS = [[1, 5, 9, 13, 17], [3, 4, 100, 200, 300, 400, 7, 8, 9]]
NEW_TOKENS = 8


def build_model():
    """A tiny packed model (8 heads, 4 KV heads) with NumPy-random weights, identical in every process."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from bitnet_jax import BitNetModel, ModelConfig
    from bitnet_jax.model import Form, Transformer
    from bitnet_jax.parallel.rules import path_name
    from pallas_kernels import get_kernel
    from pallas_kernels.layouts import pack_rows4

    config = ModelConfig.preset("tiny").replace(num_attention_heads=8, num_key_value_heads=4)
    form = Form(kernel=get_kernel("xla"))
    shapes = jax.eval_shape(
        lambda: Transformer(config, form).init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))
    )["params"]
    rng = np.random.default_rng(1234)

    def fill(path, s):
        name = path_name(path)
        if name.endswith("weight_packed/codes"):
            return pack_rows4(rng.integers(-1, 2, (s.shape[0] * 4, s.shape[1])).astype(np.int8))
        if name.endswith("weight_scale"):
            return np.float32(rng.uniform(0.5, 1.5))
        if name.endswith("norm/weight"):
            return (1 + 0.1 * rng.standard_normal(s.shape)).astype(np.float32)
        return (0.5 * rng.standard_normal(s.shape)).astype(np.float32)

    params = jax.tree_util.tree_map_with_path(fill, shapes)
    return BitNetModel(config, jax.tree_util.tree_map(jnp.asarray, params), form=form)


def tokens_array():
    import numpy as np

    return np.random.default_rng(7).integers(0, 512, (2, 12)).astype(np.int32)


def compiled_texts(model, generate_only: bool = False) -> dict:
    """HLO text of the compiled one-token forward and of the whole generation loop."""
    import jax.numpy as jnp

    gen = importlib.import_module("bitnet_jax.inference.generate")  # the module, not the function of that name
    module = gen._module(model)
    out = {}
    if not generate_only:
        out["forward"] = gen._forward.lower(model.params, jnp.zeros((1, 1), jnp.int32), module).compile().as_text()
    prep = gen._prepare(model, PROMPTS, NEW_TOKENS, 0.0, None, None, 0, ())
    out["generate"] = (
        gen._generate_loop.lower(
            model.params, prep["tokens"], prep["lengths"], jnp.int32(NEW_TOKENS), prep["rng"], prep["sampling"],
            prep["stop_tokens"], module=module, cache_len=prep["cache_len"], out_len=prep["out_len"],
        ).compile().as_text()
    )
    out["cache_len"] = prep["cache_len"]
    return out


def describe(text: str) -> list[dict]:
    from bitnet_jax.parallel._hlo import collectives, gathers_packed_weights, moves_weights

    return [
        {"kind": c.kind, "dtypes": sorted(c.dtypes), "bytes": c.nbytes, "op": c.op_name, "weights": moves_weights(c),
         "packed": gathers_packed_weights(c)}
        for c in collectives(text)
    ]


def checks() -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from bitnet_jax import MeshConfig, forward, generate, make_mesh, shard
    from bitnet_jax.parallel.rules import PARAM_RULES, device_bytes

    res: dict = {"devices": jax.device_count()}
    model = build_model()
    cfg = model.config
    toks = tokens_array()
    ref_logits = np.asarray(forward(model, toks))
    ref_tokens = [t.tolist() for t in generate(model, PROMPTS, max_new_tokens=NEW_TOKENS, stop_tokens=())]

    mesh = make_mesh(MeshConfig(data=2, tensor=4))
    sharded = shard(model, mesh)
    logits = forward(sharded, toks)
    res["logits_spec"] = str(logits.sharding.spec) if hasattr(logits.sharding, "spec") else str(logits.sharding)
    logits = np.asarray(logits)
    res["logits_max_abs_diff"] = float(np.abs(logits - ref_logits).max())
    res["logits_max_abs"] = float(np.abs(ref_logits).max())
    res["argmax_equal"] = bool((logits.argmax(-1) == ref_logits.argmax(-1)).all())
    res["tokens_ref"] = ref_tokens
    res["tokens_sharded"] = [t.tolist() for t in generate(sharded, PROMPTS, max_new_tokens=NEW_TOKENS, stop_tokens=())]
    # data parallelism: the generation loop's batch (and KV cache) split over the two `data` replicas
    gen = importlib.import_module("bitnet_jax.inference.generate")
    prep = gen._prepare(sharded, PROMPTS, NEW_TOKENS, 0.0, None, None, 0, ())
    res["generate_tokens_spec"] = str(prep["tokens"].sharding.spec)
    compiled = gen._generate_loop.lower(
        sharded.params, prep["tokens"], prep["lengths"], jnp.int32(NEW_TOKENS), prep["rng"], prep["sampling"],
        prep["stop_tokens"], module=gen._module(sharded), cache_len=prep["cache_len"], out_len=prep["out_len"],
    ).compile()
    res["generate_output_specs"] = [str(s.spec) for s in jax.tree_util.tree_leaves(compiled.output_shardings)]

    from bitnet_jax.parallel.rules import path_name

    def packed_only(params):
        return jax.tree_util.tree_map_with_path(
            lambda p, x: x if path_name(p).endswith("weight_packed/codes") else None, params
        )

    res["packed_total_bytes"] = sum(x.nbytes for x in jax.tree_util.tree_leaves(packed_only(model.params)))
    res["param_total_bytes"] = sum(x.nbytes for x in jax.tree_util.tree_leaves(model.params))
    res["packed_bytes_per_device_t4"] = sorted(set(device_bytes(packed_only(sharded.params)).values()))
    res["param_bytes_per_device_t4"] = sorted(set(device_bytes(sharded.params).values()))
    t8 = shard(model, make_mesh(MeshConfig(tensor=8)))
    res["packed_bytes_per_device_t8"] = sorted(set(device_bytes(packed_only(t8.params)).values()))
    res["param_bytes_per_device_t8"] = sorted(set(device_bytes(t8.params).values()))

    texts = compiled_texts(sharded)
    res["forward_collectives"] = describe(texts["forward"])
    res["generate_collectives"] = describe(texts["generate"])
    # data=2 x tensor=4: batch rows split over `data`, KV heads over `tensor`
    kv_local = f"f32[{len(PROMPTS) // 2},{texts['cache_len']},{cfg.num_key_value_heads // 4},{cfg.head_size}]"
    kv_global = f"f32[{len(PROMPTS)},{texts['cache_len']},{cfg.num_key_value_heads},{cfg.head_size}]"
    res["kv_cache_local_shape_count"] = texts["generate"].count(kv_local)
    res["kv_cache_global_shape_count"] = texts["generate"].count(kv_global)

    # negative control: splitting the packed rows4 codes by rows makes XLA reshard the unpacked weights
    rows_rules = tuple(
        (pat, ("tensor", None) if pat.startswith("_proj/weight_packed") else axes) for pat, axes in PARAM_RULES
    )
    rows_rules = ((r"(o|down)_proj/weight_packed/codes$", (None, "tensor")),) + rows_rules
    rows = shard(model, mesh, rules=rows_rules)
    gen = importlib.import_module("bitnet_jax.inference.generate")
    import jax.numpy as jnp

    text = gen._forward.lower(rows.params, jnp.zeros((1, 1), jnp.int32), gen._module(rows)).compile().as_text()
    res["rows_split_collectives"] = describe(text)
    res.update(fsdp_hook_checks(model, ref_logits, ref_tokens))
    res.update(tile16_shard_checks(model, ref_logits))
    res["real_shape_collectives"], res["real_shape_cache"] = real_shape_generate()
    return res


def real_shape_generate() -> tuple[list[dict], list[str]]:
    """Compile (not run) generation for one 2B4T-shaped layer (vocabulary cut to 8192) on tensor=8."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding

    from bitnet_jax import BitNetModel, MeshConfig, ModelConfig, make_mesh
    from bitnet_jax.model import Form, Transformer
    from bitnet_jax.parallel import on_mesh
    from bitnet_jax.parallel.rules import param_specs
    from pallas_kernels import get_kernel

    config = ModelConfig().replace(num_hidden_layers=1, vocab_size=8192, max_position_embeddings=256,
                                   bos_token_id=1, eos_token_id=2)
    module = Transformer(config, Form(kernel=get_kernel("xla")))
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32)))["params"]
    mesh = make_mesh(MeshConfig(tensor=8))
    params = jax.tree_util.tree_map(
        lambda s, p: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=NamedSharding(mesh, p)),
        shapes,
        param_specs(shapes, mesh),
    )
    texts = compiled_texts(BitNetModel(config, params, form=Form(kernel=on_mesh(get_kernel("xla"), mesh))),
                           generate_only=True)
    text = texts["generate"]
    cache = re.findall(r"f32\[%d,%d,\d+,%d\]" % (len(PROMPTS), texts["cache_len"], config.head_size), text)
    return describe(text), sorted(set(cache))


def tile16_shard_checks(model, ref_logits) -> dict:
    """A model loaded for the C++ CPU kernel (tile16, which no mesh can split) is repacked by ``shard``."""
    import dataclasses

    import numpy as np

    from bitnet_jax import MeshConfig, forward, make_mesh, shard
    from pallas_kernels import cpu, get_kernel, repack_tree

    if not cpu.AVAILABLE:
        return {"tile16_skipped": True}
    kernel = get_kernel("cpu")
    tile16 = dataclasses.replace(model, params=repack_tree(model.params, kernel.layout),
                                 form=dataclasses.replace(model.form, kernel=kernel))
    sharded = shard(tile16, make_mesh(MeshConfig(tensor=8)))
    return {
        "tile16_unsharded_diff": float(np.abs(np.asarray(forward(tile16, tokens_array())) - ref_logits).max()),
        "tile16_sharded_kernel": sharded.kernel.name,
        "tile16_sharded_diff": float(np.abs(np.asarray(forward(sharded, tokens_array())) - ref_logits).max()),
    }


def fsdp_hook_checks(model, ref_logits, ref_tokens) -> dict:
    """Packed weights stored over ``fsdp`` x ``tensor``; the packed linears multiply them through the
    mesh-aware kernel ``shard(model, mesh)`` gives the model (``shard_map`` per device)."""
    import jax
    import numpy as np

    from bitnet_jax import MeshConfig, forward, generate, make_mesh, shard

    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    sharded = shard(model, mesh)
    logits = np.asarray(forward(sharded, tokens_array()))
    toks = [t.tolist() for t in generate(sharded, PROMPTS, max_new_tokens=NEW_TOKENS, stop_tokens=())]
    texts = compiled_texts(sharded)
    return {
        "fsdp_logits_max_abs_diff": float(np.abs(logits - ref_logits).max()),
        "fsdp_tokens": toks,
        "fsdp_forward_collectives": describe(texts["forward"]),
        "fsdp_generate_collectives": describe(texts["generate"]),
    }


def logits(out: str) -> None:
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    from bitnet_jax import MeshConfig, forward, generate, make_mesh, shard

    model = build_model()
    sharded = shard(model, make_mesh(MeshConfig(tensor=-1)))
    result = forward(sharded, tokens_array())
    result = np.asarray(multihost_utils.process_allgather(result, tiled=True))
    toks = generate(sharded, PROMPTS, max_new_tokens=NEW_TOKENS, stop_tokens=())
    if jax.process_index() == 0:
        tmp = out + ".tmp.npz"
        np.savez(tmp, logits=result, tokens=np.stack(toks), devices=jax.device_count(), processes=jax.process_count())
        os.replace(tmp, out)


def main() -> None:
    mode = sys.argv[1]
    cfg = distributed.initialize()
    if mode == "checks":
        print("RESULT " + json.dumps(checks()))
    elif mode == "logits":
        logits(sys.argv[2])
    elif mode == "die":
        if cfg.process_id == 1:
            os._exit(7)
        logits(os.devnull + ".npz")
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
