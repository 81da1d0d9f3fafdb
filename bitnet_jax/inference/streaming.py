"""Incremental detokenization that never emits half a UTF-8 character."""

from __future__ import annotations

REPLACEMENT = "\ufffd"


class IncrementalDecoder:
    """Feed token ids one at a time; ``push`` returns only text that is final.

    Text is decoded from all ids since the last emitted boundary; a trailing replacement character
    (an incomplete UTF-8 sequence) is held back until more ids complete it.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = 0  # characters of decode(self.ids) already returned

    def push(self, token_id: int) -> str:
        """Add one id; return the newly completed text (possibly empty)."""
        self.ids.append(int(token_id))
        text = self.tokenizer.decode(self.ids)
        if text.endswith(REPLACEMENT):
            return ""
        new = text[self.emitted :]
        self.emitted = len(text)
        return new

    def flush(self) -> str:
        """Return whatever is left, incomplete characters included."""
        text = self.tokenizer.decode(self.ids)
        new = text[self.emitted :]
        self.emitted = len(text)
        return new
