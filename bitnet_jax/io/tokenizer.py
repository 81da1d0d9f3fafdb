"""A thin tokenizer wrapper over the ``tokenizers`` library: encode/decode with explicit BOS handling,
plus what a checkpoint says about chat (its ``chat_template``, end-of-turn tokens).

:func:`load_tokenizer` builds one from ``tokenizer.json``, a SentencePiece ``tokenizer.model``, or a
GGUF file's tokenizer metadata: ``tokenizer.ggml.model = gpt2`` (byte-level BPE with the Llama 3 split,
pre-tokenizers ``llama-bpe`` / ``falcon3`` / ``falcon_e``) or ``llama`` (SentencePiece: tokens, scores,
token types with ``<0xXX>`` byte tokens, rebuilt as a byte-fallback BPE whose merges follow the piece
scores, as llama.cpp's SentencePiece tokenizer merges them). A vocab-only GGUF works.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from bitnet_jax.config import ModelConfig
from bitnet_jax.errors import TokenizerError


class Tokenizer:
    """Text <-> token ids. ``encode`` adds no BOS unless ``add_bos=True``.

    ``chat_template`` is the checkpoint's Jinja chat template (None: the BitNet chat format);
    ``special_tokens`` maps ``bos_token`` / ``eos_token`` to their text for the template.
    """

    def __init__(self, backend: HFTokenizer, bos_id: int | None = None, eos_ids: Sequence[int] = (),
                 chat_template: str | None = None, special_tokens: dict[str, str] | None = None):
        self.backend = backend
        self.bos_id = bos_id
        self.eos_ids = tuple(eos_ids)
        self.chat_template = chat_template
        self.special_tokens = dict(special_tokens or {})

    def end_of_turn_ids(self) -> tuple[int, ...]:
        """Ids of the end-of-turn / end-of-text tokens this vocabulary has (found by their text, as
        llama.cpp finds them), plus the EOS ids."""
        ids = [self.token_to_id(t) for t in END_OF_TURN_TOKENS]
        return tuple(dict.fromkeys(i for i in (*self.eos_ids, *ids) if i is not None))

    def token_text(self, token_id: int | None) -> str | None:
        """The text of a token id (None for None or an id outside the vocabulary)."""
        return None if token_id is None else self.backend.id_to_token(int(token_id))

    def save(self, directory: str | Path) -> None:
        """Write ``tokenizer.json`` (and ``tokenizer_config.json`` with the chat template) into ``directory``."""
        directory = Path(directory)
        self.backend.save(str(directory / "tokenizer.json"))
        extra = {k: v for k, v in self.special_tokens.items() if v is not None}
        if self.chat_template is not None:
            extra["chat_template"] = self.chat_template
        if extra:
            (directory / "tokenizer_config.json").write_text(json.dumps(extra, indent=2) + "\n")

    @classmethod
    def from_file(cls, path: str | Path, config: ModelConfig | None = None) -> "Tokenizer":
        """Load ``tokenizer.json``; BOS/EOS ids come from ``config`` when given."""
        backend = _guarded("load tokenizer", lambda: HFTokenizer.from_file(str(path)), path)
        # prompts are encoded one at a time, whole: a file's padding / truncation settings would pad them
        # (a padding length of 2**63 panics) or cut them silently
        _guarded("load tokenizer", lambda: (backend.no_padding(), backend.no_truncation()), path)
        if config is not None:
            check_vocabulary(backend, config.vocab_size, str(path))
        bos = config.bos_token_id if config else None
        eos = config.eos_token_ids if config else ()
        return cls(backend, bos, eos)

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Token ids of ``text`` (special-token strings are recognised), BOS first if ``add_bos``."""
        if not isinstance(text, str):
            raise TokenizerError(f"text to encode must be a string, got {type(text).__name__}")
        ids = _guarded("encode text", lambda: self.backend.encode(text, add_special_tokens=False).ids)
        if add_bos:
            if self.bos_id is None:
                raise TokenizerError("add_bos=True but this tokenizer has no BOS token id")
            ids = [self.bos_id, *ids]
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``."""
        ids = [int(i) for i in ids]
        return _guarded("decode ids", lambda: self.backend.decode(ids, skip_special_tokens=skip_special_tokens))

    def token_to_id(self, token: str) -> int | None:
        """The id of a token string, or None."""
        return self.backend.token_to_id(token)


def _guarded(what: str, call, path: str | Path | None = None):
    """``call()``, with any failure of the ``tokenizers`` library (a bare Exception, or pyo3's
    ``PanicException``, a ``BaseException``) as a :class:`TokenizerError`."""
    try:
        return call()
    except (KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError):
        raise
    except BaseException as e:  # noqa: BLE001  (PanicException derives from BaseException)
        where = f"{path}: " if path is not None else ""
        raise TokenizerError(f"{where}cannot {what} ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None


def check_vocabulary(backend: HFTokenizer, vocab_size: int, source: str) -> None:
    """Every id the tokenizer can produce (vocabulary and added tokens) must lie inside the model's vocabulary."""
    vocab = _guarded("read the vocabulary", lambda: backend.get_vocab(with_added_tokens=True), source)
    top = max(vocab.values(), default=-1)
    if top >= vocab_size:
        token = next(t for t, i in vocab.items() if i == top)
        raise TokenizerError(f"{source}: token {token[:40]!r} has id {top}, outside the model's vocabulary "
                             f"[0, {vocab_size})")


