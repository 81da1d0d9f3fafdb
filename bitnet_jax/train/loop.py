"""The training loop: data, jitted steps, periodic evaluation, JSONL metrics, checkpoints, resume.

A run starts from fresh weights or from ``init.from`` (:mod:`bitnet_jax.train.init`: the checkpoint's
config and tokenizer become the run's). With ``logging.eval_before`` (default: for a fine-tune) the
validation loss and the ``logging.samples`` replies of the starting model are recorded at step 0, and
again at the end; ``export`` writes the final model in each listed format and records each export's
validation loss (:mod:`bitnet_jax.train.export`). Metrics go to ``metrics.jsonl``, one JSON per line.

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
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from bitnet_jax.config import ModelConfig, TrainConfig, config_from_dict
from bitnet_jax.config.run import CheckpointConfig, ExportConfig, LoggingConfig, check_seq_len
from bitnet_jax.errors import ConfigError
from bitnet_jax.io._atomic import write_text
from bitnet_jax.io.tokenizer import Tokenizer
from bitnet_jax.parallel.rules import make_mesh, place
from bitnet_jax.train.checkpoint import RunCheckpointer
from bitnet_jax.train.data import TOKENIZER_FILE, Dataset, prepare_dataset
from bitnet_jax.train.init import InitModel, check_architecture, load_init
from bitnet_jax.train.step import (
    abstract_state,
    batch_sharding,
    check_mesh,
    eval_sharding,
    make_eval_step,
    make_optimizer,
    make_train_step,
    sharded_init,
)

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"
# Sections whose change would make a resumed run a different run.
RESUME_FIXED = ("model", "init", "data", "tokenizer", "optimizer", "schedule", "training")


def run_model_config(cfg: TrainConfig, dataset: Dataset, start: ModelConfig | None = None) -> ModelConfig:
    """The model trained: the checkpoint's (``start``, a fine-tune) or the configured model with the
    tokenizer's vocabulary and separator as BOS/EOS, in the compute dtype."""
    if start is not None:
        if cfg.model is not None:
            check_architecture(cfg.model, start, cfg.init.from_)
        check_seq_len(cfg.data, start)
        return start.replace(dtype=cfg.training.compute_dtype)
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
    """Validation nll per trained target over the first ``batches`` validation batches (None without any)."""
    total, count = 0.0, 0.0
    for b in dataset.val_batches(micro_batch, batches):
        s, c = jax.device_get(eval_step(params, place(b, sharding)))
        total, count = total + float(s), count + float(c)
    return total / count if count else None


def sample_replies(model_cfg: ModelConfig, params, tokenizer: Tokenizer, cfg: TrainConfig) -> list[dict[str, str]]:
    """Greedy replies (chat format) of the training-form model to ``logging.samples``."""
    from bitnet_jax.inference import encode_chat, generate, stop_token_ids
    from bitnet_jax.model import BitNetModel, Form

    model = BitNetModel(model_cfg, jax.device_get(params), tokenizer, form=Form(quantize=cfg.training.quantize))
    out = []
    for prompt in cfg.logging.samples:
        ids = encode_chat(tokenizer, [{"role": "user", "content": prompt}])
        new = generate(model, [ids], max_new_tokens=cfg.logging.sample_tokens,
                       stop_tokens=stop_token_ids(tokenizer, model_cfg))[0]
        stops = set(stop_token_ids(tokenizer, model_cfg))
        reply = [int(t) for t in new]
        reply = reply[: next((i for i, t in enumerate(reply) if t in stops), len(reply))]
        out.append({"prompt": prompt, "reply": tokenizer.decode(reply)})
    return out


def eval_before(cfg: TrainConfig) -> bool:
    """Whether step 0 is evaluated: ``logging.eval_before``, by default for a fine-tune."""
    return cfg.init.from_ is not None if cfg.logging.eval_before is None else cfg.logging.eval_before


def _check_resume(saved: dict[str, Any], cfg: TrainConfig, run_dir: Path) -> None:
    old = config_from_dict(saved, source=f"{run_dir} checkpoint config").to_dict()
    new = cfg.to_dict()
    for section in RESUME_FIXED:
        if old[section] is None or new[section] is None:  # the model section: given, or the checkpoint's
            if old[section] != new[section]:
                raise ConfigError(f"{section}: differs from the checkpoint in {run_dir}; use a new checkpoint.dir")
            continue
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
    data = dataclasses.replace(cfg.data, paths=("<data>",), pattern="*", recursive=False, val_fraction=0.0, seed=0,
                               format="auto", max_documents=None)
    return dataclasses.replace(cfg, checkpoint=CheckpointConfig(), logging=LoggingConfig(), data=data,
                               export=ExportConfig())


@functools.lru_cache(maxsize=4)
def compiled_functions(cfg: TrainConfig, model_cfg: ModelConfig, mesh):
    """(optimizer, jitted train step, jitted warm-up step or None, jitted eval) for a config, reused
    across runs in one process."""
    tx = make_optimizer(cfg)
    warm = make_train_step(cfg, model_cfg, tx, mesh, warmup=True) if cfg.training.quant_warmup_steps else None
    return tx, make_train_step(cfg, model_cfg, tx, mesh), warm, make_eval_step(cfg, model_cfg, mesh)


