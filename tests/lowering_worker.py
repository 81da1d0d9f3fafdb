"""Subprocess worker of the sharded-lowering tests (the device count is fixed before JAX starts).

``python tests/lowering_worker.py lowered PLATFORM KERNEL MESH`` -- the tiny model with the compiled
(not interpreted) Pallas ``KERNEL`` sharded over 8 simulated CPU devices (``MESH``, a JSON mesh config),
its forward lowered for ``PLATFORM`` (cuda or tpu); prints one ``RESULT {json}`` line about where the
kernel calls sit in the lowered module, for the mesh-aware kernel and (negative control) for the plain
kernel on the same sharded parameters.

``python tests/lowering_worker.py compiled-tpu TOPOLOGY MESH`` -- the same forward compiled through
libtpu for a virtual TPU topology of 8 chips: the collectives the partitioner inserted.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

TOKENS_SHAPE = (2, 16)


def _setup(kernel_name: str, mesh_config: dict, devices=None):
    """(model with the mesh-aware kernel, the plain-kernel module, abstract sharded params, mesh)."""
    import jax
    import numpy as np

    from bitnet_jax import MeshConfig
    from bitnet_jax.model import Form
    from bitnet_jax.parallel import make_mesh, on_mesh, param_shardings
    from pallas_kernels import get_kernel
    from scaleout_worker import build_model

    gen = importlib.import_module("bitnet_jax.inference.generate")
    mesh = make_mesh(MeshConfig.from_dict(mesh_config), devices=devices)
    model = build_model()
    kernel = get_kernel(kernel_name, interpret=False, guard=False)  # lowered for another platform: no probe
    shardings = param_shardings(model.params, mesh)
    params = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(np.shape(a), a.dtype, sharding=s), model.params, shardings
    )
    meshed = gen._module(dataclasses.replace(model, form=Form(kernel=on_mesh(kernel, mesh))))
    plain = gen._module(dataclasses.replace(model, form=Form(kernel=kernel)))
    return gen, meshed, plain, params, mesh


def _tokens(mesh):
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    return jax.ShapeDtypeStruct(TOKENS_SHAPE, jnp.int32, sharding=NamedSharding(mesh, PartitionSpec()))


_MANUAL = re.compile(r"sdy\.manual_computation\(.*?\) in_shardings=\[(?P<specs>.*?)\] out_shardings=.*?\((?P<args>%arg[^)]*)\) \{")
_SPEC = re.compile(r"<@mesh, \[(?P<dims>.*?)\]>")
_ARG = re.compile(r"%arg\d+: tensor<(?P<type>[^>]*)>")
_ALL_GATHER = re.compile(r'"?stablehlo\.all_gather"?.*?->\s*tensor<(?P<type>[^>]*)>')


def codes_operand_specs(text: str) -> list[str]:
    """The sharding of every uint8 (packed codes) operand entering a manual computation."""
    out = []
    for m in _MANUAL.finditer(text):
        specs = [s.group("dims") for s in _SPEC.finditer(m.group("specs"))]
        types = [a.group("type") for a in _ARG.finditer(m.group("args"))]
        out.extend(spec for spec, t in zip(specs, types) if t.endswith("xui8"))
    return out


def lowered(platform: str, kernel_name: str, mesh_config: dict) -> dict:
    """Where the Pallas calls sit in the lowered sharded forward (mesh-aware and plain kernel)."""
    from bitnet_jax.parallel import _hlo

    gen, meshed, plain, params, mesh = _setup(kernel_name, mesh_config)

    def text(module):
        return gen._forward.trace(params, _tokens(mesh), module).lower(lowering_platforms=(platform,)).as_text()

    mesh_text = text(meshed)
    try:
        plain_text, plain_error = text(plain), ""
    except NotImplementedError as e:  # jax refuses a Mosaic TPU call outside shard_map by itself
        plain_text, plain_error = "", str(e).strip().splitlines()[0]
    gathers = [m.group("type") for m in _ALL_GATHER.finditer(mesh_text)]
    return {
        "mesh": dict(mesh.shape),
        "pallas_calls": _hlo.pallas_call_count(mesh_text),
        "outside": _hlo.pallas_calls_outside_shard_map(mesh_text),
        "manual_computations": mesh_text.count("sdy.manual_computation"),
        "codes_specs": codes_operand_specs(mesh_text),
        "all_gather_types": gathers,
        "plain_pallas_calls": _hlo.pallas_call_count(plain_text),
        "plain_outside": _hlo.pallas_calls_outside_shard_map(plain_text),
        "plain_error": plain_error,
    }


def compiled_tpu(topology: str, mesh_config: dict) -> dict:
    """Collectives of the sharded forward compiled for a virtual TPU topology."""
    import jax
    import numpy as np
    from jax.experimental import topologies

    from bitnet_jax.parallel import _hlo

    devices = topologies.get_topology_desc(topology, "tpu").devices
    gen, meshed, _, params, mesh = _setup("tpu", mesh_config, devices=devices)
    compiled = gen._forward.trace(params, _tokens(mesh), meshed).lower(lowering_platforms=("tpu",)).compile()
    colls = _hlo.collectives(compiled.as_text())
    float_weight_shapes = set()
    for leaf in jax.tree_util.tree_leaves(params):
        if np.issubdtype(leaf.dtype, np.floating) and leaf.ndim >= 1:
            float_weight_shapes.add(tuple(leaf.shape))
            float_weight_shapes.add(tuple(leaf.sharding.shard_shape(leaf.shape)))
    return {
        "devices": len(devices),
        "mesh": dict(mesh.shape),
        "pallas_calls": compiled.as_text().count("tpu_custom_call"),
        "weights_moved": [c.op_name for c in colls if _hlo.moves_weights(c)],
        "float_weight_gathers": [
            [c.op_name, [list(s) for _, s in c.arrays]] for c in colls
            if c.kind == "all-gather" and not c.dtypes <= {"u8", "s8", "s32", "pred", "u32"}
            and any(tuple(s) in float_weight_shapes for _, s in c.arrays)
        ],
        "packed_gathers": sum(1 for c in colls if _hlo.gathers_packed_weights(c)),
        "summary": _hlo.summary(colls),
    }


def main(argv: list[str]) -> int:
    """Run one mode; print ``RESULT {json}``."""
    mode = argv[0]
    if mode == "lowered":
        result = lowered(argv[1], argv[2], json.loads(argv[3]))
    elif mode == "compiled-tpu":
        result = compiled_tpu(argv[1], json.loads(argv[2]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
