"""The training loop: data, jitted steps, periodic evaluation, JSONL metrics, checkpoints, resume.

In a multi-process run (:func:`bitnet_jax.parallel.distributed.initialize` first) every process runs this same
loop over the global mesh: process 0 prepares the dataset (the others wait, then read its files),
writes ``config.yaml`` and ``metrics.jsonl`` and shows progress; checkpoints are written and read by
all processes together (orbax), so ``checkpoint.dir`` must be a filesystem every process sees.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from bitnet_jax.config import ModelConfig, TrainConfig, config_from_dict
from bitnet_jax.config.run import CheckpointConfig, LoggingConfig
from bitnet_jax.errors import ConfigError
from bitnet_jax.io._atomic import write_text
from bitnet_jax.parallel.rules import make_mesh, place
from bitnet_jax.train.checkpoint import RunCheckpointer
from bitnet_jax.train.data import Dataset, prepare_dataset
from bitnet_jax.train.step import (
    abstract_state,
    batch_sharding,
    check_mesh,
    make_eval_step,
    make_optimizer,
    make_train_step,
    sharded_init,
)

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"
# Sections whose change would make a resumed run a different run.
RESUME_FIXED = ("model", "data", "tokenizer", "optimizer", "schedule", "training")


def run_model_config(cfg: TrainConfig, dataset: Dataset) -> ModelConfig:
    """The model trained: the configured model with the tokenizer's vocabulary and separator as BOS/EOS."""
    return cfg.model.replace(
        vocab_size=dataset.vocab_size,
        bos_token_id=dataset.separator_id,
        eos_token_id=dataset.separator_id,
        pad_token_id=None,
        dtype=cfg.training.compute_dtype,
    )


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric records past ``step`` (written after the checkpoint a run resumes from)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
    write_text(path, "".join(line + "\n" for line in keep))


def evaluate(eval_step, params, dataset: Dataset, micro_batch: int, batches: int, sharding) -> float | None:
    """Mean validation nll over the first ``batches`` validation batches (None without validation data)."""
    losses = [float(eval_step(params, place(b, sharding))) for b in dataset.val_batches(micro_batch, batches)]
    return float(np.mean(losses)) if losses else None


def _check_resume(saved: dict[str, Any], cfg: TrainConfig, run_dir: Path) -> None:
    old = config_from_dict(saved, source=f"{run_dir} checkpoint config").to_dict()
    new = cfg.to_dict()
    for section in RESUME_FIXED:
        for key in new[section]:
            if section == "training" and key == "steps":
                continue
            if old[section].get(key) != new[section][key]:
                raise ConfigError(
                    f"{section}.{key}: differs from the checkpoint in {run_dir} "
                    f"({old[section].get(key)!r} -> {new[section][key]!r}); use a new checkpoint.dir"
                )


