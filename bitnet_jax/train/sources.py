"""Where a run's documents come from: text files, JSONL, Parquet and Hugging Face ``datasets``.

Every source yields :class:`Document` s in a fixed order, each with a stable ``key`` (a text file's
name; ``FILE:LINE`` for a JSONL record, ``FILE:ROW`` for Parquet, ``SPLIT:INDEX`` for a dataset) by
which it is held out for validation (:func:`is_validation`), so the split does not depend on the order
or on which other documents exist. A record is ``{"text": str}`` or ``{"messages": [{"role",
"content"}, ...]}`` (field names from the data config); anything else is an error naming the record.
Nothing is held in memory beyond one record (datasets are read with ``streaming`` when asked).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

from bitnet_jax.config.run import DataConfig
from bitnet_jax.errors import ConfigError
from bitnet_jax.inference.chat import ROLES

SUFFIX_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
FILE_PATTERNS = {"jsonl": "*.jsonl", "parquet": "*.parquet"}


@dataclasses.dataclass(frozen=True)
class Document:
    """One document: plain ``text``, or a chat (``messages``) trained on its assistant replies."""

    key: str
    text: str | None = None
    messages: tuple[Mapping[str, str], ...] | None = None

    def texts(self) -> Iterator[str]:
        """Its text(s), for training a tokenizer."""
        if self.text is not None:
            yield self.text
        for m in self.messages or ():
            yield m["content"]


def is_validation(key: str, val_fraction: float) -> bool:
    """Whether a document is held out: a stable hash of its key against the fraction."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    return h / 2**64 < val_fraction


def list_files(cfg: DataConfig, pattern: str | None = None) -> list[Path]:
    """Every input file, sorted; an error names a path that does not exist or a directory without matches."""
    pattern = pattern or cfg.pattern
    files: list[Path] = []
    for i, path in enumerate(cfg.resolved_paths()):
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = sorted(p for p in (path.rglob if cfg.recursive else path.glob)(pattern) if p.is_file())
            if not found:
                raise ConfigError(f"data.paths[{i}]: directory {path} holds no files matching {pattern!r}")
            files.extend(found)
        else:
            raise ConfigError(f"data.paths[{i}]: {path} does not exist")
    return sorted(set(files))


def read_text(path: Path) -> str:
    """A file's text (UTF-8, undecodable bytes replaced)."""
    return path.read_bytes().decode("utf-8", errors="replace")


def file_format(cfg: DataConfig, path: Path) -> str:
    """The format of one input file: the configured one, or (``auto``) by its suffix."""
    if cfg.format != "auto":
        return cfg.format
    return SUFFIX_FORMATS.get(path.suffix.lower(), "text")


def to_document(record: Any, key: str, cfg: DataConfig) -> Document:
    """A record as a :class:`Document`; an error names ``key`` and what is wrong."""
    if not isinstance(record, Mapping):
        raise ConfigError(f"{key}: a record must be an object with {cfg.text_field!r} or {cfg.messages_field!r}, "
                          f"got {type(record).__name__}")
    messages = record.get(cfg.messages_field)
    if messages is not None:
        if not isinstance(messages, (list, tuple)) or not messages:
            raise ConfigError(f"{key}: {cfg.messages_field} must be a non-empty list of messages")
        for i, m in enumerate(messages):
            if not isinstance(m, Mapping) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise ConfigError(f"{key}: {cfg.messages_field}[{i}] must be {{role: one of {sorted(ROLES)}, "
                                  f"content: string}}, got {m!r:.80}")
        return Document(key, messages=tuple({"role": m["role"], "content": m["content"]} for m in messages))
    text = record.get(cfg.text_field)
    if not isinstance(text, str):
        raise ConfigError(f"{key}: the record has no string field {cfg.text_field!r} and no {cfg.messages_field!r} "
                          f"(fields: {sorted(record)[:8]})")
    return Document(key, text=text)


def _jsonl_records(path: Path) -> Iterator[tuple[str, Any]]:
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            key = f"{path.name}:{lineno}"
            try:
                yield key, json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
                raise ConfigError(f"{path}:{lineno}: invalid JSON ({e})") from None


def _parquet_records(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a malformed file
        raise ConfigError(f"{path}: cannot read Parquet ({e})") from None
    row = 0
    for batch in pf.iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            yield f"{path.name}:{row}", record
            row += 1


def _hf_dataset(cfg: DataConfig) -> Iterator[tuple[str, Any]]:
    """Records of a Hugging Face dataset: a ``save_to_disk`` directory, data files, a dataset directory,
    or a dataset id (from the local cache when offline)."""
    try:
        import datasets
    except ImportError:
        raise ConfigError("data.format: hf needs the `datasets` package (pip install 'bitnet-jax[data]')") from None
    spec = cfg.paths[0]
    path = cfg.resolved_paths()[0]
    try:
        if path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()):
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if cfg.hf_split not in ds:
                    raise ConfigError(f"data.hf_split: {path} has no split {cfg.hf_split!r} (has {sorted(ds)})")
                ds = ds[cfg.hf_split]
        elif path.is_file():
            builder = {"jsonl": "json", "parquet": "parquet", "text": "text"}[SUFFIX_FORMATS.get(path.suffix.lower(), "text")]
            ds = datasets.load_dataset(builder, data_files=str(path), split="train", streaming=cfg.streaming)
        else:
            target = str(path) if path.is_dir() else spec
            ds = datasets.load_dataset(target, cfg.hf_name, split=cfg.hf_split, streaming=cfg.streaming)
    except ConfigError:
        raise
    except Exception as e:  # datasets raises many types (FileNotFoundError, DatasetNotFoundError, ConnectionError...)
        offline = " (offline: only datasets already in the local cache load)" if os.environ.get("HF_DATASETS_OFFLINE") \
            or os.environ.get("HF_HUB_OFFLINE") else ""
        raise ConfigError(f"data.paths[0]: cannot load dataset {spec!r}{offline}: {' '.join(str(e).split())[:300]}") \
            from None
    for i, record in enumerate(ds):
        yield f"{cfg.hf_split}:{i}", record


def _pattern(cfg: DataConfig) -> str:
    """The glob inside directories: the configured one, or for jsonl/parquet left at its default, theirs."""
    return FILE_PATTERNS.get(cfg.format, cfg.pattern) if cfg.pattern == "*.txt" else cfg.pattern


def iter_documents(cfg: DataConfig) -> Iterator[Document]:
    """Every document of the configured sources, in a fixed order (at most ``max_documents``)."""
    count = 0

    def records() -> Iterator[Document]:
        if cfg.format == "hf":
            for key, record in _hf_dataset(cfg):
                yield to_document(record, key, cfg)
            return
        for path in list_files(cfg, _pattern(cfg)):
            fmt = file_format(cfg, path)
            if fmt == "text":
                yield Document(path.name, text=read_text(path))
                continue
            reader = _jsonl_records if fmt == "jsonl" else _parquet_records
            for key, record in reader(path):
                yield to_document(record, key, cfg)

    for doc in records():
        if cfg.max_documents is not None and count >= cfg.max_documents:
            return
        count += 1
        yield doc


def source_fingerprint(cfg: DataConfig) -> list[Any]:
    """What identifies the configured sources' contents: each file with its size and modification time
    (a dataset: its id, name and split)."""
    if cfg.format == "hf" and not cfg.resolved_paths()[0].is_file():
        return [cfg.paths[0], cfg.hf_name, cfg.hf_split]
    out = []
    for path in list_files(cfg, _pattern(cfg)):
        st = path.stat()
        out.append([str(path), st.st_size, st.st_mtime_ns])
    return out
