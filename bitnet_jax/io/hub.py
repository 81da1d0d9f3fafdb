"""Hugging Face Hub ids as model paths: ``org/name``, ``org/name:file.gguf`` (or ``filename=``).

:func:`resolve` turns an id into a local path through ``huggingface_hub``: the local cache first (the
layout ``models--org--name/snapshots/<rev>/...`` under ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``), a
download only when the cache lacks the files and the Hub may be reached. ``HF_HUB_OFFLINE=1`` or
``local_files_only=True`` never touch the network. A transformers repository comes down as its config,
tokenizer and safetensors files; a GGUF repository as its one GGUF file (or the one named). When the id
is neither cached nor reachable the error is one line naming it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

from bitnet_jax.errors import CheckpointError

# what a transformers checkpoint directory needs (no .bin, no .gguf: those come one file at a time)
HF_PATTERNS = ("config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
               "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
               "chat_template.jinja")
_REPO = r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}"
HUB_ID = re.compile(rf"^({_REPO})(?::([^\s:]+))?$")
_TRUE = ("1", "on", "yes", "true")


def is_hub_id(spec: str) -> bool:
    """Whether ``spec`` reads as ``org/name`` or ``org/name:file`` (the caller checks local paths first)."""
    return bool(HUB_ID.match(spec)) and not spec.startswith((".", "/", "~"))


def offline() -> bool:
    """``HF_HUB_OFFLINE`` as set now (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def cache_dir() -> Path:
    """The hub cache directory as the environment says now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home).expanduser() / "hub"


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300] or type(e).__name__


def _fetch(spec: str, get: Callable[[bool], str], local_only: bool, complete: Callable[[Path], bool]) -> Path:
    """``get(local_files_only)``: from the cache first, then (when allowed) from the Hub."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        found = Path(get(True))
        if complete(found) or local_only:
            return found
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        if local_only:
            why = "HF_HUB_OFFLINE is set" if offline() else "local_files_only=True"
            raise CheckpointError(f"{spec}: not in the local Hugging Face cache ({cache_dir()}) and {why}") from None
    try:
        return Path(get(False))
    except Exception as e:  # noqa: BLE001 -- network, auth and not-found errors all become one line
        raise CheckpointError(f"{spec}: neither in the local Hugging Face cache ({cache_dir()}) nor downloadable "
                              f"from the Hub ({_one_line(e)})") from None


def _has_weights(path: Path) -> bool:
    return (path / "config.json").is_file() and (
        (path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file())


def resolve(spec: str, filename: str | None = None, revision: str | None = None,
            local_files_only: bool = False) -> Path:
    """The local path of hub id ``spec`` (a snapshot directory, or one GGUF file); see the module doc."""
    import huggingface_hub as hub

    match = HUB_ID.match(spec)
    if match is None:
        raise CheckpointError(f"{spec!r} is not a Hugging Face id (org/name or org/name:file.gguf)")
    repo, file_part = match.group(1), match.group(2)
    if filename and file_part and filename != file_part:
        raise CheckpointError(f"{spec}: names file {file_part!r} and filename={filename!r}; give one")
    filename = filename or file_part
    local_only = local_files_only or offline()
    kw = dict(revision=revision, cache_dir=str(cache_dir()))
    if filename:
        return _fetch(spec, lambda lo: hub.hf_hub_download(repo, filename, local_files_only=lo, **kw),
                      local_only, lambda p: p.is_file())
    snap = _fetch(spec, lambda lo: hub.snapshot_download(repo, allow_patterns=list(HF_PATTERNS),
                                                        local_files_only=lo, **kw),
                  local_only, lambda p: _has_weights(p) or any(p.glob("*.gguf")))
    if (snap / "config.json").is_file():
        return snap
    if local_only:
        ggufs = sorted(p.name for p in snap.glob("*.gguf"))
    else:
        try:
            ggufs = sorted(f for f in hub.list_repo_files(repo, revision=revision) if f.endswith(".gguf"))
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{spec}: cannot list the repository's files ({_one_line(e)})") from None
    if len(ggufs) != 1:
        what = f"several GGUF files ({', '.join(ggufs[:6])})" if ggufs else "no config.json and no GGUF file"
        raise CheckpointError(f"{spec}: the repository holds {what}; name one as {repo}:FILE.gguf or with filename=")
    return resolve(repo, ggufs[0], revision, local_files_only)
