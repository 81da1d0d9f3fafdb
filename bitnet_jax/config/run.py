"""The training run configuration: frozen dataclasses loaded from YAML, validated with errors naming the key.

A run config has the sections ``model``, ``data``, ``tokenizer``, ``optimizer``, ``schedule``,
``training``, ``checkpoint``, ``logging`` and ``mesh`` (see ``configs/train/*.yaml``). ``model`` is a
model preset name plus field overrides (``{preset: tiny, hidden_size: 128}``). ``mesh`` is the
:class:`bitnet_jax.config.MeshConfig` that inference uses too (axes ``data``, ``fsdp``, ``tensor``);
for training, axes left out are 1 and, unless one axis is ``-1``, ``data`` takes the remaining devices
(``mesh: {fsdp: 4}`` on 8 devices is ``data=2, fsdp=4``). Everything a run does is in its config;
:meth:`TrainConfig.to_dict` is saved with every checkpoint.
"""

from __future__ import annotations

import dataclasses
import sysconfig
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml

from bitnet_jax.config._validate import Validated, build, read_yaml
from bitnet_jax.config.mesh import AXES, MeshConfig
from bitnet_jax.config.model import ModelConfig
from bitnet_jax.errors import ConfigError

STDLIB_TOKEN = "{stdlib}"


@dataclasses.dataclass(frozen=True)
class DataConfig(Validated):
    """Where the text comes from and how it is cut into sequences."""

    paths: tuple[str, ...] = ()  # files or directories; ``{stdlib}`` = this interpreter's stdlib dir
    pattern: str = "*.txt"  # file-name glob used inside directories
    recursive: bool = False  # search directories recursively
    val_fraction: float = 0.05  # share of documents (by a hash of their name) held out for validation
    seq_len: int = 256
    seed: int = 0  # data order seed (window permutation per epoch)

    def validate(self) -> None:
        """Ranges of the data fields."""
        self.need(len(self.paths) > 0, "paths", "at least one file or directory is required")
        self.need(0.0 <= self.val_fraction < 1.0, "val_fraction", "must be in [0, 1)")
        self.need(self.seq_len > 1, "seq_len", "must be > 1")

    def resolved_paths(self) -> list[Path]:
        """The paths with ``{stdlib}`` replaced by the running interpreter's standard library directory."""
        stdlib = sysconfig.get_paths()["stdlib"]
        return [Path(p.replace(STDLIB_TOKEN, stdlib)).expanduser() for p in self.paths]


@dataclasses.dataclass(frozen=True)
class TokenizerConfig(Validated):
    """An existing ``tokenizer.json`` (``path``) or a byte-level BPE trained on the training split."""

    path: str | None = None
    vocab_size: int = 4096  # for a trained tokenizer
    min_frequency: int = 2
    special_token: str = "<|endoftext|>"  # document separator, used as BOS and EOS

    def validate(self) -> None:
        """Ranges of the tokenizer fields."""
        self.need(self.vocab_size > 256 + 1, "vocab_size", "must exceed 257 (bytes + special token)")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig(Validated):
    """AdamW hyper-parameters and gradient clipping."""

    lr: float = 1.5e-3
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    clip_norm: float = 1.0

    def validate(self) -> None:
        """Ranges of the AdamW fields."""
        self.need(self.lr > 0, "lr", "must be > 0")
        self.need(0 <= self.b1 < 1, "b1", "must be in [0, 1)")
        self.need(0 <= self.b2 < 1, "b2", "must be in [0, 1)")
        self.need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        self.need(self.clip_norm >= 0, "clip_norm", "must be >= 0 (0 disables clipping)")


