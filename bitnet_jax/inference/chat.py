"""The BitNet b1.58 chat format (microsoft/BitNet): role-prefixed turns closed by ``<|eot_id|>``.

``<|begin_of_text|>System: ...<|eot_id|>User: ...<|eot_id|>Assistant: `` -- the generation prompt ends
with ``Assistant: ``; generation stops on ``<|eot_id|>`` or ``<|end_of_text|>``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from bitnet_jax.errors import GenerationError

BOS = "<|begin_of_text|>"
EOT = "<|eot_id|>"
END_OF_TEXT = "<|end_of_text|>"
ROLES = {"system": "System: ", "user": "User: ", "assistant": "Assistant: "}


def format_chat(messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True) -> str:
    """The prompt text for ``messages`` (each ``{"role": system|user|assistant, "content": str}``)."""
    parts = [BOS]
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in ROLES:
            raise GenerationError(f"messages[{i}].role must be one of {sorted(ROLES)}, got {role!r}")
        content = m.get("content")
        if not isinstance(content, str):
            raise GenerationError(f"messages[{i}].content must be a string")
        parts.append(ROLES[role] + content + EOT)
    if add_generation_prompt:
        parts.append(ROLES["assistant"])
    return "".join(parts)


def stop_token_ids(tokenizer: Any, config: Any = None) -> tuple[int, ...]:
    """Ids that end an assistant turn: ``<|eot_id|>``, ``<|end_of_text|>`` and the config's EOS ids."""
    ids = [tokenizer.token_to_id(t) for t in (EOT, END_OF_TEXT)]
    ids += list(getattr(tokenizer, "eos_ids", ()) or ())
    if config is not None:
        ids += list(config.eos_token_ids)
    return tuple(dict.fromkeys(i for i in ids if i is not None))


def encode_chat(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """Token ids of the chat prompt (``<|begin_of_text|>`` included once, as a special token)."""
    return tokenizer.encode(format_chat(messages))