def _start_model(cfg: TrainConfig, run_dir: Path, ckpt: RunCheckpointer, latest: int | None
                 ) -> tuple[InitModel | None, ModelConfig | None, Tokenizer | None]:
    """(the init checkpoint or None, its model config, its tokenizer) of a fine-tune; a resumed fine-tune
    reads the config from its own checkpoint and the tokenizer from the run directory instead."""
    if cfg.init.from_ is None:
        return None, None, None
    if latest is not None:
        config = ModelConfig.from_dict(ckpt.restore_meta(latest)["model_config"], source=f"{run_dir} checkpoint")
        return None, config, Tokenizer.from_file(run_dir / TOKENIZER_FILE, config)
    start = load_init(cfg.init)
    return start, start.config, start.tokenizer


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
    ckpt = RunCheckpointer(run_dir, cfg.checkpoint.keep) if (run_dir / "checkpoints").is_dir() else None
    latest = ckpt.latest_step() if ckpt is not None and cfg.checkpoint.resume else None
    if latest is not None:
        _check_resume(ckpt.restore_meta(latest)["config"], cfg, run_dir)
        if latest >= cfg.training.steps:  # nothing to do: say so, touch nothing
            if lead and not quiet:
                print(f"{run_dir}: already complete at step {latest} (training.steps: {cfg.training.steps}); "
                      "raise training.steps to train further", flush=True)
            ckpt.close()
            return {"final_step": latest, "already_complete": True}
    init_model, start_cfg, start_tok = _start_model(cfg, run_dir, ckpt, latest)
    if init_model is not None and lead and not quiet:
        print(init_model.note, flush=True)
    if not lead:
        sync_processes("bitnet_jax.train: dataset ready")
    dataset = prepare_dataset(cfg.data, cfg.tokenizer, run_dir, start_tok)  # the first thing that writes into run_dir
    if lead:
        sync_processes("bitnet_jax.train: dataset ready")
    model_cfg = run_model_config(cfg, dataset, start_cfg)
    if cfg.export.dir is not None:
        from bitnet_jax.train.export import check_exports

        check_exports(model_cfg, cfg.export.formats)
    if ckpt is None:
        ckpt = RunCheckpointer(run_dir, cfg.checkpoint.keep)
    tx, step_fn, warm_fn, eval_fn = compiled_functions(step_key(cfg), model_cfg, mesh)
    start = 0
    if latest is None:
        state = sharded_init(cfg, model_cfg, tx, mesh, None if init_model is None else init_model.params)
        init_model = None  # the host copy of the starting weights is no longer needed
    else:  # restored straight into this run's shardings, whatever mesh wrote it
        state, meta = ckpt.restore(latest, abstract_state(cfg, model_cfg, tx, mesh))
        start = int(meta["data_position"])
    if start and lead and not quiet:
        print(f"resuming from step {start} of {cfg.training.steps} ({run_dir})", flush=True)
    metrics_path = run_dir / METRICS_FILE
    if lead:
        write_text(run_dir / CONFIG_FILE, cfg.to_yaml())
        _truncate_metrics(metrics_path, start)

    shard = batch_sharding(mesh)
    eval_shard = eval_sharding(mesh)
    accum, seq = cfg.training.grad_accum, cfg.data.seq_len
    end = cfg.training.steps if max_steps is None else min(cfg.training.steps, start + max_steps)
    tokens_per_step = cfg.training.batch_size * seq
    bar = None
    if cfg.logging.progress and not quiet and lead and sys.stderr.isatty():  # a bar on a terminal only
        from tqdm import tqdm

        bar = tqdm(total=cfg.training.steps, initial=start, unit="step", dynamic_ncols=True)
    last: dict[str, Any] = {}

    def write(log, record: dict[str, Any]) -> None:
        log.write(json.dumps(record) + "\n")
        log.flush()
        last.update(record)

    def checkpoint_eval(step: int) -> dict[str, Any]:
        record: dict[str, Any] = {"step": step}
        val = evaluate(eval_fn, state["params"], dataset, micro, cfg.logging.eval_batches, eval_shard)
        if val is not None:
            record.update(val_loss=val, val_ppl=math.exp(min(val, 50.0)))
        if cfg.logging.samples and jax.process_count() == 1:
            record["samples"] = sample_replies(model_cfg, state["params"], dataset.tokenizer, cfg)
        return record

    t0, window_steps = time.perf_counter(), 0
    with open(metrics_path if lead else os.devnull, "a") as log:
        if start == 0 and eval_before(cfg):
            before = checkpoint_eval(0)
            write(log, before)
            last.update({f"before_{k}": v for k, v in before.items() if k != "step"})
        for i in range(start, end):
            batch = dataset.train_batch(i, cfg.training.batch_size)
            batch = {k: v.reshape(accum, micro, seq) for k, v in batch.items()}
            fn = warm_fn if warm_fn is not None and i < cfg.training.quant_warmup_steps else step_fn
            state, metrics = fn(state, place(batch, shard))
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
                    "trained_tokens": int(m["tokens"]),
                    "tokens_per_s": window_steps * tokens_per_step / dt,
                }
                if "quant_blend" in m:
                    record["quant_blend"] = float(m["quant_blend"])
                t0, window_steps = time.perf_counter(), 0
            if step % cfg.logging.eval_every == 0 or step == cfg.training.steps:
                record.update(checkpoint_eval(step))
                t0 = time.perf_counter()
            if record:
                write(log, record)
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
        if cfg.export.dir is not None and end == cfg.training.steps:
            from bitnet_jax.train.export import export_trained

            exports = export_trained(model_cfg, state["params"], dataset, cfg, mesh)
            write(log, {"step": end, "export": exports})
    ckpt.close()
    last["final_step"] = end
    return last
