"""The training run configuration: frozen dataclasses loaded from YAML, validated with errors naming the key.

A run config has the sections ``model``, ``init``, ``data``, ``tokenizer``, ``optimizer``, ``schedule``,
``training``, ``checkpoint``, ``logging``, ``export`` and ``mesh`` (see ``configs/train/*.yaml``).
``model`` is a model preset name plus field overrides (``{preset: tiny, hidden_size: 128}``); with
``init: {from: PATH|ID}`` the model (its config and tokenizer) comes from that checkpoint instead, and a
``model`` section, if given, is the architecture the checkpoint must have. ``mesh`` is the
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

from bitnet_jax.config._validate import Validated, build, load_yaml_text, read_yaml
from bitnet_jax.config.mesh import AXES, MeshConfig
from bitnet_jax.config.model import ModelConfig
from bitnet_jax.errors import ConfigError

STDLIB_TOKEN = "{stdlib}"
CONFIG_DIR_TOKEN = "{config_dir}"  # in data.paths: the directory of the YAML file the config came from
DATA_FORMATS = ("auto", "text", "jsonl", "parquet", "hf")
PACKINGS = ("documents", "stream")
REMAT_POLICIES = ("none", "nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable",
                  "everything_saveable")
INIT_KINDS = ("auto", "hf", "llama", "gguf", "run")
INIT_ARCHITECTURES = ("checkpoint", "bitnet")
EXPORT_FORMATS = ("hf", "hf-latent", "gguf-i2_s", "gguf-tq2_0", "gguf-tq1_0")


@dataclasses.dataclass(frozen=True)
class DataConfig(Validated):
    """Where the documents come from and how they are packed into sequences.

    ``format``: ``text`` (each file one document), ``jsonl`` (one record per line: ``{"text": ...}`` or
    ``{"messages": [{"role", "content"}, ...]}``, a chat trained on its assistant turns only),
    ``parquet`` (the same records as rows), ``hf`` (Hugging Face ``datasets``: ``paths`` holds one
    dataset id, a local dataset directory or data files), ``auto`` (by file suffix: ``.jsonl``/``.json``,
    ``.parquet``, else text). ``packing``: ``documents`` (whole documents packed into rows, attention
    and positions restarted per document, no target across documents) or ``stream`` (documents
    concatenated and cut into windows; attention crosses documents).
    """

    paths: tuple[str, ...] = ()  # files or directories; ``{stdlib}`` = this interpreter's stdlib dir
    pattern: str = "*.txt"  # file-name glob used inside directories
    recursive: bool = False  # search directories recursively
    val_fraction: float = 0.05  # share of documents (by a hash of their name) held out for validation
    seq_len: int = 256
    seed: int = 0  # data order seed (row permutation per epoch)
    format: str = "auto"
    packing: str = "documents"
    text_field: str = "text"  # the record field holding a plain-text document
    messages_field: str = "messages"  # the record field holding a chat
    hf_name: str | None = None  # format hf: the dataset configuration (subset) name
    hf_split: str = "train"  # format hf: the split to read (validation is still held out by hash)
    streaming: bool = True  # format hf: iterate the dataset without materialising it (tokens go to disk)
    max_documents: int | None = None  # read at most this many documents (all when null)

    def validate(self) -> None:
        """Ranges of the data fields."""
        self.need(len(self.paths) > 0, "paths", "at least one file or directory is required")
        self.need(0.0 <= self.val_fraction < 1.0, "val_fraction", "must be in [0, 1)")
        self.need(self.seq_len > 1, "seq_len", "must be > 1")
        self.need(self.format in DATA_FORMATS, "format", f"must be one of {DATA_FORMATS}")
        self.need(self.packing in PACKINGS, "packing", f"must be one of {PACKINGS}")
        self.need(self.format != "hf" or len(self.paths) == 1, "paths",
                  "format hf reads one dataset (an id, a dataset directory or a data file)")
        self.need(self.max_documents is None or self.max_documents > 0, "max_documents", "must be > 0 or null")

    def resolved_paths(self) -> list[Path]:
        """The paths with ``{stdlib}`` replaced by the running interpreter's standard library directory."""
        stdlib = sysconfig.get_paths()["stdlib"]
        return [Path(p.replace(STDLIB_TOKEN, stdlib)).expanduser() for p in self.paths]