# The Llama 3 pre-tokenizer split (tiktoken's ``cl100k``-style pattern with 1-3 digit groups).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# GGUF pre-tokenizers that mean the Llama 3 split (llama.cpp: llama3 / llama-bpe / falcon3; bitnet.cpp's
# fork and ik_llama.cpp also falcon_e)
SUPPORTED_PRE = ("llama-bpe", "llama3", "llama-v3", "falcon3", "falcon_e", "falcon-e")
TOKEN_NORMAL = 1
TOKEN_UNKNOWN = 2
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4
TOKEN_UNUSED = 5
TOKEN_BYTE = 6
END_TOKENS = ("<|end_of_text|>", "<|eot_id|>")
# End-of-turn tokens by text (as llama.cpp detects them): Llama 3, ChatML (Falcon-E), Falcon3, Phi, Gemma
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|end_of_text|>", "<|im_end|>", "<|endoftext|>", "<|end|>",
                      "<end_of_turn>", "<|eom_id|>")
SPM_SPACE = "\u2581"  # SentencePiece's visible space


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


def _gguf_types(meta: dict, source: str, n: int) -> np.ndarray:
    types = meta.get("tokenizer.ggml.token_type")
    if types is None:
        return np.full(n, TOKEN_NORMAL)
    if isinstance(types, list) or len(types) != n:
        raise TokenizerError(f"{source}: tokenizer.ggml.token_type has {len(types)} entries for {n} tokens")
    return np.asarray(types)


