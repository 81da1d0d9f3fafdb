"""``from_pretrained``: one entry point that detects a checkpoint's format and loads it packed for the
kernel chosen once for the model (:func:`pallas_kernels.select_kernel`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import struct
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bitnet_jax._memory import advise_random, drop_file_cache, release_host_memory
from bitnet_jax.errors import BitNetError, CheckpointError
from bitnet_jax.io.checkpoint import ALIGN, Checkpoint, aligned_empty, checkpoint_to_params
from bitnet_jax.model import BitNetModel, Form, stack_layers
from bitnet_jax.model.head import row_read_tables, wants_screen, with_head_screen
from bitnet_jax.model.scan import LAYERS, layers_alike
from pallas_kernels import Kernel, select_kernel

GGUF_MAGIC = b"GGUF"
PACKED_CACHE_ENV = "BITNET_JAX_PACKED_CACHE"  # a directory, or "0" / "off" to disable the cache
PACKED_CACHE_MIN_BYTES = 256 << 20
"""Checkpoints at least this large are cached by default (smaller ones decode in well under a second)."""
PACKED_CACHE_FORMAT = 2  # 2: the head screen in the CPU kernel's group16 layout
ADOPT_BYTES = 1 << 20  # host leaves at least this large are adopted by the CPU device (no copy)
SCAN_MIN_LAYERS = 2
"""``scan_layers=None`` scans models of at least this many layers when the kernel reads a stacked layer in
place: one compiled layer body instead of one per layer (on CPU, for 2B4T: the same decode speed, a faster
prefill, a quarter of the compile time and ~150 MB less memory per compiled program; for the bundled
4-layer model: 2.0-2.4 s to compile a generation program instead of 2.8-3.7 s, decode as fast)."""


def detect_format(path: Path) -> str:
    """``"hf"`` for a transformers directory, ``"gguf"`` for a GGUF file; else a clear error."""
    if path.is_dir():
        if (path / "config.json").is_file():
            return "hf"
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return "gguf"
        raise CheckpointError(f"{path}: not a model directory (no config.json, and not exactly one .gguf file)")
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == GGUF_MAGIC:
        return "gguf"
    raise CheckpointError(f"{path}: unrecognised model file (not a GGUF file and not a transformers directory)")


def local_path(path: str | Path, filename: str | None = None) -> Path:
    """``path`` itself when it exists here, else a Hugging Face id resolved through the local cache /
    the Hub (:mod:`bitnet_jax.io.hub`); ``filename`` picks a file in a directory or a hub repository."""
    local = Path(path).expanduser()
    if not local.exists():
        from bitnet_jax.io import hub

        if hub.is_hub_id(str(path)):
            return hub.resolve(str(path), filename)
    return local / filename if filename else local


def read_checkpoint(path: str | Path, filename: str | None = None, i2_s_layout: str = "x86") -> Checkpoint:
    """Read any supported checkpoint format (a path or a hub id) into a format-neutral :class:`Checkpoint`.

    ``i2_s_layout`` names the bitnet.cpp build that wrote a GGUF's I2_S tensors (``x86``, ``arm``, ``x86-1x4``).
    """
    path = local_path(path, filename)
    try:
        fmt = detect_format(path)
        if fmt == "hf":
            from bitnet_jax.io.hf import read_hf_checkpoint

            return read_hf_checkpoint(path)
        from bitnet_jax.io.gguf import read_gguf_checkpoint

        if path.is_dir():
            path = next(iter(sorted(path.glob("*.gguf"))))
        return read_gguf_checkpoint(path, i2_s_layout)
    except BitNetError:
        raise
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError, UnicodeError, RecursionError,
            OverflowError, struct.error) as e:
        # a malformed file that slipped past the format's own checks: still one line naming the file
        raise CheckpointError(f"{path}: malformed checkpoint ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
                              ) from None


def _to_device(tree: Any) -> Any:
    """Every NumPy leaf of ``tree`` as a device array (see :func:`_leaves_to_device`)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return jax.tree_util.tree_unflatten(treedef, _leaves_to_device(leaves))


def _leaves_to_device(leaves: list) -> list:
    """The list's NumPy leaves replaced, one at a time and in place, by device arrays.

    A large leaf is moved into a 64-byte aligned host buffer (unless it already is one), which the CPU
    client then adopts without a copy (``jax.device_put``); small leaves are copied. When the list holds
    the only reference to its leaves, each host array is freed as soon as its device array exists, so
    the loader's peak memory stays at the model plus one tensor instead of two models.
    """
    cpu = jax.default_backend() == "cpu"
    for i in range(len(leaves)):
        leaf = leaves[i]
        if cpu and isinstance(leaf, np.ndarray) and leaf.nbytes >= ADOPT_BYTES:
            if leaf.ctypes.data % ALIGN or not leaf.flags.c_contiguous or not leaf.flags.writeable:
                host = aligned_empty(leaf.shape, leaf.dtype)
                np.copyto(host, leaf)
                leaf = host
            leaves[i] = jax.device_put(leaf).block_until_ready()
        else:
            leaves[i] = jnp.asarray(leaf).block_until_ready()
        del leaf
    return leaves


