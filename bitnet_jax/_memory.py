"""Host memory hygiene: hand freed heap pages back to the operating system."""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path
from typing import Any

import numpy as np


def release_host_memory() -> None:
    """Return freed heap pages to the OS (glibc keeps a loader's or compiler's freed temporaries mapped
    otherwise: after XLA compiles the 2B4T shape, about 1.4 GB of the process's RSS is such pages)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)  # the process's own symbols: glibc when it is there
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _memmap_root(view: np.ndarray) -> np.memmap | None:
    """The ``np.memmap`` made over the map itself under ``view`` (slices of a memmap are memmaps too)."""
    root: Any = view
    while root is not None and not (isinstance(root, np.memmap) and isinstance(root.base, mmap.mmap)):
        root = getattr(root, "base", None)
    return root


def release_pages(view: np.ndarray) -> None:
    """Drop the pages of a memory-mapped file that ``view`` covers from this process's memory.

    For a view into a read-only ``np.memmap`` (a GGUF tensor that has been decoded or copied): the pages
    wholly inside it leave the resident set at once instead of when the map closes, so a loader that
    reads a file tensor by tensor holds one tensor's pages at a time. Touching the view again reads
    the file again. Anything else (a copy, a writable map, a non-contiguous view) is left alone.
    """
    root = _memmap_root(view)
    if root is None or root.mode != "r" or not view.flags.c_contiguous or not hasattr(root.base, "madvise"):
        return
    handle = root.base
    start = view.ctypes.data - (root.ctypes.data - root.offset % mmap.ALLOCATIONGRANULARITY)
    first, last = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE, (start + view.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    if last > first:
        handle.madvise(mmap.MADV_DONTNEED, first, last - first)


def drop_file_cache(path: str | Path) -> None:
    """Write ``path``'s pages to disk and drop them from the page cache.

    For a file that readers memory-map and read a few rows at a time (the head table of a packed-layout
    cache): freshly written, its pages sit in the page cache in large folios (2 MB on Linux 6.x ext4),
    and one byte read through a mapping maps the whole folio, so a few hundred row reads make the whole
    file resident. Dropped, each read brings in only the pages it touches. Best effort: nothing happens
    where the platform lacks ``posix_fadvise``.
    """
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages cannot be dropped
        advise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def advise_random(view: np.ndarray) -> None:
    """Tell the kernel that the file mapping under ``view`` (an ``np.load(..., mmap_mode=...)`` array) is
    read at random: a page fault reads that page, not a readahead window around it. Anything else is
    left alone."""
    root = _memmap_root(view)
    if root is not None and hasattr(root.base, "madvise"):
        root.base.madvise(mmap.MADV_RANDOM)


def compiled_programs(fn: Any) -> int:
    """How many programs a ``jax.jit`` function has compiled in this process (0 when it cannot tell)."""
    size = getattr(fn, "_cache_size", None)
    return int(size()) if callable(size) else 0


ALIGN = 64  # XLA's CPU client adopts a host buffer this aligned without copying it (jax.device_put)


def aligned_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised array whose data starts on an ``ALIGN``-byte boundary."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGN, np.uint8)
    offset = (-raw.ctypes.data) % ALIGN
    return raw[offset : offset + nbytes].view(dtype).reshape(shape)
