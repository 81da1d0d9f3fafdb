"""The training run configuration: frozen dataclasses loaded from YAML, validated with errors naming the key.

A run config has the sections ``model``, ``data``, ``tokenizer``, ``optimizer``, ``schedule``,
``training``, ``checkpoint``, ``logging`` and ``mesh`` (see ``configs/train/*.yaml``). ``model`` is a
model preset name plus field overrides (``{preset: tiny, hidden_size: 128}``). ``mesh`` is the
:class:`bitnet_jax.sharding.MeshConfig` that inference uses too (axes ``data``, ``fsdp``, ``tensor``);
for training, axes left out are 1 and, unless one axis is ``-1``, ``data`` takes the remaining devices
(``mesh: {fsdp: 4}`` on 8 devices is ``data=2, fsdp=4``). Everything a run does is in its config;
:meth:`TrainConfig.to_dict` is saved with every checkpoint.
"""

from __future__ import annotations

import dataclasses
import sysconfig
import types
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml

from bitnet_jax.config import ModelConfig
from bitnet_jax.config_io import read_yaml
from bitnet_jax.errors import ConfigError
from bitnet_jax.sharding import AXES, MeshConfig

STDLIB_TOKEN = "{stdlib}"


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the text comes from and how it is cut into sequences."""

    paths: tuple[str, ...] = ()  # files or directories; ``{stdlib}`` = this interpreter's stdlib dir
    pattern: str = "*.txt"  # file-name glob used inside directories
    recursive: bool = False  # search directories recursively
    val_fraction: float = 0.05  # share of documents (by a hash of their name) held out for validation
    seq_len: int = 256
    seed: int = 0  # data order seed (window permutation per epoch)

    def resolved_paths(self) -> list[Path]:
        """The paths with ``{stdlib}`` replaced by the running interpreter's standard library directory."""
        stdlib = sysconfig.get_paths()["stdlib"]
        return [Path(p.replace(STDLIB_TOKEN, stdlib)).expanduser() for p in self.paths]


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    """An existing ``tokenizer.json`` (``path``) or a byte-level BPE trained on the training split."""

    path: str | None = None
    vocab_size: int = 4096  # for a trained tokenizer
    min_frequency: int = 2
    special_token: str = "<|endoftext|>"  # document separator, used as BOS and EOS


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW hyper-parameters and gradient clipping."""

    lr: float = 1.5e-3
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    clip_norm: float = 1.0


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """Warmup then the BitNet b1.58 two-stage schedule (LR dropped and weight decay removed at stage 2)."""

    warmup_steps: int = 100
    stage2_fraction: float = 0.5  # stage 2 starts after this fraction of the steps
    stage2_lr_scale: float = 0.4  # stage-2 peak LR = lr * this
    final_lr_scale: float = 0.1  # each stage decays (cosine) to this fraction of its own peak


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Steps, batch, precision and seed."""

    steps: int = 1000
    batch_size: int = 16  # sequences per optimizer step (all micro-batches together)
    grad_accum: int = 1  # micro-batches per step
    quantize: bool = True  # false: the same architecture in full precision
    compute_dtype: str = "float32"  # activation dtype: float32 or bfloat16 (latent weights stay float32)
    seed: int = 0  # parameter init / RNG seed


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Where and how often to checkpoint."""

    dir: str = "runs/run"
    every: int = 200
    keep: int = 3
    resume: bool = True


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    """Metrics and progress reporting."""

    every: int = 10
    eval_every: int = 100
    eval_batches: int = 8
    progress: bool = True


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "tokenizer": TokenizerConfig,
    "optimizer": OptimizerConfig,
    "schedule": ScheduleConfig,
    "training": TrainingConfig,
    "checkpoint": CheckpointConfig,
    "logging": LoggingConfig,
    "mesh": MeshConfig,
}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A whole training run."""

    model: ModelConfig
    data: DataConfig
    tokenizer: TokenizerConfig
    optimizer: OptimizerConfig
    schedule: ScheduleConfig
    training: TrainingConfig
    checkpoint: CheckpointConfig
    logging: LoggingConfig
    mesh: MeshConfig

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form that :func:`config_from_dict` reads back to an equal config."""
        out: dict[str, Any] = {"model": {"preset": None, **self.model.to_dict()}}
        for name in SECTIONS:
            d = dataclasses.asdict(getattr(self, name))
            out[name] = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
        return out

    def to_yaml(self) -> str:
        """YAML text of :meth:`to_dict`."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits the (simple) type ``hint`` of a config field."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is tuple:
        (item, _) = typing.get_args(hint)
        return isinstance(value, (list, tuple)) and all(_type_ok(v, item) for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint)


