"""Documents -> tokenizer -> token files on disk -> packed rows, in a deterministic, resumable order.

Preparation (once per run directory, streamed: no corpus has to fit in memory) reads the documents of
:mod:`bitnet_jax.train.sources`, holds out those whose key hashes below ``val_fraction``, and writes per
split three flat files: ``SPLIT.tokens`` (``uint16``/``uint32`` ids, documents back to back),
``SPLIT.mask`` (``uint8``, 1 where a token is a training target: every token of a text document, the
assistant replies and their end-of-turn tokens of a chat) and ``SPLIT.docs`` (``int64`` document start
offsets). ``data.json`` records what was prepared; it is written last, and files of an interrupted
preparation (temporaries of a killed process included) are removed or redone on the next start.

A text document is ``[BOS] ids [EOS]`` (``stream`` packing: ``[BOS] ids``, the separator-led stream the
bundled model was trained on); a chat is :func:`bitnet_jax.inference.chat.encode_conversation`.

Rows hold ``seq_len + 1`` tokens. ``documents`` packing places whole documents into rows one after the
other (a document that does not fit the current row starts the next; one longer than a row is cut into
row-sized pieces overlapping by one token, so every target is predicted once); each piece is its own
segment (attention stays inside it, positions restart at 0), padding fills the rest. ``stream`` packing
cuts the concatenated stream into windows with stride ``seq_len`` (one segment per row). A batch is a
dict of ``[rows, seq_len]`` arrays: ``inputs``, ``targets``, ``weights`` (1.0 where the target is
trained: same segment, not padding, mask set), ``positions``, ``segments``. The training order is a
seeded permutation of the rows per epoch: batch ``i`` is a pure function of ``(seed, i)``, so a run
resumes at the exact sample without replaying data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from bitnet_jax.config.run import DataConfig, TokenizerConfig
from bitnet_jax.errors import ConfigError
from bitnet_jax.inference.chat import encode_conversation
from bitnet_jax.io._atomic import atomic_output, write_text
from bitnet_jax.io.tokenizer import Tokenizer
from bitnet_jax.train.sources import Document, is_validation, iter_documents, source_fingerprint

TOKENIZER_FILE = "tokenizer.json"
MANIFEST_FILE = "data.json"
SPLITS = ("train", "val")
SPLIT_FILES = ("tokens", "mask", "docs")
MANIFEST_VERSION = 2
PAD_ID = 0
Batch = dict[str, np.ndarray]


def train_tokenizer(texts: Iterable[str], cfg: TokenizerConfig) -> HFTokenizer:
    """A byte-level BPE tokenizer trained on ``texts`` (the separator token gets id 0)."""
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
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_or_train_tokenizer(cfg: TokenizerConfig, train_texts: Iterable[str], run_dir: Path) -> Tokenizer:
    """A from-scratch run's tokenizer: ``run_dir/tokenizer.json`` if present, else ``cfg.path``, else a new
    BPE trained on ``train_texts``; its separator token is BOS and EOS."""
    cached = run_dir / TOKENIZER_FILE
    if cached.is_file():
        tok = HFTokenizer.from_file(str(cached))
    else:
        if cfg.path is not None:
            try:
                tok = HFTokenizer.from_file(str(Path(cfg.path).expanduser()))
            except Exception as e:  # tokenizers raises a bare Exception
                raise ConfigError(f"tokenizer.path: cannot load {cfg.path} ({e})") from None
        else:
            tok = train_tokenizer(train_texts, cfg)
        if tok.token_to_id(cfg.special_token) is None:
            raise ConfigError(f"tokenizer.special_token: {cfg.special_token!r} is not in the tokenizer vocabulary")
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(cached, tok.to_str())
    sep = tok.token_to_id(cfg.special_token)
    return Tokenizer(tok, sep, (sep,))


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned dtype that holds every id."""
    return np.dtype(np.uint16 if vocab_size <= 65536 else np.uint32)


def encode_document(doc: Document, tok: Tokenizer, packing: str) -> tuple[list[int], list[bool]]:
    """A document's token ids and training-target mask (see the module docstring)."""
    if doc.messages is not None:
        return encode_conversation(tok, doc.messages)
    ids = tok.encode(doc.text)
    if tok.bos_id is not None:
        ids = [tok.bos_id, *ids]
    if packing == "documents" and tok.eos_ids:
        ids = [*ids, tok.eos_ids[0]]
    return ids, [True] * len(ids)


_STALE = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.tmp")  # tempfile's 8 random characters between our prefix/suffix


def _remove_stale_temporaries(run_dir: Path) -> None:
    """Temporary files left in the run directory by a run that was killed (the atomic writer names them
    ``.NAME.XXXXXXXX.tmp``: the splits, manifest, tokenizer, metrics and run config)."""
    ours = tuple(f".{s}.{f}." for s in SPLITS for f in SPLIT_FILES) + (f".{MANIFEST_FILE}.", f".{TOKENIZER_FILE}.")
    for stale in run_dir.glob(".*.tmp"):
        if (stale.name.startswith(ours) or _STALE.fullmatch(stale.name)) and stale.is_file() and not stale.is_symlink():
            stale.unlink(missing_ok=True)