def tokenizer_from_gguf_metadata(meta: dict, source: str) -> Tokenizer:
    """A :class:`Tokenizer` from GGUF metadata: ``tokenizer.huggingface.json`` when the file has it, else
    ``tokenizer.ggml.*`` byte-level BPE (``gpt2``) or SentencePiece (``llama``); the chat template and
    BOS/EOS/EOT ids come along."""
    model = meta.get("tokenizer.ggml.model")
    hf_json = meta.get("tokenizer.huggingface.json")
    if hf_json is not None:  # the whole tokenizers JSON (bitnet-jax's exports): exact, whatever its kind
        try:
            tok = Tokenizer(HFTokenizer.from_str(hf_json))
        except Exception as e:  # noqa: BLE001  (tokenizers raises plain Exceptions)
            raise TokenizerError(f"{source}: tokenizer.huggingface.json is not a tokenizers JSON "
                                 f"({' '.join(str(e).split())[:200]})") from None
    elif model == "llama":
        tok = _spm_from_gguf(meta, source)
    elif model == "gpt2":
        tok = _bpe_from_gguf(meta, source)
    else:
        raise TokenizerError(f"{source}: tokenizer.ggml.model = {model!r} is not supported "
                             "(expected 'gpt2' byte-level BPE or 'llama' SentencePiece)")
    # ids count against the file's token list when it is longer than the tokenizer (an export pads the list
    # with unused tokens up to the model's vocabulary, as llama.cpp wants one token per embedding row)
    listed = meta.get("tokenizer.ggml.tokens")
    n = max(tok.vocab_size, len(listed) if isinstance(listed, list) else 0)
    bos = _meta_int(meta, "tokenizer.ggml.bos_token_id", source, n)
    eos = [v for v in (_meta_int(meta, "tokenizer.ggml.eos_token_id", source, n),
                       _meta_int(meta, "tokenizer.ggml.eot_token_id", source, n)) if v is not None]
    template = meta.get("tokenizer.chat_template")
    if template is not None and not isinstance(template, str):
        raise TokenizerError(f"{source}: tokenizer.chat_template must be a string")
    tok.bos_id, tok.eos_ids, tok.chat_template = bos, tuple(dict.fromkeys(eos)), template
    tok.special_tokens = {"bos_token": tok.token_text(bos), "eos_token": tok.token_text(eos[0] if eos else None)}
    return tok


def _spm_from_gguf(meta: dict, source: str) -> Tokenizer:
    tokens = _string_list(meta, "tokenizer.ggml.tokens", source)
    scores = meta.get("tokenizer.ggml.scores")
    if scores is None or isinstance(scores, list) or len(scores) != len(tokens):
        raise TokenizerError(f"{source}: tokenizer.ggml.scores must be a number array with one score per token")
    types = _gguf_types(meta, source, len(tokens))
    return Tokenizer(sentencepiece_backend(tokens, np.asarray(scores, np.float64), types, source))


