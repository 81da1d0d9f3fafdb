"""The one atomic-write helper: write under a temporary sibling name, then rename into place.

A reader never sees a half-written file or directory: either the old one or the new one. On any
failure (an exception, Ctrl-C, a full disk, a read-only target) the temporary is removed, the old
output is left untouched and the error is a :class:`CheckpointError` naming the path.

Model outputs (``kind="hf"`` or ``"gguf"``) never replace what the user did not ask to replace: an
existing path that is not a model of that kind (a project folder, a text file, a directory where a
GGUF file should go) is refused, and an existing model is replaced only with ``overwrite=True``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from bitnet_jax.errors import CheckpointError

# What a model directory we (or transformers) wrote holds: anything else in it is the user's.
MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".model", ".jinja", ".md", ".gitattributes")
GGUF_MAGIC = b"GGUF"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _ordinary_permissions(root: Path) -> None:
    """Files under ``root`` to 0666 & ~umask, folders to 0777 & ~umask (what open() and mkdir() give)."""
    mask = _umask()
    for entry in root.rglob("*"):
        if entry.is_symlink():
            continue
        os.chmod(entry, (0o777 if entry.is_dir() else 0o666) & ~mask)


def is_model_directory(path: Path) -> bool:
    """Whether ``path`` is a transformers model directory: ``config.json`` plus weights, and only model files."""
    try:
        entries = list(path.iterdir())
    except OSError:
        return False
    names = {e.name for e in entries}
    if "config.json" not in names or not any(n.endswith(".safetensors") for n in names):
        return False
    return all(e.is_file() and not e.is_symlink() and (e.name.endswith(MODEL_FILE_SUFFIXES)) for e in entries)


def is_gguf_file(path: Path) -> bool:
    """Whether ``path`` is a regular file starting with the GGUF magic."""
    try:
        with open(path, "rb") as f:
            return path.is_file() and f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def check_output(path: str | Path, kind: str, overwrite: bool = False) -> None:
    """Refuse to write a ``kind`` (``hf`` directory or ``gguf`` file) model onto ``path`` when that would
    replace something that is not such a model, or a model without ``overwrite``."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if kind == "hf":
        if path.is_symlink() or not path.is_dir():
            raise CheckpointError(f"{path}: exists and is not a directory; refusing to replace it with a model "
                                  "directory (choose another output path)")
        try:
            empty = not any(path.iterdir())
        except OSError as e:
            raise CheckpointError(f"{path}: cannot read the existing directory ({e.strerror or e})") from None
        if empty:
            return
        if not is_model_directory(path):
            raise CheckpointError(f"{path}: exists and holds files that are not a model's; refusing to replace it "
                                  "(choose a new or empty directory)")
    else:
        if path.is_dir():
            raise CheckpointError(f"{path}: is a directory; a GGUF output must be a file path (e.g. {path}/model.gguf)")
        if not is_gguf_file(path):
            raise CheckpointError(f"{path}: exists and is not a GGUF file; refusing to replace it "
                                  "(choose another output path)")
    if not overwrite:
        raise CheckpointError(f"{path}: a model already exists there; pass --overwrite (overwrite=True) to replace it")


def _io_error(path: Path, e: OSError) -> CheckpointError:
    return CheckpointError(f"{path}: cannot write ({e.strerror or e})")


@contextlib.contextmanager
def atomic_output(path: str | Path, *, directory: bool = False, kind: str | None = None,
                  overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` to write (a file, or with ``directory`` a new directory);
    when the block completes it replaces ``path``. ``kind`` (``hf``/``gguf``) applies :func:`check_output`."""
    path = Path(path)
    if kind is not None:
        check_output(path, kind, overwrite)
    elif directory and path.exists() and not path.is_dir():
        raise CheckpointError(f"{path}: exists and is not a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if directory:
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        else:
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            tmp = Path(name)
        # tempfile makes private (0600 / 0700) entries; the output gets the permissions open() would give
        os.chmod(tmp, (0o777 if directory else 0o666) & ~_umask())
    except OSError as e:
        raise _io_error(path, e) from None
    try:
        try:
            yield tmp
            if directory:  # what writers made inside (safetensors writes 0600) gets the ordinary permissions too
                _ordinary_permissions(tmp)
            if directory and path.exists():
                _swap_directory(tmp, path)
            else:
                os.replace(tmp, path)
        except OSError as e:
            raise _io_error(path, e) from None
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def _swap_directory(tmp: Path, path: Path) -> None:
    """Replace directory ``path`` by ``tmp``: the old one is moved aside, then removed (restored on failure)."""
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
    try:
        os.replace(path, aside / path.name)
        try:
            os.replace(tmp, path)
        except OSError:
            os.replace(aside / path.name, path)
            raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
