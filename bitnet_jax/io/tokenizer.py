"""A thin tokenizer wrapper over the ``tokenizers`` library: encode/decode with explicit BOS handling.

:func:`load_tokenizer` builds one from ``tokenizer.json`` or from a GGUF file's tokenizer metadata
(Llama 3 byte-level BPE: ``tokenizer.ggml.model = gpt2``, pre-tokenizer ``llama-bpe``); a vocab-only
GGUF works.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from bitnet_jax.config import ModelConfig
from bitnet_jax.errors import TokenizerError


class Tokenizer:
    """Text <-> token ids. ``encode`` adds no BOS unless ``add_bos=True``."""

    def __init__(self, backend: HFTokenizer, bos_id: int | None = None, eos_ids: Sequence[int] = ()):
        self.backend = backend
        self.bos_id = bos_id
        self.eos_ids = tuple(eos_ids)

    @classmethod
    def from_file(cls, path: str | Path, config: ModelConfig | None = None) -> "Tokenizer":
        """Load ``tokenizer.json``; BOS/EOS ids come from ``config`` when given."""
        try:
            backend = HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on malformed files
            raise TokenizerError(f"{path}: cannot load tokenizer ({e})") from None
        bos = config.bos_token_id if config else None
        eos = config.eos_token_ids if config else ()
        return cls(backend, bos, eos)

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Token ids of ``text`` (special-token strings are recognised), BOS first if ``add_bos``."""
        ids = self.backend.encode(text, add_special_tokens=False).ids
        if add_bos:
            if self.bos_id is None:
                raise TokenizerError("add_bos=True but this tokenizer has no BOS token id")
            ids = [self.bos_id, *ids]
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        """The id of a token string, or None."""
        return self.backend.token_to_id(token)


# The Llama 3 pre-tokenizer split (tiktoken's ``cl100k``-style pattern with 1-3 digit groups).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SUPPORTED_PRE = ("llama-bpe", "llama3")
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4
END_TOKENS = ("<|end_of_text|>", "<|eot_id|>")


def _meta_int(meta: dict, key: str, source: str, size: int) -> int | None:
    value = meta.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < size:
        raise TokenizerError(f"{source}: {key} = {value!r} is not a token id in [0, {size})")
    return value


def _string_list(meta: dict, key: str, source: str) -> list[str]:
    value = meta.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TokenizerError(f"{source}: {key} must be an array of strings")
    return value


def tokenizer_from_gguf_metadata(meta: dict, source: str) -> Tokenizer:
    """A Llama 3 byte-level BPE :class:`Tokenizer` from GGUF ``tokenizer.ggml.*`` metadata."""
    model = meta.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise TokenizerError(f"{source}: tokenizer.ggml.model = {model!r} is not supported (expected 'gpt2' BPE)")
    pre = meta.get("tokenizer.ggml.pre", "llama-bpe")
    if pre not in SUPPORTED_PRE:
        raise TokenizerError(f"{source}: tokenizer.ggml.pre = {pre!r} is not supported (expected 'llama-bpe')")
    tokens = _string_list(meta, "tokenizer.ggml.tokens", source)
    merges = _string_list(meta, "tokenizer.ggml.merges", source)
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise TokenizerError(f"{source}: tokenizer.ggml.tokens holds duplicate tokens")
    pairs = []
    for i, m in enumerate(merges):
        a, sep, b = m.partition(" ")
        if not sep or a not in vocab or b not in vocab or a + b not in vocab:
            raise TokenizerError(f"{source}: tokenizer.ggml.merges[{i}] = {m!r} is not a merge of two known tokens")
        pairs.append((a, b))
    types = meta.get("tokenizer.ggml.token_type")
    if types is None:
        types = [1] * len(tokens)
    elif len(types) != len(tokens):
        raise TokenizerError(
            f"{source}: tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens"
        )
    backend = HFTokenizer(models.BPE(vocab=vocab, merges=pairs, ignore_merges=True, fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    types = np.asarray(types)
    added = [
        AddedToken(tokens[i], special=bool(types[i] == TOKEN_CONTROL), normalized=False)
        for i in np.flatnonzero((types == TOKEN_CONTROL) | (types == TOKEN_USER_DEFINED))
    ]
    backend.add_special_tokens(added)
    bos = _meta_int(meta, "tokenizer.ggml.bos_token_id", source, len(tokens))
    eos = [
        v
        for v in (
            _meta_int(meta, "tokenizer.ggml.eos_token_id", source, len(tokens)),
            _meta_int(meta, "tokenizer.ggml.eot_token_id", source, len(tokens)),
        )
        if v is not None
    ]
    return Tokenizer(backend, bos, tuple(dict.fromkeys(eos)))


def _from_json(path: Path, config: ModelConfig | None) -> Tokenizer:
    tok = Tokenizer.from_file(path, config)
    if config is None:  # no config.json: take BOS/EOS from the Llama 3 token names
        tok.bos_id = tok.token_to_id("<|begin_of_text|>")
        tok.eos_ids = tuple(i for i in (tok.token_to_id(t) for t in END_TOKENS) if i is not None)
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer from a GGUF file (vocab-only works), a ``tokenizer.json``, or a model directory."""
    from bitnet_jax.io._gguf_file import MAGIC, open_gguf
    from bitnet_jax.io.hf import config_from_hf, load_hf_config_file

    path = Path(path).expanduser()
    if path.is_dir():
        config = None
        if (path / "config.json").is_file():
            config = config_from_hf(load_hf_config_file(path / "config.json"), str(path / "config.json"))
        if (path / "tokenizer.json").is_file():
            return _from_json(path / "tokenizer.json", config)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) != 1:
            raise TokenizerError(f"{path}: no tokenizer.json and not exactly one .gguf file")
        path = ggufs[0]
    if not path.is_file():
        raise TokenizerError(f"{path}: no such tokenizer file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == MAGIC:
        meta = open_gguf(path).metadata
        if "tokenizer.ggml.tokens" not in meta:
            raise TokenizerError(f"{path}: GGUF file has no tokenizer metadata (tokenizer.ggml.tokens)")
        return tokenizer_from_gguf_metadata(meta, str(path))
    return _from_json(path, None)
