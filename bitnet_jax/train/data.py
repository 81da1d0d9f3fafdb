"""Text files -> tokenizer -> packed fixed-length token windows, with a deterministic, resumable order.

Documents (files) are listed in sorted order; a document goes to validation when a hash of its name
falls below ``val_fraction``. Each split is tokenized file by file and streamed to a flat token file
(``uint16``/``uint32``), every document preceded by the separator token, so a corpus never has to fit
in memory; batches are read back through ``np.memmap``. The training order is a seeded permutation of
the ``seq_len + 1``-token windows per epoch, so batch ``i`` is a pure function of ``(seed, i)`` and a
run resumes at any step without replaying the data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from bitnet_jax.config.run import DataConfig, TokenizerConfig
from bitnet_jax.errors import ConfigError
from bitnet_jax.io._atomic import atomic_output, write_text

TOKENIZER_FILE = "tokenizer.json"


def list_documents(cfg: DataConfig) -> list[Path]:
    """Every input file, sorted; an error names a path that does not exist or a directory without matches."""
    files: list[Path] = []
    for i, path in enumerate(cfg.resolved_paths()):
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = sorted(p for p in (path.rglob if cfg.recursive else path.glob)(cfg.pattern) if p.is_file())
            if not found:
                raise ConfigError(f"data.paths[{i}]: directory {path} holds no files matching {cfg.pattern!r}")
            files.extend(found)
        else:
            raise ConfigError(f"data.paths[{i}]: {path} does not exist")
    return sorted(set(files))


def is_validation(path: Path, val_fraction: float) -> bool:
    """Whether a document is held out: a stable hash of its file name (not its directory) vs the fraction."""
    h = int.from_bytes(hashlib.sha256(path.name.encode()).digest()[:8], "little")
    return h / 2**64 < val_fraction


def split_documents(cfg: DataConfig) -> tuple[list[Path], list[Path]]:
    """(train files, validation files)."""
    docs = list_documents(cfg)
    val = [d for d in docs if is_validation(d, cfg.val_fraction)]
    train = [d for d in docs if not is_validation(d, cfg.val_fraction)]
    if not train:
        raise ConfigError("data.val_fraction: every document went to validation; lower it or add files")
    return train, val


def read_text(path: Path) -> str:
    """A file's text (UTF-8, undecodable bytes replaced)."""
    return path.read_bytes().decode("utf-8", errors="replace")


def train_tokenizer(files: list[Path], cfg: TokenizerConfig) -> HFTokenizer:
    """A byte-level BPE tokenizer trained on ``files`` (separator token gets id 0)."""
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=[cfg.special_token],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((read_text(f) for f in files), trainer=trainer)
    return tok


def load_or_train_tokenizer(cfg: TokenizerConfig, train_files: list[Path], run_dir: Path) -> HFTokenizer:
    """The run's tokenizer: ``run_dir/tokenizer.json`` if present, else ``cfg.path``, else a new BPE."""
    cached = run_dir / TOKENIZER_FILE
    if cached.is_file():
        return HFTokenizer.from_file(str(cached))
    if cfg.path is not None:
        try:
            tok = HFTokenizer.from_file(str(Path(cfg.path).expanduser()))
        except Exception as e:  # tokenizers raises a bare Exception
            raise ConfigError(f"tokenizer.path: cannot load {cfg.path} ({e})") from None
    else:
        tok = train_tokenizer(train_files, cfg)
    if tok.token_to_id(cfg.special_token) is None:
        raise ConfigError(f"tokenizer.special_token: {cfg.special_token!r} is not in the tokenizer vocabulary")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(cached, tok.to_str())
    return tok


def _token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 65536 else np.uint32)


def tokenize_to_file(files: list[Path], tok: HFTokenizer, sep_id: int, out: Path) -> int:
    """Stream ``files`` through ``tok`` into a flat token file (atomically); returns the token count."""
    dtype = _token_dtype(tok.get_vocab_size(with_added_tokens=True))
    n = 0
    with atomic_output(out) as tmp, open(tmp, "wb") as f:
        for path in files:
            ids = np.asarray([sep_id, *tok.encode(read_text(path), add_special_tokens=False).ids], dtype=dtype)
            f.write(ids.tobytes())
            n += ids.size
    return n


