"""Host memory hygiene: hand freed heap pages back to the operating system."""

from __future__ import annotations

import ctypes
import mmap
from typing import Any

import numpy as np


def release_host_memory() -> None:
    """Return freed heap pages to the OS (glibc keeps a loader's or compiler's freed temporaries mapped
    otherwise: after XLA compiles the 2B4T shape, about 1.4 GB of the process's RSS is such pages)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)  # the process's own symbols: glibc when it is there
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def release_pages(view: np.ndarray) -> None:
    """Drop the pages of a memory-mapped file that ``view`` covers from this process's memory.

    For a view into a read-only ``np.memmap`` (a GGUF tensor that has been decoded or copied): the pages
    wholly inside it leave the resident set at once instead of when the map closes, so a loader that
    reads a file tensor by tensor holds one tensor's pages at a time. Touching the view again reads
    the file again. Anything else (a copy, a writable map, a non-contiguous view) is left alone.
    """
    root = view  # the np.memmap made over the map itself (slices of a memmap are memmaps too)
    while root is not None and not (isinstance(root, np.memmap) and isinstance(root.base, mmap.mmap)):
        root = getattr(root, "base", None)
    if root is None or root.mode != "r" or not view.flags.c_contiguous or not hasattr(root.base, "madvise"):
        return
    handle = root.base
    start = view.ctypes.data - (root.ctypes.data - root.offset % mmap.ALLOCATIONGRANULARITY)
    first, last = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE, (start + view.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    if last > first:
        handle.madvise(mmap.MADV_DONTNEED, first, last - first)


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
