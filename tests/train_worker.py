"""Subprocess worker of the parallel-training tests (the device count is fixed before JAX starts).

``python tests/train_worker.py run RUN_DIR STEPS MAX_STEPS MESH_JSON [SET ...]`` -- train the tiny test
    config on ``MESH_JSON`` (e.g. ``{"fsdp": 8}``) for up to ``MAX_STEPS`` new steps of a ``STEPS``-step
    run, in one process or as one of several (``jax.distributed`` from the ``BITNET_JAX_*`` variables);
    metrics land in ``RUN_DIR/metrics.jsonl``. ``SET`` are extra ``SECTION.FIELD=VALUE`` overrides.
``python tests/train_worker.py collectives MESH_JSON`` -- print (JSON) the collectives of the compiled
    train step on that mesh.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bitnet_jax.parallel import distributed  # noqa: E402  (no JAX import at module level)

BATCH = 16


def overrides(run_dir: str, steps: int, mesh: dict) -> list[str]:
    """``--set`` overrides of the CI config for these tests: seq 32, batch 16 in 2 micro-batches, ``mesh``."""
    from tests.train_helpers import tiny_overrides

    mesh_sets = [f"mesh.{axis}={size}" for axis, size in mesh.items()]
    return [*tiny_overrides(run_dir), f"training.steps={steps}", f"training.batch_size={BATCH}", "checkpoint.every=2",
            "logging.every=1", f"logging.eval_every={steps}", *mesh_sets]


def config(run_dir: str, steps: int, mesh: dict, *extra: str):
    """The test run config (:func:`overrides` plus ``extra``)."""
    from tests.train_helpers import CI_CONFIG
    from bitnet_jax.config import load_config

    return load_config(CI_CONFIG, [*overrides(run_dir, steps, mesh), *extra])


def run(run_dir: str, steps: str, max_steps: str, mesh: str, *extra: str) -> None:
    """Train (or resume) and report the process layout it ran on."""
    distributed.initialize()
    import jax

    from bitnet_jax.train.loop import train

    train(config(run_dir, int(steps), json.loads(mesh), *extra), max_steps=int(max_steps), quiet=True)
    print("RESULT" + json.dumps({"processes": jax.process_count(), "devices": jax.device_count()}))


def collectives(mesh: str) -> None:
    """The compiled train step's collectives on ``mesh`` (a fresh run directory for the dataset)."""
    import tempfile

    import jax
    import numpy as np

    from bitnet_jax.parallel._hlo import collectives as parse
    from bitnet_jax.parallel.rules import device_bytes, make_mesh
    from bitnet_jax.train.loop import run_model_config
    from bitnet_jax.train.data import prepare_dataset
    from bitnet_jax.train.step import abstract_batch, abstract_state, make_optimizer, make_train_step, sharded_init

    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(tmp, 4, json.loads(mesh))
        model_cfg = run_model_config(cfg, prepare_dataset(cfg.data, cfg.tokenizer, tmp))
    m = make_mesh(cfg.mesh)
    tx = make_optimizer(cfg)
    state = abstract_state(cfg, model_cfg, tx, m)
    batch = abstract_batch(cfg, m)
    text = make_train_step(cfg, model_cfg, tx, m).lower(state, batch).compile().as_text()
    out = [{"kind": c.kind, "dtypes": sorted(c.dtypes), "bytes": c.nbytes, "op": c.op_name} for c in parse(text)]
    embed = state["params"]["embed_tokens"]
    placed = sharded_init(cfg, model_cfg, tx, m)
    per_device = device_bytes({"params": placed["params"], "opt_state": placed["opt_state"]})
    total = sum(x.nbytes for x in jax.tree_util.tree_leaves((placed["params"], placed["opt_state"])))
    print("RESULT" + json.dumps({"collectives": out, "embed_bytes": embed.size * embed.dtype.itemsize,
                                 "state_bytes": total, "state_bytes_per_device": sorted(per_device.values())}))


if __name__ == "__main__":
    {"run": run, "collectives": collectives}[sys.argv[1]](*sys.argv[2:])
