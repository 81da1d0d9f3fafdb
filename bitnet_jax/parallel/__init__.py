"""Parallelism: the mesh, the parameter sharding rules, the mesh-aware kernel, FSDP packed gathers,
multi-process start-up and the local launcher. All device and mesh logic of bitnet-jax lives here.

The names below are imported on first use, so :mod:`bitnet_jax.parallel.distributed` (the command line's
multi-process flags) loads without JAX.
"""

from bitnet_jax._lazy import lazy_exports

_EXPORTS = {
    "MeshConfig": "bitnet_jax.config",
    "batch_constraint": "bitnet_jax.parallel.kernel",
    "on_mesh": "bitnet_jax.parallel.kernel",
    "PARAM_RULES": "bitnet_jax.parallel.rules",
    "make_mesh": "bitnet_jax.parallel.rules",
    "param_shardings": "bitnet_jax.parallel.rules",
    "param_specs": "bitnet_jax.parallel.rules",
    "place": "bitnet_jax.parallel.rules",
    "shard": "bitnet_jax.parallel.rules",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