def _write_splits(docs: Iterator[Document], val_fraction: float, tok: Tokenizer, packing: str, dtype: np.dtype,
                  run_dir: Path) -> dict[str, dict[str, int]]:
    """Tokenize every document into its split's three files (atomically); returns per-split counts."""
    vocab = tok.vocab_size
    stats = {s: {"documents": 0, "tokens": 0, "trained_tokens": 0} for s in SPLITS}
    offsets: dict[str, list[int]] = {s: [0] for s in SPLITS}
    with contextlib.ExitStack() as stack:
        out = {}
        for s in SPLITS:
            tmp = {f: stack.enter_context(atomic_output(run_dir / f"{s}.{f}")) for f in SPLIT_FILES}
            out[s] = (tmp, stack.enter_context(open(tmp["tokens"], "wb")), stack.enter_context(open(tmp["mask"], "wb")))
        for doc in docs:
            ids, mask = encode_document(doc, tok, packing)
            if not ids:
                continue
            if max(ids) >= vocab:
                raise ConfigError(f"{doc.key}: token id {max(ids)} is outside the tokenizer vocabulary ({vocab})")
            split = "val" if is_validation(doc.key, val_fraction) else "train"
            _, ftok, fmask = out[split]
            ftok.write(np.asarray(ids, dtype).tobytes())
            fmask.write(np.asarray(mask, np.uint8).tobytes())
            offsets[split].append(offsets[split][-1] + len(ids))
            st = stats[split]
            st["documents"] += 1
            st["tokens"] += len(ids)
            st["trained_tokens"] += int(sum(mask))
        for s in SPLITS:
            np.asarray(offsets[s], np.int64).tofile(out[s][0]["docs"])
    return stats