@dataclasses.dataclass(frozen=True)
class TokenFile:
    """A flat token file read through ``np.memmap``, cut into ``seq_len + 1`` windows (stride ``seq_len``)."""

    path: Path
    dtype: str
    seq_len: int

    def tokens(self) -> np.ndarray:
        """The memory-mapped token array."""
        return np.memmap(self.path, dtype=self.dtype, mode="r")

    @property
    def num_windows(self) -> int:
        """How many full windows the file holds."""
        n = os.path.getsize(self.path) // np.dtype(self.dtype).itemsize
        return max(0, (n - 1) // self.seq_len)

    def windows(self, indices: np.ndarray) -> np.ndarray:
        """``int32 [len(indices), seq_len + 1]`` windows (inputs ``[:, :-1]``, targets ``[:, 1:]``)."""
        toks = self.tokens()
        rows = [np.asarray(toks[i * self.seq_len : i * self.seq_len + self.seq_len + 1]) for i in indices]
        return np.stack(rows).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """The prepared corpus of a run: tokenizer, train and validation token files."""

    tokenizer: HFTokenizer
    separator_id: int
    train: TokenFile
    val: TokenFile | None
    seed: int

    @property
    def vocab_size(self) -> int:
        """Vocabulary size of the tokenizer (added tokens included)."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def train_batch(self, index: int, batch_size: int) -> np.ndarray:
        """Training batch number ``index`` (``int32 [batch_size, seq_len + 1]``): a pure function of seed and index."""
        n = self.train.num_windows
        start = index * batch_size
        picks = []
        for pos in range(start, start + batch_size):
            epoch, offset = divmod(pos, n)
            picks.append(epoch_order(self.seed, epoch, n)[offset])
        return self.train.windows(np.asarray(picks))

    def val_batches(self, batch_size: int, max_batches: int) -> Iterator[np.ndarray]:
        """The first ``max_batches`` validation batches, in file order (fixed across evaluations)."""
        if self.val is None:
            return
        n = self.val.num_windows
        for b in range(min(max_batches, n // batch_size)):
            yield self.val.windows(np.arange(b * batch_size, (b + 1) * batch_size))


_ORDER_CACHE: dict[tuple[int, int, int], np.ndarray] = {}


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The window permutation of one epoch (seeded by ``(seed, epoch)``)."""
    key = (seed, epoch, n)
    if key not in _ORDER_CACHE:
        _ORDER_CACHE.clear()
        _ORDER_CACHE[key] = np.random.default_rng([seed, epoch]).permutation(n)
    return _ORDER_CACHE[key]


def prepare_dataset(data: DataConfig, tok_cfg: TokenizerConfig, run_dir: Path) -> Dataset:
    """List and split the documents, get the tokenizer, tokenize each split once into ``run_dir``."""
    train_files, val_files = split_documents(data)
    run_dir = Path(run_dir)
    tok = load_or_train_tokenizer(tok_cfg, train_files, run_dir)
    sep = tok.token_to_id(tok_cfg.special_token)
    dtype = _token_dtype(tok.get_vocab_size(with_added_tokens=True)).name
    manifest = {
        "train": [str(f) for f in train_files],
        "val": [str(f) for f in val_files],
        "dtype": dtype,
    }
    manifest_path = run_dir / "data.json"
    fresh = not manifest_path.is_file() or json.loads(manifest_path.read_text()) != manifest
    for split, files in (("train", train_files), ("val", val_files)):
        out = run_dir / f"{split}.tokens"
        if files and (fresh or not out.is_file()):
            tokenize_to_file(files, tok, sep, out)
    if fresh:
        write_text(manifest_path, json.dumps(manifest, indent=1))
    train = TokenFile(run_dir / "train.tokens", dtype, data.seq_len)
    if train.num_windows < 1:
        raise ConfigError(f"data.paths: the training split has fewer than seq_len + 1 = {data.seq_len + 1} tokens")
    val = TokenFile(run_dir / "val.tokens", dtype, data.seq_len) if val_files else None
    if val is not None and val.num_windows < 1:
        val = None
    return Dataset(tok, sep, train, val, data.seed)