def resolve_scan_layers(scan_layers: bool | None, num_layers: int, kernel: Kernel) -> bool:
    """``scan_layers`` itself, or for ``None`` whether to scan: a model of at least :data:`SCAN_MIN_LAYERS`
    layers on a kernel that reads one layer of a weight stack in place (else each step would copy it)."""
    if scan_layers is None:
        return num_layers >= SCAN_MIN_LAYERS and kernel.stacked_fn is not None
    return bool(scan_layers)


def model_from_checkpoint(
    ckpt: Checkpoint, kernel: Kernel | None = None, scan_layers: bool | None = False, to_device: bool = True,
    consume: bool = False,
) -> BitNetModel:
    """Turn a :class:`Checkpoint` into a packed :class:`BitNetModel` for ``kernel`` (default: selected).

    The embedding (and an untied head) are stored in the activation dtype for a bfloat16 model, and for
    a float32 model in bfloat16 when that holds every value exactly (else float32): either way the
    exact head multiplies by the table's own values, and a bfloat16 table halves the bytes each decoded
    token reads (:func:`~bitnet_jax.io.checkpoint.float_tensor`). ``scan_layers``
    stacks the layers' parameters for a model that compiles one layer body (``None``: decided by
    :func:`resolve_scan_layers`, unrolled where the layers differ). ``to_device=False`` keeps
    NumPy leaves (for conversions that never compute). ``consume=True`` frees ``ckpt``'s tensors as they
    are converted (``ckpt`` is unusable afterwards): the load's peak memory stays near the model's size.
    """
    kernel = kernel or select_kernel()
    params = checkpoint_to_params(ckpt, kernel, consume=consume)
    layers = ckpt.config.num_hidden_layers
    if scan_layers is None:
        scan_layers = resolve_scan_layers(None, layers, kernel) and layers_alike(params, layers)
    if scan_layers:
        params = stack_layers(params, layers, consume=True)  # params is this function's own tree
    if to_device:  # the flat list becomes the only holder of the host leaves: each is freed once moved
        leaves, treedef = jax.tree_util.tree_flatten(params)
        del params
        params = jax.tree_util.tree_unflatten(treedef, _leaves_to_device(leaves))
    return BitNetModel(ckpt.config, params, ckpt.tokenizer, form=Form(kernel=kernel, scan_layers=scan_layers))


def packed_cache_dir() -> Path | None:
    """Where packed-layout caches live: ``$BITNET_JAX_PACKED_CACHE`` (``0``/``off`` disables), else
    ``$XDG_CACHE_HOME/bitnet_jax/packed`` (``~/.cache/bitnet_jax/packed``)."""
    env = os.environ.get(PACKED_CACHE_ENV)
    if env is not None and env.strip().lower() in ("0", "off", "false", "no", ""):
        return None
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "bitnet_jax" / "packed"