def sync_processes(name: str) -> None:
    """A barrier across the processes of a multi-process run (nothing to wait for in one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def step_key(cfg: TrainConfig) -> TrainConfig:
    """The config with the sections that do not affect the compiled step reset (a cache key)."""
    data = dataclasses.replace(cfg.data, paths=("<data>",), pattern="*", recursive=False, val_fraction=0.0, seed=0)
    return dataclasses.replace(cfg, checkpoint=CheckpointConfig(), logging=LoggingConfig(), data=data)


@functools.lru_cache(maxsize=4)
def compiled_functions(cfg: TrainConfig, model_cfg: ModelConfig, mesh):
    """(optimizer, jitted train step, jitted eval) for a config, reused across runs in one process."""
    tx = make_optimizer(cfg)
    return tx, make_train_step(cfg, model_cfg, tx, mesh), make_eval_step(cfg, model_cfg, mesh)


def train(cfg: TrainConfig, max_steps: int | None = None, quiet: bool = False) -> dict[str, Any]:
    """Run (or resume) training; stops after ``max_steps`` new steps if given. Returns the final metrics."""
    run_dir = Path(cfg.checkpoint.dir).expanduser()
    try:
        mesh = make_mesh(cfg.mesh)
    except ConfigError as e:
        raise ConfigError(f"mesh: {e}") from None
    check_mesh(cfg, mesh)
    micro = cfg.training.batch_size // cfg.training.grad_accum
    lead = jax.process_index() == 0  # writes the run's files; every process writes its checkpoint shards
    if not lead:
        sync_processes("bitnet_jax.train: dataset ready")
    dataset = prepare_dataset(cfg.data, cfg.tokenizer, run_dir)  # the first thing that writes into run_dir
    if lead:
        sync_processes("bitnet_jax.train: dataset ready")
    model_cfg = run_model_config(cfg, dataset)
    ckpt = RunCheckpointer(run_dir, cfg.checkpoint.keep)
    latest = ckpt.latest_step() if cfg.checkpoint.resume else None
    if latest is not None:
        _check_resume(ckpt.restore_meta(latest)["config"], cfg, run_dir)
    tx, step_fn, eval_fn = compiled_functions(step_key(cfg), model_cfg, mesh)
    start = 0
    if latest is None:
        state = sharded_init(cfg, model_cfg, tx, mesh)
    else:  # restored straight into this run's shardings, whatever mesh wrote it
        state, meta = ckpt.restore(latest, abstract_state(cfg, model_cfg, tx, mesh))
        start = int(meta["data_position"])
    metrics_path = run_dir / METRICS_FILE
    if lead:
        write_text(run_dir / CONFIG_FILE, cfg.to_yaml())
        _truncate_metrics(metrics_path, start)

    shard = batch_sharding(mesh)
    eval_shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(shard.spec[1], None))
    accum, seq = cfg.training.grad_accum, cfg.data.seq_len
    end = cfg.training.steps if max_steps is None else min(cfg.training.steps, start + max_steps)
    tokens_per_step = cfg.training.batch_size * seq
    bar = None
    if cfg.logging.progress and not quiet and lead:
        from tqdm import tqdm

        bar = tqdm(total=cfg.training.steps, initial=start, unit="step", dynamic_ncols=True)
    last: dict[str, Any] = {}
    t0, window_steps = time.perf_counter(), 0
    with open(metrics_path if lead else os.devnull, "a") as log:
        for i in range(start, end):
            batch = dataset.train_batch(i, cfg.training.batch_size).reshape(accum, micro, seq + 1)
            state, metrics = step_fn(state, place(batch, shard))
            window_steps += 1
            step = i + 1
            record: dict[str, Any] = {}
            if step % cfg.logging.every == 0 or step == end:
                m = jax.device_get(metrics)
                dt = time.perf_counter() - t0
                record = {
                    "step": step,
                    "loss": float(m["loss"]),
                    "lr": float(m["lr"]),
                    "grad_norm": float(m["grad_norm"]),
                    "tokens_per_s": window_steps * tokens_per_step / dt,
                }
                t0, window_steps = time.perf_counter(), 0
            if step % cfg.logging.eval_every == 0 or step == cfg.training.steps:
                val = evaluate(eval_fn, state["params"], dataset, micro, cfg.logging.eval_batches, eval_shard)
                if val is not None:
                    record.update(step=step, val_loss=val, val_ppl=math.exp(min(val, 50.0)))
                t0 = time.perf_counter()
            if record:
                log.write(json.dumps(record) + "\n")
                log.flush()
                last.update(record)
                if bar is not None:
                    bar.set_postfix({k: f"{v:.3g}" for k, v in record.items() if k in ("loss", "val_loss", "lr")})
            if step % cfg.checkpoint.every == 0 or step == end:
                meta = {
                    "step": step,
                    "data_position": step,
                    "tokens_seen": step * tokens_per_step,
                    "config": cfg.to_dict(),
                    "model_config": model_cfg.to_dict(),
                }
                ckpt.save(step, state, meta)
                t0 = time.perf_counter()
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    ckpt.close()
    last["final_step"] = end
    return last
