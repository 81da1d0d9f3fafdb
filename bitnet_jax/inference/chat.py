"""Chat prompts: the checkpoint's own chat template where it has one, the BitNet b1.58 format otherwise.

A tokenizer's ``chat_template`` (``tokenizer_config.json`` / ``chat_template.jinja`` / GGUF
``tokenizer.chat_template``) is rendered with jinja2 in a sandbox, as transformers renders it
(``messages``, ``add_generation_prompt``, ``bos_token``, ``eos_token``, ``raise_exception``).
Without one, the BitNet format (microsoft/BitNet):
``<|begin_of_text|>System: ...<|eot_id|>User: ...<|eot_id|>Assistant: `` -- the generation prompt ends
with ``Assistant: ``. Generation stops on the family's end-of-turn tokens (``<|eot_id|>``,
``<|im_end|>``, ...), ``<|end_of_text|>`` and every EOS id of the config.

In the BitNet format token ids are built piece by piece (:func:`encode_conversation`): the begin and
end-of-turn tokens are inserted by id, and each assistant reply is tokenized apart from the
``Assistant: `` before it, exactly as a generation prompt ends there, so training (chat SFT, loss on the
reply tokens) and generation see the same tokens. A tokenizer without ``<|begin_of_text|>`` /
``<|eot_id|>`` (the bundled default model's byte-level BPE) uses its own BOS and first EOS token.
"""

from __future__ import annotations

import datetime
import json
from typing import Any, Mapping, Sequence

from bitnet_jax.errors import GenerationError

BOS = "<|begin_of_text|>"
EOT = "<|eot_id|>"
END_OF_TEXT = "<|end_of_text|>"
ROLES = {"system": "System: ", "user": "User: ", "assistant": "Assistant: "}


def _check(messages: Sequence[Mapping[str, str]], roles: Sequence[str] | None) -> None:
    for i, m in enumerate(messages):
        role = m.get("role")
        if not isinstance(role, str) or (roles is not None and role not in roles):
            raise GenerationError(f"messages[{i}].role must be one of {sorted(roles or ROLES)}, got {role!r}")
        if not isinstance(m.get("content"), str):
            raise GenerationError(f"messages[{i}].content must be a string")


def render_chat_template(template: str, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True,
                         special_tokens: Mapping[str, str | None] | None = None) -> str:
    """A Jinja chat template rendered for ``messages`` in jinja2's sandbox (errors name the template)."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise jinja2.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False: json.dumps(x, indent=indent,
                                                                                  ensure_ascii=ensure_ascii)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    tokens = {k: v for k, v in (special_tokens or {}).items() if v is not None}
    try:
        return env.from_string(template).render(messages=[dict(m) for m in messages],
                                                add_generation_prompt=add_generation_prompt, **tokens)
    except jinja2.TemplateError as e:
        raise GenerationError(f"chat template: {' '.join(str(e).split())}") from None


def format_chat(messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True, tokenizer: Any = None) -> str:
    """The prompt text for ``messages`` (each ``{"role": ..., "content": str}``): ``tokenizer``'s chat
    template when it has one, else the BitNet format (roles system | user | assistant), written with
    ``tokenizer``'s own begin and end-of-turn tokens (:func:`chat_special_ids`) when it is given, so that
    ``tokenizer.encode(format_chat(...))`` reads them as special tokens."""
    template = getattr(tokenizer, "chat_template", None)
    if template:
        _check(messages, None)
        return render_chat_template(template, messages, add_generation_prompt, getattr(tokenizer, "special_tokens", {}))
    _check(messages, tuple(ROLES))
    begin, end = BOS, EOT
    if hasattr(tokenizer, "token_to_id") and hasattr(tokenizer, "token_text"):  # a vocabulary: its own special
        # tokens, so the text encodes as encode_chat does
        begin_id, end_id = chat_special_ids(tokenizer)
        begin = "" if begin_id is None else tokenizer.token_text(begin_id)
        end = tokenizer.token_text(end_id)
    parts = [begin] + [ROLES[m["role"]] + m["content"] + end for m in messages]
    if add_generation_prompt:
        parts.append(ROLES["assistant"])
    return "".join(parts)


def stop_token_ids(tokenizer: Any, config: Any = None) -> tuple[int, ...]:
    """Ids that end an assistant turn: the tokenizer's end-of-turn tokens (``<|eot_id|>``, ...),
    ``<|end_of_text|>``, its EOS ids and the config's."""
    ids = [tokenizer.token_to_id(t) for t in (EOT, END_OF_TEXT)]
    ids += list(getattr(tokenizer, "eos_ids", ()) or ())
    if hasattr(tokenizer, "end_of_turn_ids"):
        ids += list(tokenizer.end_of_turn_ids())
    if config is not None:
        ids += list(config.eos_token_ids)
    return tuple(dict.fromkeys(i for i in ids if i is not None))


def chat_special_ids(tokenizer: Any) -> tuple[int | None, int]:
    """(begin-of-text id or None, end-of-turn id): ``<|begin_of_text|>`` / ``<|eot_id|>`` when the vocabulary
    has them, else the tokenizer's BOS and first EOS id."""
    begin = tokenizer.token_to_id(BOS)
    if begin is None:
        begin = getattr(tokenizer, "bos_id", None)
    end = tokenizer.token_to_id(EOT)
    if end is None:
        eos = tuple(getattr(tokenizer, "eos_ids", ()) or ())
        if not eos:
            raise GenerationError(f"the tokenizer has no {EOT} and no EOS token to end a chat turn with")
        end = eos[0]
    return begin, end


def encode_conversation(
    tokenizer: Any, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False
) -> tuple[list[int], list[bool]]:
    """Token ids of a conversation and, per token, whether it belongs to an assistant reply (its content
    and the end-of-turn token closing it): the tokens chat SFT trains on."""
    format_chat(messages, add_generation_prompt)  # checks roles and contents
    begin, end = chat_special_ids(tokenizer)
    ids: list[int] = [] if begin is None else [begin]
    mask: list[bool] = [False] * len(ids)

    def add(new: list[int], trained: bool) -> None:
        ids.extend(new)
        mask.extend([trained] * len(new))

    for m in messages:
        reply = m["role"] == "assistant"
        if reply:
            add(tokenizer.encode(ROLES["assistant"]), False)
            add(tokenizer.encode(m["content"]) + [end], True)
        else:
            add(tokenizer.encode(ROLES[m["role"]] + m["content"]) + [end], False)
    if add_generation_prompt:
        add(tokenizer.encode(ROLES["assistant"]), False)
    return ids, mask


def encode_chat(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """Token ids of the chat prompt: the tokenizer's chat template rendered (its BOS text, if any, read as
    a special token), else the BitNet format (begin-of-text once, turns closed by end-of-turn,
    ``Assistant: `` last)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.encode(format_chat(messages, tokenizer=tokenizer))
    return encode_conversation(tokenizer, messages, add_generation_prompt=True)[0]
