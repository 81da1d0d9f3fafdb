"""Parallelism: the mesh, the parameter sharding rules, the mesh-aware kernel, FSDP packed gathers,
multi-process start-up and the local launcher. All device and mesh logic of bitnet-jax lives here."""

from bitnet_jax.config import MeshConfig
from bitnet_jax.parallel.kernel import batch_constraint, on_mesh
from bitnet_jax.parallel.rules import PARAM_RULES, make_mesh, param_shardings, param_specs, place, shard

__all__ = [
    "MeshConfig",
    "PARAM_RULES",
    "batch_constraint",
    "make_mesh",
    "on_mesh",
    "param_shardings",
    "param_specs",
    "place",
    "shard",
]