def sentencepiece_backend(pieces: Sequence[str], scores: np.ndarray, types: np.ndarray, source: str) -> HFTokenizer:
    """A SentencePiece (Llama 2 style) vocabulary as a ``tokenizers`` byte-fallback BPE.

    Merges: every split of a normal piece into two known normal pieces, ranked by the merged piece's
    score (higher first), which is the order SentencePiece's BPE merges in. Spaces become ``▁`` and one is
    prepended to each piece of text (the start, and after each special token); unknown characters fall
    back to the ``<0xXX>`` byte tokens.
    """
    vocab = {}
    for i, piece in enumerate(pieces):
        if piece in vocab:
            raise TokenizerError(f"{source}: token {piece!r} appears twice (ids {vocab[piece]} and {i})")
        vocab[piece] = i
    mergeable = {p for p, t in zip(pieces, types) if t in (TOKEN_NORMAL, TOKEN_USER_DEFINED)}
    ranked = []
    for piece in mergeable:
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in mergeable and right in mergeable:
                ranked.append((-float(scores[vocab[piece]]), vocab[piece], vocab[left], left, right))
    ranked.sort()
    unk = [p for p, t in zip(pieces, types) if t == TOKEN_UNKNOWN]
    backend = HFTokenizer(models.BPE(vocab=vocab, merges=[(r[3], r[4]) for r in ranked], unk_token=unk[0] if unk else None,
                                     byte_fallback=True, fuse_unk=True))
    # a space before every text piece (at the start and after each special token, as llama.cpp does), then
    # every space as the visible one
    backend.normalizer = normalizers.Sequence([normalizers.Prepend(SPM_SPACE), normalizers.Replace(" ", SPM_SPACE)])
    backend.decoder = decoders.Sequence([decoders.Replace(SPM_SPACE, " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    specials = [AddedToken(p, special=True, normalized=False)
                for p, t in zip(pieces, types) if t in (TOKEN_CONTROL, TOKEN_UNKNOWN)]
    backend.add_special_tokens(specials)
    return backend


def _bpe_from_gguf(meta: dict, source: str) -> Tokenizer:
    pre = meta.get("tokenizer.ggml.pre", "llama-bpe")
    if pre not in SUPPORTED_PRE:
        raise TokenizerError(f"{source}: tokenizer.ggml.pre = {pre!r} is not supported (expected one of {SUPPORTED_PRE})")
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
    types = _gguf_types(meta, source, len(tokens))
    backend = HFTokenizer(models.BPE(vocab=vocab, merges=pairs, ignore_merges=True, fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    added = [
        AddedToken(tokens[i], special=bool(types[i] == TOKEN_CONTROL), normalized=False)
        for i in np.flatnonzero((types == TOKEN_CONTROL) | (types == TOKEN_USER_DEFINED))
    ]
    backend.add_special_tokens(added)
    return Tokenizer(backend)


def sentencepiece_model_tokenizer(path: str | Path) -> Tokenizer:
    """A SentencePiece ``tokenizer.model`` (needs the ``sentencepiece`` package) as a :class:`Tokenizer`."""
    try:
        import sentencepiece
    except ImportError:
        raise TokenizerError(f"{path}: reading a SentencePiece tokenizer.model needs the sentencepiece package "
                             "(pip install sentencepiece), or give a tokenizer.json") from None
    sp = sentencepiece.SentencePieceProcessor()
    try:
        sp.Load(str(path))
    except (OSError, RuntimeError) as e:
        raise TokenizerError(f"{path}: cannot load SentencePiece model ({e})") from None
    n = sp.GetPieceSize()
    pieces = [sp.IdToPiece(i) for i in range(n)]
    scores = np.array([sp.GetScore(i) for i in range(n)])
    types = np.array([TOKEN_UNKNOWN if sp.IsUnknown(i) else TOKEN_CONTROL if sp.IsControl(i) else
                      TOKEN_BYTE if sp.IsByte(i) else TOKEN_UNUSED if sp.IsUnused(i) else TOKEN_NORMAL
                      for i in range(n)])
    bos, eos = sp.bos_id(), sp.eos_id()
    return Tokenizer(sentencepiece_backend(pieces, scores, types, str(path)), bos if bos >= 0 else None,
                     (eos,) if eos >= 0 else ())


def _chat_template(path: Path, tokenizer_config: dict) -> str | None:
    """The chat template of a directory: ``chat_template.jinja`` or ``tokenizer_config.json``'s."""
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if template is not None and not isinstance(template, str):
        raise TokenizerError(f"{path / 'tokenizer_config.json'}: chat_template must be a string or named templates")
    return template


def _token_text(value) -> str | None:
    """A special token of ``tokenizer_config.json``: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def tokenizer_from_hf_directory(path: str | Path, config: ModelConfig | None) -> Tokenizer | None:
    """The tokenizer of a transformers directory (``tokenizer.json``, else a SentencePiece
    ``tokenizer.model``), with ``tokenizer_config.json``'s chat template and special tokens; None if none."""
    path = Path(path)
    if (path / "tokenizer.json").is_file():
        tok = _from_json(path / "tokenizer.json", config)
    elif (path / "tokenizer.model").is_file():
        tok = sentencepiece_model_tokenizer(path / "tokenizer.model")
        if config is not None:
            tok.bos_id, tok.eos_ids = config.bos_token_id, config.eos_token_ids
    else:
        return None
    tc_file = path / "tokenizer_config.json"
    tc = {}
    if tc_file.is_file():
        from bitnet_jax.io.hf import load_hf_config_file

        tc = load_hf_config_file(tc_file)
    tok.chat_template = _chat_template(path, tc)
    tok.special_tokens = {
        "bos_token": _token_text(tc.get("bos_token")) or tok.token_text(tok.bos_id),
        "eos_token": _token_text(tc.get("eos_token")) or tok.token_text(tok.eos_ids[0] if tok.eos_ids else None),
    }
    return tok


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
        tok = tokenizer_from_hf_directory(path, config)
        if tok is not None:
            return tok
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) != 1:
            raise TokenizerError(f"{path}: no tokenizer.json / tokenizer.model and not exactly one .gguf file")
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
    if path.suffix == ".model":
        return sentencepiece_model_tokenizer(path)
    return _from_json(path, None)