def _source_key(path: Path, **options: Any) -> str:
    """A key naming the checkpoint's bytes (every file's path, size and mtime) and the load options."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    blob = json.dumps({"format": PACKED_CACHE_FORMAT, "files": stats, **options}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _checkpoint_bytes(path: Path) -> int:
    """The size of a checkpoint file, or of every file in a checkpoint directory."""
    try:
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    except OSError:
        return 0


def _row_read_leaves(params: dict, config: Any) -> list[bool]:
    """For each leaf of ``params`` (flattening order), whether decoding reads only a few rows of it."""
    names = set(row_read_tables(params, config.tie_word_embeddings))
    paths, _ = jax.tree_util.tree_flatten_with_path(params)
    return [getattr(path[0], "key", None) in names for path, _ in paths]


def _save_packed(entry: Path, model: BitNetModel) -> None:
    """Write ``model``'s parameters (one ``.npy`` per leaf) and its config/tokenizer into ``entry``.

    The files of tables read a few rows at a time leave the page cache once written
    (:func:`~bitnet_jax._memory.drop_file_cache`): a later load maps them and reads in only the rows it uses.
    """
    from bitnet_jax.io._atomic import atomic_output

    leaves, treedef = jax.tree_util.tree_flatten(model.params)
    row_read = _row_read_leaves(model.params, model.config)
    entry.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(entry, directory=True) as tmp:
        dtypes = []
        for i, leaf in enumerate(leaves):
            arr = np.asarray(leaf)
            dtypes.append(str(arr.dtype))
            if arr.dtype.kind == "V" or arr.dtype == jnp.bfloat16:  # .npy has no bfloat16: store the bits
                arr = arr.view(np.uint16)
            np.save(tmp / f"{i}.npy", arr)
            if row_read[i]:
                drop_file_cache(tmp / f"{i}.npy")
        with open(tmp / "model.pkl", "wb") as f:
            pickle.dump({"config": model.config, "tokenizer": model.tokenizer, "treedef": treedef,
                         "dtypes": dtypes}, f)


def _load_packed(entry: Path, kernel: Kernel) -> BitNetModel | None:
    """The model cached in ``entry`` (leaves memory-mapped copy-on-write and adopted without a copy),
    or None when the entry is unreadable. Tables read a few rows at a time are mapped for random reads."""
    try:
        with open(entry / "model.pkl", "rb") as f:
            meta = pickle.load(f)
        leaves = [np.load(entry / f"{i}.npy", mmap_mode="c").view(jnp.dtype(dt)) for i, dt in enumerate(meta["dtypes"])]
        tree = jax.tree_util.tree_unflatten(meta["treedef"], leaves)
        for leaf, row_read in zip(leaves, _row_read_leaves(tree, meta["config"])):
            if row_read:
                advise_random(leaf)
    except (OSError, ValueError, TypeError, EOFError, pickle.UnpicklingError, KeyError, AttributeError, ImportError):
        return None
    params = _to_device(tree)
    scanned = LAYERS in params  # the entry was written from a stacked model (scan_layers=None may give either)
    return BitNetModel(meta["config"], params, meta["tokenizer"], form=Form(kernel=kernel, scan_layers=scanned))


def _read_with_dtype(path: str | Path, dtype: str | None, **read: Any) -> Checkpoint:
    ckpt = read_checkpoint(path, **read)
    if dtype is not None:
        ckpt = dataclasses.replace(ckpt, config=ckpt.config.replace(dtype=dtype))
    return ckpt


def from_pretrained(
    path: str | Path, *, dtype: str | None = None, kernel: str | Kernel | None = None, scan_layers: bool | None = None,
    filename: str | None = None, i2_s_layout: str = "x86", packed_cache: bool | None = None,
    head_screen: bool | None = None,
) -> BitNetModel:
    """Load a BitNet b1.58 model of any family (transformers directory, GGUF file, or a Hugging Face id
    such as ``microsoft/bitnet-b1.58-2B-4T`` / ``org/name:file.gguf``), ternary weights kept packed.

    A hub id is looked up in the local cache first (``HF_HUB_OFFLINE=1`` never goes online); ``filename``
    names the GGUF file of a repository; ``i2_s_layout`` the bitnet.cpp build that wrote I2_S tensors.

    ``kernel`` names the ternary-matmul backend (default: ``$BITNET_JAX_KERNEL``, else the platform's;
    see :func:`pallas_kernels.select_kernel`); the weights are packed in its layout. ``dtype``
    overrides the activation dtype (``"float32"`` or ``"bfloat16"``). ``scan_layers=True`` compiles one
    layer body instead of one per layer (same outputs, much less compiled code); the default ``None``
    scans models of at least :data:`SCAN_MIN_LAYERS` layers on a kernel that reads a stacked layer in
    place (the CPU kernel), see :func:`resolve_scan_layers`. The checkpoint's host
    copies are freed (and the freed heap returned to the OS) before this returns.

    ``packed_cache`` (default ``None``: on for checkpoints of at least 256 MiB, where decoding and
    repacking takes seconds; ``True``/``False`` force it): the parameters in the kernel's layout are kept on disk in
    :func:`packed_cache_dir` (``$BITNET_JAX_PACKED_CACHE``; ``0`` disables it), keyed by the files'
    paths, sizes and modification times and the load options; a later load of the same checkpoint
    memory-maps them instead of decoding and repacking (seconds for the 2B4T model). Delete the
    directory to reclaim the space.

    ``head_screen`` (default ``None``: on where :func:`~bitnet_jax.model.head.wants_screen` says it pays,
    as for the 2B4T model on an AVX-512 VNNI CPU): keep an int8 copy of the exact head's table that greedy
    decoding reads instead of the float table (:func:`~bitnet_jax.model.head.with_head_screen`): the
    same tokens, about half the bytes per decoded token; logits are unchanged.

    >>> import bitnet_jax as bj
    >>> model = bj.from_pretrained(bj.DEFAULT_MODEL)
    >>> model.config.num_hidden_layers
    4
    """
    chosen = kernel if isinstance(kernel, Kernel) else select_kernel(kernel)
    cache = packed_cache_dir() if packed_cache is not False else None
    entry = None
    if cache is not None:
        source = local_path(path, filename)
        if source.exists() and (packed_cache or _checkpoint_bytes(source) >= PACKED_CACHE_MIN_BYTES):
            entry = cache / _source_key(source, kernel=chosen.name, layout=chosen.layout.name, dtype=dtype,
                                        scan_layers=scan_layers, i2_s_layout=i2_s_layout, head_screen=head_screen)
            if entry.is_dir():
                model = _load_packed(entry, chosen)
                if model is not None:
                    return model
    # no local name holds the checkpoint: it is freed as soon as the conversion returns
    model = model_from_checkpoint(_read_with_dtype(path, dtype, filename=filename, i2_s_layout=i2_s_layout),
                                  chosen, scan_layers, consume=True)
    if head_screen or (head_screen is None and wants_screen(model)):
        model = with_head_screen(model)
    release_host_memory()
    if entry is not None:
        try:
            _save_packed(entry, model)
        except OSError as e:  # a read-only or full cache directory: loading still succeeded
            import warnings

            warnings.warn(f"bitnet-jax: could not write the packed-layout cache {entry}: {e}", RuntimeWarning,
                          stacklevel=2)
    return model