@dataclasses.dataclass(frozen=True)
class ScheduleConfig(Validated):
    """Warmup then the BitNet b1.58 two-stage schedule (LR dropped and weight decay removed at stage 2)."""

    warmup_steps: int = 100
    stage2_fraction: float = 0.5  # stage 2 starts after this fraction of the steps
    stage2_lr_scale: float = 0.4  # stage-2 peak LR = lr * this
    final_lr_scale: float = 0.1  # each stage decays (cosine) to this fraction of its own peak

    def validate(self) -> None:
        """Ranges of the schedule fields."""
        self.need(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        self.need(0 < self.stage2_fraction <= 1, "stage2_fraction", "must be in (0, 1]")
        self.need(self.stage2_lr_scale > 0, "stage2_lr_scale", "must be > 0")
        self.need(0 <= self.final_lr_scale <= 1, "final_lr_scale", "must be in [0, 1]")


@dataclasses.dataclass(frozen=True)
class TrainingConfig(Validated):
    """Steps, batch, precision and seed."""

    steps: int = 1000
    batch_size: int = 16  # sequences per optimizer step (all micro-batches together)
    grad_accum: int = 1  # micro-batches per step
    quantize: bool = True  # false: the same architecture in full precision
    compute_dtype: str = "float32"  # activation dtype: float32 or bfloat16 (latent weights stay float32)
    seed: int = 0  # parameter init / RNG seed

    def validate(self) -> None:
        """Ranges of the training fields."""
        self.need(self.steps > 0, "steps", "must be > 0")
        self.need(self.grad_accum > 0, "grad_accum", "must be > 0")
        self.need(self.batch_size > 0 and self.batch_size % self.grad_accum == 0, "batch_size",
                  f"must be a positive multiple of training.grad_accum ({self.grad_accum})")
        self.need(self.compute_dtype in ("float32", "bfloat16"), "compute_dtype", "must be float32 or bfloat16")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig(Validated):
    """Where and how often to checkpoint."""

    dir: str = "runs/run"
    every: int = 200
    keep: int = 3
    resume: bool = True

    def validate(self) -> None:
        """Ranges of the checkpoint fields."""
        self.need(self.every > 0, "every", "must be > 0")
        self.need(self.keep > 0, "keep", "must be > 0")


@dataclasses.dataclass(frozen=True)
class LoggingConfig(Validated):
    """Metrics and progress reporting."""

    every: int = 10
    eval_every: int = 100
    eval_batches: int = 8
    progress: bool = True

    def validate(self) -> None:
        """Ranges of the logging fields."""
        for key in ("every", "eval_every", "eval_batches"):
            self.need(getattr(self, key) > 0, key, "must be > 0")


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

    def __post_init__(self) -> None:
        if self.data.seq_len > self.model.max_position_embeddings:
            raise ConfigError.field("data", "seq_len", f"must not exceed model.max_position_embeddings "
                                    f"({self.model.max_position_embeddings}), got {self.data.seq_len}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form that :func:`config_from_dict` reads back to an equal config."""
        out: dict[str, Any] = {"model": {"preset": None, **self.model.to_dict()}}
        for name in SECTIONS:
            out[name] = getattr(self, name).to_dict()
        return out

    def to_yaml(self) -> str:
        """YAML text of :meth:`to_dict`."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def training_mesh(mesh: Any) -> Any:
    """The ``mesh`` section with the training defaults: missing axes are 1, ``data`` takes the rest."""
    mesh = {} if mesh is None else mesh
    if not isinstance(mesh, Mapping):
        return mesh  # a wrong type, which build() reports
    if -1 in mesh.values() or "data" in mesh:
        return {**{axis: 1 for axis in AXES}, **mesh}
    return {**{axis: 1 for axis in AXES}, "data": -1, **mesh}


def config_from_dict(data: Mapping[str, Any], source: str = "config") -> TrainConfig:
    """Build and validate a :class:`TrainConfig`; every error names ``source`` and the offending key."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    known = {"model", *SECTIONS}
    for key in data:
        if key not in known:
            raise ConfigError(f"{source}: {key}: unknown section; known sections: {sorted(known)}")
    model_data = data.get("model") or {}
    if not isinstance(model_data, Mapping):
        raise ConfigError(f"{source}: model: expected a mapping, got {type(model_data).__name__}")
    model_data = dict(model_data)
    preset = model_data.pop("preset", "tiny")
    if preset is not None and not isinstance(preset, str):
        raise ConfigError(f"{source}: model.preset: expected a preset name, got {preset!r}")
    try:
        base = ModelConfig.preset(preset).to_dict() if preset else {}
    except ConfigError as e:
        raise ConfigError(f"{source}: model.preset: {e}") from None
    sections: dict[str, Any] = {"model": ModelConfig.from_dict({**base, **model_data}, source, "model")}
    for name, cls in SECTIONS.items():
        raw = training_mesh(data.get(name)) if name == "mesh" else (data.get(name) or {})
        sections[name] = build(cls, raw, name, source)
    try:
        return TrainConfig(**sections)
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
