"""CPU backend: the packed ternary x int8 matmul and the head as C++ XLA FFI custom calls (``csrc/``).

Weights use the ``tile16`` layout (see :mod:`pallas_kernels.layouts`). The kernel picks Intel AMX (for
16 or more rows of activations; fewer take AVX-512 VNNI), AVX-512 VNNI, AVX2 or portable scalar code at
run time, runs on XLA's intra-op thread pool, and is exact on every path. The
extension (``pallas_kernels.cpu._ternary_cpu``) is built by the package's own build (``setup.py``); when
it is missing, importing this module warns once, :data:`AVAILABLE` is False and CPUs get the ``xla`` kernel.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from bitnet_jax.errors import KernelError
from pallas_kernels.layouts import tile16_bytes_per_row
TARGET_NAME = "bitnet_ternary_matmul_cpu"
STACKED_TARGET = "bitnet_ternary_matmul_stacked_cpu"
HEAD_FLOAT_TARGET = "bitnet_head_float_cpu"
HEAD_INT8_TARGET = "bitnet_head_int8_cpu"
HEAD_GREEDY_TARGET = "bitnet_head_greedy_cpu"

try:
    from pallas_kernels.cpu import _ternary_cpu as _ext
except ImportError as err:  # no compiler at install time, or a source checkout never built
    _ext = None
    warnings.warn(
        "bitnet-jax: the CPU ternary-matmul extension (pallas_kernels.cpu._ternary_cpu) is not built "
        f"({err}); CPU inference falls back to the much slower XLA backend. Reinstall with a C++17 "
        "compiler available (`pip install -e .` or `python setup.py build_ext --inplace`).",
        RuntimeWarning,
        stacklevel=2,
    )
else:
    _handlers = _ext.handlers()
    for _name, _key in ((TARGET_NAME, "ternary_matmul"), (STACKED_TARGET, "ternary_matmul_stacked"),
                        (HEAD_FLOAT_TARGET, "head_float"), (HEAD_INT8_TARGET, "head_int8"),
                        (HEAD_GREEDY_TARGET, "head_greedy")):
        jax.ffi.register_ffi_target(_name, _handlers[_key], platform="cpu")

AVAILABLE: bool = _ext is not None


def isa() -> str | None:
    """The instruction-set path the kernel uses (``amx``, ``avx512vnni``, ``avx2``, ``scalar``), None if unbuilt."""
    return _ext.isa() if _ext is not None else None


def supported_isas() -> list[str]:
    """The paths this CPU can run, widest first (empty if the extension is not built)."""
    return list(_ext.supported_isas()) if _ext is not None else []


def set_isa(name: str | None) -> None:
    """Force a path by name for testing and benchmarking (None restores the widest supported)."""
    require()
    _ext.set_isa(name)


def require() -> None:
    """Raise :class:`KernelError` when the extension is not built."""
    if _ext is None:
        raise KernelError(
            "the 'cpu' ternary-matmul kernel needs the compiled extension pallas_kernels.cpu._ternary_cpu, "
            "which is not built; reinstall the package with a C++17 compiler or choose kernel='xla'"
        )


def _check_packed(packed: jax.Array, k: int, ndim: int, what: str) -> None:
    if packed.ndim != ndim or packed.shape[-1] != tile16_bytes_per_row(k):
        raise KernelError(
            f"tile16-packed {what} for K={k} must have shape [{'L, ' * (ndim - 2)}N, {tile16_bytes_per_row(k)}], "
            f"got {tuple(packed.shape)}"
        )
    if packed.dtype != jnp.uint8:
        raise KernelError(f"tile16-packed {what} must be uint8, got {packed.dtype}")


def ternary_matmul(x: jax.Array, packed: jax.Array) -> jax.Array:
    """Exact int32 ``x @ w.T`` from int8 ``x [M, K]`` and ``tile16``-packed ``w`` ``[N, ceil(K/16)*4]``."""
    require()
    _check_packed(packed, x.shape[1], 2, "weights")
    out = jax.ShapeDtypeStruct((x.shape[0], packed.shape[0]), jnp.int32)
    return jax.ffi.ffi_call(TARGET_NAME, out, vmap_method="sequential")(x, packed)


def ternary_matmul_stacked(x: jax.Array, stack: jax.Array, layer: jax.Array) -> jax.Array:
    """:func:`ternary_matmul` with layer ``layer`` of a ``[L, N, bytes]`` stack, read in place (no copy)."""
    require()
    _check_packed(stack, x.shape[1], 3, "weight stack")
    out = jax.ShapeDtypeStruct((x.shape[0], stack.shape[1]), jnp.int32)
    index = jnp.asarray(layer, jnp.int32).reshape(())
    return jax.ffi.ffi_call(STACKED_TARGET, out, vmap_method="sequential")(x, stack, index)


def _check_head(x: jax.Array, table: jax.Array, x_dtypes: tuple, table_dtypes: tuple, what: str) -> None:
    if x.ndim != 2 or table.ndim != 2 or x.shape[1] != table.shape[1]:
        raise KernelError(f"{what} expects x [M, D] and table [V, D], got {x.shape} and {table.shape}")
    if x.dtype not in x_dtypes or table.dtype not in table_dtypes:
        raise KernelError(f"{what}: unsupported dtypes x {x.dtype}, table {table.dtype}")


def head_float(x: jax.Array, table: jax.Array) -> jax.Array:
    """Float32 logits ``x @ table.T`` of float ``x [M, D]`` (computed in float32) and a bfloat16/float32
    ``table [V, D]``; other table dtypes take an XLA dot."""
    if table.dtype not in (jnp.bfloat16, jnp.float32):
        return jnp.dot(x, table.astype(x.dtype).T, preferred_element_type=jnp.float32)
    require()
    x = x.astype(jnp.float32)
    _check_head(x, table, (jnp.float32,), (jnp.bfloat16, jnp.float32), "head_float")
    out = jax.ShapeDtypeStruct((x.shape[0], table.shape[0]), jnp.float32)
    return jax.ffi.ffi_call(HEAD_FLOAT_TARGET, out, vmap_method="sequential")(x, table)


def head_int8(x: jax.Array, table: jax.Array) -> jax.Array:
    """Exact int32 ``x @ table.T`` of int8 ``x [M, D]`` and an int8 ``table [V, D]`` with values in [-127, 127]."""
    require()
    _check_head(x, table, (jnp.int8,), (jnp.int8,), "head_int8")
    out = jax.ShapeDtypeStruct((x.shape[0], table.shape[0]), jnp.int32)
    return jax.ffi.ffi_call(HEAD_INT8_TARGET, out, vmap_method="sequential")(x, table)


SCREEN_GROUP = 16  # table rows per group of the head screen's layout


def screen_shape(vocab: int, hidden: int) -> tuple[int, int]:
    """The shape of a ``[vocab, hidden]`` table's screen codes in :func:`pack_screen`'s layout."""
    return -(-vocab // SCREEN_GROUP), -(-hidden // 4) * 64


def pack_screen(codes: np.ndarray, out: np.ndarray | None = None, row0: int = 0) -> np.ndarray:
    """Int8 screen codes ``[V, D]`` (row-major) in the layout :func:`head_greedy` reads ("group16").

    Table rows go in groups of 16; a group is ``ceil(D / 4)`` blocks of 64 bytes, and byte ``4 r + t``
    of block ``b`` is ``codes[16 g + r, 4 b + t]`` (zero past the last row and column): one block load
    serves 16 rows' dot products in 16 lanes. With ``out`` (of :func:`screen_shape` for the whole table),
    the rows are written as rows ``row0 ..`` of it (``row0`` a multiple of 16), so a large table can be
    packed a chunk of rows at a time.
    """
    codes = np.asarray(codes, np.int8)
    rows, hidden = codes.shape
    if row0 % SCREEN_GROUP:
        raise KernelError(f"pack_screen: row0 must be a multiple of {SCREEN_GROUP}, got {row0}")
    groups, width = screen_shape(rows, hidden)
    if out is None:
        out = np.empty((groups, width), np.int8)
    g0 = row0 // SCREEN_GROUP
    if out.dtype != np.int8 or out.ndim != 2 or out.shape[1] != width or g0 + groups > out.shape[0]:
        raise KernelError(f"pack_screen: out {out.dtype} {out.shape} cannot hold {rows} rows of width {hidden} "
                          f"from row {row0}")
    padded = np.zeros((groups * SCREEN_GROUP, width // 16), np.int8)
    padded[:rows, :hidden] = codes
    out[g0 : g0 + groups] = padded.reshape(groups, SCREEN_GROUP, width // 64, 4).transpose(0, 2, 1, 3).reshape(
        groups, width)
    return out


def head_greedy(x: jax.Array, table: jax.Array, codes: jax.Array, scales: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``argmax(head_float(x, table), -1)`` for float ``x [M, D]``, screened through the table's int8 copy.

    ``codes`` (int8, :func:`pack_screen`'s layout, :func:`screen_shape`) and ``scales float32 [V]`` are
    the table quantized per row (``codes * scales`` within half a step of each value, a zero row with
    scale 0: :func:`bitnet_jax.model.head.screen_table`); rigorous bounds on the int8 estimate leave few
    rows to recompute from ``table``, each exactly as :func:`head_float` computes it, so the result is
    that argmax (first maximum on ties). Returns ``(tokens int32 [M], rows recomputed int32 [M])``.
    """
    require()
    x = x.astype(jnp.float32)
    _check_head(x, table, (jnp.float32,), (jnp.bfloat16, jnp.float32), "head_greedy")
    want = screen_shape(*table.shape)
    if codes.dtype != jnp.int8 or codes.shape != want or scales.dtype != jnp.float32 or \
            scales.shape != table.shape[:1]:
        raise KernelError(f"head_greedy expects int8 screen codes {want} (pack_screen) and float32 scales "
                          f"{table.shape[:1]}, got {codes.dtype} {codes.shape} and {scales.dtype} {scales.shape}")
    out = (jax.ShapeDtypeStruct((x.shape[0],), jnp.int32), jax.ShapeDtypeStruct((x.shape[0],), jnp.int32))
    return jax.ffi.ffi_call(HEAD_GREEDY_TARGET, out, vmap_method="sequential")(x, table, codes, scales)


def head_screen_pays() -> bool:
    """True on the paths with int8 dot products (``amx``, ``avx512vnni``), where :func:`head_greedy`'s
    int8 pass streams at memory speed; on AVX2 and scalar code it would be slower than the float head."""
    return isa() in ("amx", "avx512vnni")


__all__ = [
    "AVAILABLE",
    "head_screen_pays",
    "head_float",
    "pack_screen",
    "screen_shape",
    "head_greedy",
    "head_int8",
    "isa",
    "require",
    "set_isa",
    "supported_isas",
    "ternary_matmul",
    "ternary_matmul_stacked",
]
