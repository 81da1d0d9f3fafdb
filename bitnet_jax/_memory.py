"""Host memory hygiene: hand freed heap pages back to the operating system."""

from __future__ import annotations

import ctypes
from typing import Any


def release_host_memory() -> None:
    """Return freed heap pages to the OS (glibc keeps a loader's or compiler's freed temporaries mapped
    otherwise: after XLA compiles the 2B4T shape, about 1.4 GB of the process's RSS is such pages)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)  # the process's own symbols: glibc when it is there
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def compiled_programs(fn: Any) -> int:
    """How many programs a ``jax.jit`` function has compiled in this process (0 when it cannot tell)."""
    size = getattr(fn, "_cache_size", None)
    return int(size()) if callable(size) else 0