@dataclasses.dataclass(frozen=True)
class InitConfig(Validated):
    """Where a fine-tune starts: a checkpoint's latent weights, config and tokenizer (``from``).

    ``from`` is a transformers directory or hub id (BitNet ``-bf16`` latent, packed, or a Llama-style
    model), a GGUF file, or a bitnet-jax run directory; ``kind`` forces the reader (``auto`` detects
    it). Packed checkpoints start from their codes times scale. ``architecture``: ``checkpoint`` keeps
    the checkpoint's own architecture; ``bitnet`` maps a Llama-style checkpoint onto BitNet b1.58
    (relu^2, sub-norms inserted at 1) when no family for it is available.
    """

    from_: str | None = None
    kind: str = "auto"
    architecture: str = "checkpoint"
    revision: str | None = None  # hub ids: the branch, tag or commit

    def validate(self) -> None:
        """Choices of the init fields."""
        self.need(self.from_ is None or self.from_.strip() != "", "from_", "must be a path or hub id, or null")
        self.need(self.kind in INIT_KINDS, "kind", f"must be one of {INIT_KINDS}")
        self.need(self.architecture in INIT_ARCHITECTURES, "architecture", f"must be one of {INIT_ARCHITECTURES}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form, ``from_`` written as the YAML key ``from``."""
        out = super().to_dict()
        return {"from": out.pop("from_"), **out}


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
    remat: str = "none"  # rematerialize each layer body in the backward pass: none or a jax.checkpoint_policies name
    quant_warmup_steps: int = 0  # blend both quantizers in, x + lambda (q(x) - x), lambda 0 -> 1 over these steps

    def validate(self) -> None:
        """Ranges of the training fields."""
        self.need(self.steps > 0, "steps", "must be > 0")
        self.need(self.grad_accum > 0, "grad_accum", "must be > 0")
        self.need(self.batch_size > 0 and self.batch_size % self.grad_accum == 0, "batch_size",
                  f"must be a positive multiple of training.grad_accum ({self.grad_accum})")
        self.need(self.compute_dtype in ("float32", "bfloat16"), "compute_dtype", "must be float32 or bfloat16")
        self.need(self.remat in REMAT_POLICIES, "remat", f"must be one of {REMAT_POLICIES}")
        self.need(self.quant_warmup_steps >= 0, "quant_warmup_steps", "must be >= 0")
        self.need(self.quantize or self.quant_warmup_steps == 0, "quant_warmup_steps",
                  "needs training.quantize=true (there is nothing to blend in)")


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
    eval_before: bool | None = None  # evaluate at step 0 too (null: when init.from is set)
    samples: tuple[str, ...] = ()  # user messages answered greedily (chat format) before and after training
    sample_tokens: int = 48  # new tokens per sample

    def validate(self) -> None:
        """Ranges of the logging fields."""
        for key in ("every", "eval_every", "eval_batches", "sample_tokens"):
            self.need(getattr(self, key) > 0, key, "must be > 0")


@dataclasses.dataclass(frozen=True)
class ExportConfig(Validated):
    """What to write after the last step: each format under ``dir``, each evaluated on the validation split."""

    dir: str | None = None
    formats: tuple[str, ...] = ("hf",)

    def validate(self) -> None:
        """Choices of the export fields."""
        bad = [f for f in self.formats if f not in EXPORT_FORMATS]
        self.need(not bad, "formats", f"each must be one of {EXPORT_FORMATS}")
        self.need(len(set(self.formats)) == len(self.formats), "formats", "lists a format twice")


SECTIONS: dict[str, type] = {
    "init": InitConfig,
    "data": DataConfig,
    "tokenizer": TokenizerConfig,
    "optimizer": OptimizerConfig,
    "schedule": ScheduleConfig,
    "training": TrainingConfig,
    "checkpoint": CheckpointConfig,
    "logging": LoggingConfig,
    "export": ExportConfig,
    "mesh": MeshConfig,
}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A whole training run."""

    model: ModelConfig | None  # None: the architecture of init.from, known once it is read
    init: InitConfig
    data: DataConfig
    tokenizer: TokenizerConfig
    optimizer: OptimizerConfig
    schedule: ScheduleConfig
    training: TrainingConfig
    checkpoint: CheckpointConfig
    logging: LoggingConfig
    export: ExportConfig
    mesh: MeshConfig

    def __post_init__(self) -> None:
        if self.model is None and self.init.from_ is None:
            raise ConfigError("model: a model section (or init.from) is required")
        if self.model is not None:
            check_seq_len(self.data, self.model)
        if self.init.from_ is not None and self.tokenizer.path is not None:
            raise ConfigError.field("tokenizer", "path", "must be null with init.from (the model's own tokenizer is used)")

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form that :func:`config_from_dict` reads back to an equal config."""
        out: dict[str, Any] = {"model": None if self.model is None else {"preset": None, **self.model.to_dict()}}
        for name in SECTIONS:
            out[name] = getattr(self, name).to_dict()
        return out

    def to_yaml(self) -> str:
        """YAML text of :meth:`to_dict`."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def check_seq_len(data: DataConfig, model: ModelConfig) -> None:
    """``data.seq_len`` must fit the model's context."""
    if data.seq_len > model.max_position_embeddings:
        raise ConfigError.field("data", "seq_len", f"must not exceed model.max_position_embeddings "
                                f"({model.max_position_embeddings}), got {data.seq_len}")


def _init_section(raw: Any, source: str) -> Any:
    """The ``init`` mapping with its YAML key ``from`` as the field ``from_``."""
    if not isinstance(raw, Mapping):
        return raw
    if "from_" in raw:
        raise ConfigError(f"{source}: init.from_: unknown key; the checkpoint to start from is init.from")
    return {("from_" if k == "from" else k): v for k, v in raw.items()}


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
    init_raw = data.get("init") or {}
    has_init = isinstance(init_raw, Mapping) and init_raw.get("from") is not None
    sections: dict[str, Any] = {"model": _model_section(data.get("model"), has_init, source)}
    for name, cls in SECTIONS.items():
        raw = data.get(name) or {}
        if name == "mesh":
            raw = training_mesh(data.get(name))
        elif name == "init":
            raw = _init_section(raw, source)
        try:
            sections[name] = build(cls, raw, name, source)
        except ConfigError as e:
            if name != "init":
                raise
            raise ConfigError(str(e).replace("init.from_", "init.from"), key=e.key, reason=e.reason) from None
    try:
        return TrainConfig(**sections)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def _model_section(model_data: Any, has_init: bool, source: str) -> ModelConfig | None:
    """The ``model`` section: a preset plus overrides (default preset ``tiny``); None when the model
    comes from ``init.from`` and no section is given."""
    if model_data is None and has_init:
        return None
    model_data = model_data or {}
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
    return ModelConfig.from_dict({**base, **model_data}, source, "model")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"training.steps=20"`` -> (``["training", "steps"]``, ``20``); the value is parsed as YAML 1.2."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE (e.g. training.steps=100)")
    parts = key.strip().split(".")
    if len(parts) != 2:
        raise ConfigError(f"--set {text!r}: KEY must be SECTION.FIELD (e.g. optimizer.lr)")
    return parts, load_yaml_text(raw, f"--set {text!r}")  # YAML 1.2 scalars, as in config files


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> TrainConfig:
    """Read a YAML run config, apply ``--set SECTION.FIELD=VALUE`` overrides, validate."""
    path = Path(path)
    data = read_yaml(path, "run config")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections")
    for text in overrides:
        (section, field), value = parse_override(text)
        sec = data.setdefault(section, {})
        if sec is None:
            sec = data[section] = {}
        if not isinstance(sec, dict):
            raise ConfigError(f"{path}: section {section} is not a mapping")
        sec[field] = value
    paths = (data.get("data") or {}).get("paths") if isinstance(data.get("data"), dict) else None
    if isinstance(paths, list):
        here = str(path.expanduser().resolve().parent)
        data["data"]["paths"] = [p.replace(CONFIG_DIR_TOKEN, here) if isinstance(p, str) else p for p in paths]
    return config_from_dict(data, source=str(path))
