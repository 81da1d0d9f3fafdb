"""Run checkpoints with orbax: parameters, optimizer state, step, RNG, data position and the config.

Each save is one orbax step directory holding ``state`` (a pytree) and ``meta`` (JSON: step, data
position, tokens seen, the whole run config). Orbax writes into a temporary directory and renames it
when complete, so a run killed mid-write leaves the previous checkpoint as the latest; only the last
``keep`` are kept.

In a multi-process run every process calls :meth:`RunCheckpointer.save` and :meth:`RunCheckpointer.restore`
together: each writes and reads the shards it holds (the directory must be shared). A state restores
into any mesh -- the shardings of the ``like`` tree decide, not those it was saved with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

CHECKPOINT_SUBDIR = "checkpoints"


class RunCheckpointer:
    """Save/restore a run's training state under ``run_dir/checkpoints``."""

    def __init__(self, run_dir: str | Path, keep: int):
        self.directory = Path(run_dir).absolute() / CHECKPOINT_SUBDIR
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of every kept checkpoint."""
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Write a checkpoint synchronously (atomic: temporary directory, then rename)."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self.manager.save(step, args=args, force=True)
        self.manager.wait_until_finished()

    def restore(self, step: int, like: Any) -> tuple[Any, dict[str, Any]]:
        """The state at ``step`` restored into the structure, dtypes and shardings of ``like``."""
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        out = self.manager.restore(step, args=args)
        return out["state"], out["meta"]

    def restore_meta(self, step: int) -> dict[str, Any]:
        """Only the JSON metadata of a checkpoint."""
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore_params(self, step: int) -> Any:
        """Only the parameters of a checkpoint, whole on this process's first device, whatever mesh
        (and process count) wrote it."""
        whole = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        args = ocp.args.Composite(state=ocp.args.StandardRestore(fallback_sharding=whole))
        return self.manager.restore(step, args=args)["state"]["params"]

    def close(self) -> None:
        """Release the manager."""
        self.manager.close()