def _section(cls: type, data: Any, key: str) -> Any:
    """Build one section dataclass from a mapping, checking unknown keys and value types."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{key}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: unknown key; known keys: {sorted(hints)}")
    values = {}
    for name, value in data.items():
        if not _type_ok(value, hints[name]):
            raise ConfigError(f"{key}.{name}: expected {hints[name]}, got {value!r} ({type(value).__name__})")
        if isinstance(value, list):
            value = tuple(value)
        if hints[name] is float and isinstance(value, int):
            value = float(value)
        values[name] = value
    return cls(**values)


def training_mesh(mesh: Any) -> Any:
    """The ``mesh`` section with the training defaults: missing axes are 1, ``data`` takes the rest."""
    mesh = {} if mesh is None else mesh
    if not isinstance(mesh, Mapping):
        return mesh  # a wrong type, which _section reports
    if -1 in mesh.values() or "data" in mesh:
        return {**{axis: 1 for axis in AXES}, **mesh}
    return {**{axis: 1 for axis in AXES}, "data": -1, **mesh}


def _check_ranges(cfg: TrainConfig) -> None:
    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            raise ConfigError(f"{key}: {msg}, got {_get(cfg, key)!r}")

    need(len(cfg.data.paths) > 0, "data.paths", "at least one file or directory is required")
    need(0.0 <= cfg.data.val_fraction < 1.0, "data.val_fraction", "must be in [0, 1)")
    need(cfg.data.seq_len > 1, "data.seq_len", "must be > 1")
    need(cfg.data.seq_len <= cfg.model.max_position_embeddings, "data.seq_len", "must not exceed model.max_position_embeddings")
    need(cfg.tokenizer.vocab_size > 256 + 1, "tokenizer.vocab_size", "must exceed 257 (bytes + special token)")
    need(cfg.optimizer.lr > 0, "optimizer.lr", "must be > 0")
    need(0 <= cfg.optimizer.b1 < 1, "optimizer.b1", "must be in [0, 1)")
    need(0 <= cfg.optimizer.b2 < 1, "optimizer.b2", "must be in [0, 1)")
    need(cfg.optimizer.weight_decay >= 0, "optimizer.weight_decay", "must be >= 0")
    need(cfg.optimizer.clip_norm >= 0, "optimizer.clip_norm", "must be >= 0 (0 disables clipping)")
    need(cfg.schedule.warmup_steps >= 0, "schedule.warmup_steps", "must be >= 0")
    need(0 < cfg.schedule.stage2_fraction <= 1, "schedule.stage2_fraction", "must be in (0, 1]")
    need(cfg.schedule.stage2_lr_scale > 0, "schedule.stage2_lr_scale", "must be > 0")
    need(0 <= cfg.schedule.final_lr_scale <= 1, "schedule.final_lr_scale", "must be in [0, 1]")
    need(cfg.training.steps > 0, "training.steps", "must be > 0")
    need(cfg.training.grad_accum > 0, "training.grad_accum", "must be > 0")
    need(cfg.training.batch_size > 0 and cfg.training.batch_size % cfg.training.grad_accum == 0,
         "training.batch_size", f"must be a positive multiple of training.grad_accum ({cfg.training.grad_accum})")
    need(cfg.training.compute_dtype in ("float32", "bfloat16"), "training.compute_dtype", "must be float32 or bfloat16")
    need(cfg.checkpoint.every > 0, "checkpoint.every", "must be > 0")
    need(cfg.checkpoint.keep > 0, "checkpoint.keep", "must be > 0")
    need(cfg.logging.every > 0, "logging.every", "must be > 0")
    need(cfg.logging.eval_every > 0, "logging.eval_every", "must be > 0")
    need(cfg.logging.eval_batches > 0, "logging.eval_batches", "must be > 0")


def _get(cfg: TrainConfig, key: str) -> Any:
    section, field = key.split(".")
    return getattr(getattr(cfg, section), field)


def config_from_dict(data: Mapping[str, Any], source: str = "config") -> TrainConfig:
    """Build and validate a :class:`TrainConfig`; every error names ``source`` and the offending key."""
    try:
        if not isinstance(data, Mapping):
            raise ConfigError(f"expected a mapping of sections, got {type(data).__name__}")
        known = {"model", *SECTIONS}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{unknown[0]}: unknown section; known sections: {sorted(known)}")
        model_data = dict(data.get("model") or {})
        preset = model_data.pop("preset", "tiny")
        if preset is not None and not isinstance(preset, str):
            raise ConfigError(f"model.preset: expected a preset name, got {preset!r}")
        base = ModelConfig.preset(preset).to_dict() if preset else {}
        try:
            model = ModelConfig.from_dict({**base, **model_data}, source="model")
        except ConfigError as e:
            raise ConfigError(str(e).replace("ModelConfig.", "model.")) from None
        sections = {name: _section(cls, data.get(name), name) for name, cls in SECTIONS.items() if name != "mesh"}
        try:
            sections["mesh"] = _section(MeshConfig, training_mesh(data.get("mesh")), "mesh")
        except ConfigError as e:
            raise ConfigError(str(e).replace("MeshConfig.", "mesh.")) from None
        cfg = TrainConfig(model=model, **sections)
        _check_ranges(cfg)
        return cfg
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"training.steps=20"`` -> (``["training", "steps"]``, ``20``); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE (e.g. training.steps=100)")
    parts = key.strip().split(".")
    if len(parts) != 2:
        raise ConfigError(f"--set {text!r}: KEY must be SECTION.FIELD (e.g. optimizer.lr)")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {text!r}: cannot parse value ({e})") from None
    return parts, value


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> TrainConfig:
    """Read a YAML run config, apply ``--set SECTION.FIELD=VALUE`` overrides, validate."""
    path = Path(path)
    data = read_yaml(path, "run config")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections")
    for text in overrides:
        (section, field), value = parse_override(text)
        sec = data.setdefault(section, {})
        if not isinstance(sec, dict):
            raise ConfigError(f"{path}: section {section} is not a mapping")
        sec[field] = value
    return config_from_dict(data, source=str(path))
