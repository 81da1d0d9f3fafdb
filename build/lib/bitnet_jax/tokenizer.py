"""A thin tokenizer wrapper over the ``tokenizers`` library: encode/decode with explicit BOS handling."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import Tokenizer as HFTokenizer

from bitnet_jax.config import ModelConfig
from bitnet_jax.errors import CheckpointError


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
            raise CheckpointError(f"{path}: cannot load tokenizer ({e})") from None
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
                raise ValueError("add_bos=True but this tokenizer has no BOS token id")
            ids = [self.bos_id, *ids]
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        """The id of a token string, or None."""
        return self.backend.token_to_id(token)
