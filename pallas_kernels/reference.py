"""The one reference every ternary-matmul backend is checked against: exact int64 NumPy."""

from __future__ import annotations

import numpy as np

from bitnet_jax.errors import KernelError


def ternary_matmul_reference(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Exact ``x @ w.T`` for int8 activations ``[M, K]`` and ternary weights ``[N, K]``, as int64."""
    x = np.asarray(x)
    w = np.asarray(w)
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
        raise KernelError(f"expected x [M, K] and w [N, K], got {x.shape} and {w.shape}")
    return x.astype(np.int64) @ w.astype(np.int64).T