@dataclasses.dataclass(frozen=True)
class TokenSplit:
    """One prepared split (``PREFIX.tokens`` / ``.mask`` / ``.docs``) cut into rows of ``seq_len + 1`` tokens."""

    prefix: Path
    dtype: str
    seq_len: int
    packing: str

    def tokens(self) -> np.ndarray:
        """The memory-mapped token ids."""
        return _memmap(Path(f"{self.prefix}.tokens"), self.dtype)

    def mask(self) -> np.ndarray:
        """The memory-mapped training-target mask (uint8)."""
        return _memmap(Path(f"{self.prefix}.mask"), np.uint8)

    def doc_offsets(self) -> np.ndarray:
        """Document start offsets (and the end), int64."""
        return np.fromfile(f"{self.prefix}.docs", dtype=np.int64)

    @functools.cached_property
    def layout(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``documents`` packing: (row start index into the pieces, piece starts, piece lengths)."""
        return pack_documents(self.doc_offsets(), self.seq_len + 1)

    @property
    def num_rows(self) -> int:
        """How many rows the split holds."""
        if self.packing == "stream":
            n = self.tokens().size
            return max(0, (n - 1) // self.seq_len)
        return len(self.layout[0]) - 1

    def rows(self, indices: Iterable[int]) -> Batch:
        """The batch of rows ``indices`` (see the module docstring for its arrays); an index of -1 is an
        empty row (padding, no target) that fills a last, partial batch."""
        toks, mask = self.tokens(), self.mask()
        indices = list(indices)
        cap = self.seq_len + 1
        tokens = np.full((len(indices), cap), PAD_ID, np.int32)
        trained = np.zeros((len(indices), cap), bool)
        segments = np.zeros((len(indices), cap), np.int32)
        positions = np.zeros((len(indices), cap), np.int32)
        for r, row in enumerate(indices):
            if row < 0:
                continue
            if self.packing == "stream":
                pieces = [(row * self.seq_len, cap)]
            else:
                first, starts, lengths = self.layout
                pieces = zip(starts[first[row] : first[row + 1]], lengths[first[row] : first[row + 1]])
            at = 0
            for seg, (start, length) in enumerate(pieces, 1):
                tokens[r, at : at + length] = toks[start : start + length]
                trained[r, at : at + length] = mask[start : start + length] != 0
                segments[r, at : at + length] = seg
                positions[r, at : at + length] = np.arange(length)
                at += length
        same = (segments[:, 1:] == segments[:, :-1]) & (segments[:, 1:] > 0)
        return {
            "inputs": tokens[:, :-1],
            "targets": tokens[:, 1:],
            "weights": (same & trained[:, 1:]).astype(np.float32),
            "positions": positions[:, :-1],
            "segments": segments[:, :-1],
        }


def _memmap(path: Path, dtype: Any) -> np.ndarray:
    if path.stat().st_size == 0:
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def pack_documents(offsets: np.ndarray, cap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy in-order packing of documents into rows of ``cap`` tokens: (row -> first piece index, with
    one extra end entry; piece starts; piece lengths). A document longer than ``cap`` becomes pieces of
    ``cap`` tokens overlapping by one; documents of one token (no target) are skipped."""
    starts, lengths, first = [], [], [0]
    fill = 0
    for begin, end in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
        if end - begin < 2:
            continue
        s = begin
        while True:
            length = min(cap, end - s)
            if fill + length > cap:
                first.append(len(starts))
                fill = 0
            starts.append(s)
            lengths.append(length)
            fill += length
            if s + length >= end:
                break
            s += length - 1
    if fill:
        first.append(len(starts))
    return np.asarray(first, np.int64), np.asarray(starts, np.int64), np.asarray(lengths, np.int64)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """The prepared data of a run: its tokenizer and the train / validation splits."""

    tokenizer: Tokenizer
    train: TokenSplit
    val: TokenSplit | None
    seed: int

    @property
    def vocab_size(self) -> int:
        """Vocabulary size of the tokenizer (added tokens included)."""
        return self.tokenizer.vocab_size

    @property
    def separator_id(self) -> int | None:
        """The document separator of a from-scratch run (its tokenizer's BOS)."""
        return self.tokenizer.bos_id

    def train_batch(self, index: int, batch_size: int) -> Batch:
        """Training batch number ``index`` (``batch_size`` rows): a pure function of the seed and index."""
        n = self.train.num_rows
        picks = []
        for pos in range(index * batch_size, (index + 1) * batch_size):
            epoch, offset = divmod(pos, n)
            picks.append(int(epoch_order(self.seed, epoch, n)[offset]))
        return self.train.rows(picks)

    def val_batches(self, batch_size: int, max_batches: int) -> Iterator[Batch]:
        """The first ``max_batches`` validation batches, in file order (fixed across evaluations); a last,
        partial batch is filled with empty rows."""
        if self.val is None:
            return
        n = self.val.num_rows
        for b in range(min(max_batches, -(-n // batch_size))):
            yield self.val.rows(i if i < n else -1 for i in range(b * batch_size, (b + 1) * batch_size))


@functools.lru_cache(maxsize=1)
def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The row permutation of one epoch (seeded by ``(seed, epoch)``)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def _manifest(data: DataConfig, tok: Tokenizer, dtype: np.dtype) -> dict[str, Any]:
    fields = ("format", "packing", "text_field", "messages_field", "hf_name", "hf_split", "max_documents",
              "val_fraction", "pattern", "recursive")
    return {
        "version": MANIFEST_VERSION,
        "config": {k: getattr(data, k) for k in fields},
        "sources": source_fingerprint(data),
        "tokenizer": hashlib.sha256(tok.backend.to_str().encode()).hexdigest(),
        "bos_eos": [tok.bos_id, list(tok.eos_ids)],
        "dtype": dtype.name,
    }


def read_manifest(run_dir: Path) -> dict[str, Any] | None:
    """The run directory's ``data.json`` (None when absent or unreadable)."""
    try:
        return json.loads((Path(run_dir) / MANIFEST_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def prepare_dataset(data: DataConfig, tok_cfg: TokenizerConfig, run_dir: Path, tokenizer: Tokenizer | None = None
                    ) -> Dataset:
    """Read, split and tokenize the documents into ``run_dir`` (unless already prepared the same way).

    ``tokenizer`` is the model's own (a fine-tune); without it the run trains (or loads) one per ``tok_cfg``.
    """
    run_dir = Path(run_dir)
    source_fingerprint(data)  # a missing input is reported before anything is written
    run_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(run_dir)
    if tokenizer is None:
        texts = (t for d in iter_documents(data) if not is_validation(d.key, data.val_fraction) for t in d.texts())
        tok = load_or_train_tokenizer(tok_cfg, texts, run_dir)
    else:
        tok = tokenizer
        if not (run_dir / TOKENIZER_FILE).is_file():
            write_text(run_dir / TOKENIZER_FILE, tok.backend.to_str())  # exports and resumed runs read it (atomic)
    dtype = token_dtype(tok.vocab_size)
    manifest = _manifest(data, tok, dtype)
    old = read_manifest(run_dir)
    files_there = all((run_dir / f"{s}.{f}").is_file() for s in SPLITS for f in SPLIT_FILES)
    if old is None or {k: v for k, v in old.items() if k != "splits"} != manifest or not files_there:
        (run_dir / MANIFEST_FILE).unlink(missing_ok=True)  # what follows is not complete until it is rewritten
        manifest["splits"] = _write_splits(iter_documents(data), data.val_fraction, tok, data.packing, dtype, run_dir)
        write_text(run_dir / MANIFEST_FILE, json.dumps(manifest, indent=1))
    else:
        manifest = old
    train = TokenSplit(run_dir / "train", dtype.name, data.seq_len, data.packing)
    if train.num_rows < 1:
        raise ConfigError(f"data.paths: the training split has no row of seq_len + 1 = {data.seq_len + 1} tokens "
                          f"({manifest['splits']['train']['documents']} documents)")
    if manifest["splits"]["train"]["trained_tokens"] == 0:
        raise ConfigError("data.paths: the training split has no token to train on (chats without assistant turns?)")
    val = TokenSplit(run_dir / "val", dtype.name, data.seq_len, data.packing)
    return Dataset(tok, train, val if val.num_rows > 0 else None, data.seed)
