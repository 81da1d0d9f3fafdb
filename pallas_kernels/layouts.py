"""The packed 2-bit layouts (one registry) and :class:`PackedWeight`, a packed matrix that knows its layout.

This docstring is the one place packed layouts are documented. A :class:`~pallas_kernels.Kernel`
multiplies weights in exactly one layout; a :class:`PackedWeight` records the layout it was packed in,
so a weight packed for one kernel and handed to another is an error (:class:`KernelError`), never a
wrong answer.

Layout ``rows4`` (the one transformers' packed BitNet checkpoints store; the ``xla``, ``tpu``,
``mosaic_gpu`` and ``triton`` kernels multiply it): a ternary matrix ``w`` of shape ``[N, K]`` (values
-1, 0, +1) becomes ``uint8 [N // 4, K]``. Each weight is stored as the code ``w + 1`` (0, 1 or 2). With
``R = N // 4``, byte ``[r, c]`` holds ``w[r, c]`` in bits 1:0, ``w[R + r, c]`` in bits 3:2,
``w[2R + r, c]`` in bits 5:4 and ``w[3R + r, c]`` in bits 7:6. Code 3 never occurs in a valid file.
(:func:`pack_rows4` itself needs ``N % 4 == 0``, as every checkpoint has; :func:`pack` with layout
``rows4`` also takes other ``N``, padding with zero rows to ``4 * ceil(N / 4)``; the
:class:`PackedWeight` keeps the true ``N`` and kernels drop the extra output columns.)
A packed tile ``[bn, bk]`` (rows ``r0 .. r0 + bn``) holds the weights of four output strips
``r0 + n``, ``R + r0 + n``, ``2R + r0 + n``, ``3R + r0 + n``; a kernel unpacks the four 2-bit planes on
chip and writes a ``[4, M, R]`` (or ``[4, R, M]``) result that reshapes to ``[M, N]``. Kernels pad
``R`` and ``K`` with byte ``0x55`` (four zero weights) where no tile size divides them. Axis 1 is the
input axis ``K``, so a mesh may split it (each device multiplies its columns; partial sums add up).

Layout ``tile16`` (the ``cpu`` kernel): made for the u8 x s8 dot-product instructions of x86 CPUs, it
gives each group of 16 output rows one sequential stream of bytes. ``K`` is padded with zeros to
``Kp = ceil(K / 16) * 16``; rows are taken 16 at a time (row group ``g`` = rows ``16g .. 16g+15``). A
full group is ``Kp / 16`` blocks of 64 bytes, block ``b`` covering ``k = 16b .. 16b+15``: byte
``4r + s`` of block ``b`` holds the code ``w + 1`` of the group's row ``r`` at ``k = 16b + 4i + s`` in
bits ``2i+1:2i`` (``i = 0..3``). So 16-bit-lane shifts by 0, 2, 4, 6 and a mask by 3 unpack a block
into four 64-byte vectors whose 32-bit lane ``r`` holds four consecutive k of row ``r``. If ``N`` is
not a multiple of 16, the last group has ``R = N % 16`` rows and blocks of ``4R`` bytes. Groups follow
each other; the stream is stored as ``uint8 [N, Kp / 4]`` (the same byte count as ``rows4``; the
shape's rows are not matrix rows, so no mesh axis may split it). ``K`` itself is not stored.

The pack/unpack functions work on NumPy arrays and on JAX arrays (inside ``jit`` too); the arithmetic
is done in int32 because Mosaic rejects 8-bit elementwise arithmetic.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np

from bitnet_jax.errors import KernelError

VALUES_PER_BYTE = 4
TILE_ROWS = 16
TILE_K = 16


def _xp(a: Any):
    """The array namespace (numpy or jax.numpy) that owns ``a``."""
    if isinstance(a, np.ndarray):
        return np
    import jax.numpy as jnp

    return jnp


def _check_matrix(w: Any, what: str) -> None:
    if w.ndim != 2:
        raise KernelError(f"{what} expects a 2-D [N, K] matrix, got shape {tuple(w.shape)}")


def pack_rows4(w: Any) -> Any:
    """Pack a ternary ``[N, K]`` matrix (N divisible by 4) into ``uint8 [N // 4, K]``."""
    xp = _xp(w)
    _check_matrix(w, "pack_rows4")
    n = w.shape[0]
    if n % VALUES_PER_BYTE:
        raise KernelError(f"pack_rows4 needs N divisible by {VALUES_PER_BYTE}, got N={n}")
    # codes 0/1/2 as bytes: every shift below stays inside a byte (one quarter of int32's memory traffic)
    codes = (w.astype(xp.int8) + 1).astype(xp.uint8).reshape(VALUES_PER_BYTE, n // VALUES_PER_BYTE, w.shape[1])
    packed = codes[0] | (codes[1] << 2) | (codes[2] << 4) | (codes[3] << 6)
    return packed.astype(xp.uint8)


def unpack_rows4(packed: Any, dtype: Any = np.int8) -> Any:
    """Unpack ``uint8 [N // 4, K]`` into the ternary ``[N, K]`` matrix, as ``dtype``."""
    xp = _xp(packed)
    if packed.ndim != 2:
        raise KernelError(f"unpack_rows4 expects a 2-D packed matrix, got shape {tuple(packed.shape)}")
    p = packed.astype(xp.uint8)
    planes = [((p >> (2 * i)) & 3).astype(xp.int8) - 1 for i in range(VALUES_PER_BYTE)]
    return xp.concatenate(planes, axis=0).astype(dtype)


def invalid_code_count(packed: Any) -> int:
    """Number of 2-bit fields holding code 3 (which no ternary weight maps to); any layout."""
    p = np.asarray(packed, dtype=np.uint8)
    return int(sum(np.count_nonzero(((p >> (2 * i)) & 3) == 3) for i in range(VALUES_PER_BYTE)))


def tile16_bytes_per_row(k: int) -> int:
    """Bytes per matrix row in the ``tile16`` layout: ``ceil(K / 16) * 4``."""
    return -(-k // TILE_K) * TILE_K // VALUES_PER_BYTE


def _tile16_combine(codes: Any) -> Any:
    """``[..., 4 (i), 4 (s)]`` int32 codes -> ``[..., 4 (s)]`` bytes with plane ``i`` in bits ``2i+1:2i``."""
    return codes[..., 0, :] | (codes[..., 1, :] << 2) | (codes[..., 2, :] << 4) | (codes[..., 3, :] << 6)


def pack_tile16(w: Any) -> Any:
    """Pack a ternary ``[N, K]`` matrix into the ``tile16`` byte stream ``uint8 [N, ceil(K/16)*4]``."""
    xp = _xp(w)
    _check_matrix(w, "pack_tile16")
    n, k = w.shape
    kp = tile16_bytes_per_row(k) * VALUES_PER_BYTE
    nb = kp // TILE_K
    codes = xp.pad((w.astype(xp.int8) + 1).astype(xp.uint8), ((0, 0), (0, kp - k)), constant_values=1)  # bytes
    full = (n // TILE_ROWS) * TILE_ROWS
    head = _tile16_combine(codes[:full].reshape(-1, TILE_ROWS, nb, 4, 4))  # [g, r, b, s]
    tail = _tile16_combine(codes[full:].reshape(n - full, nb, 4, 4))  # [r, b, s]
    parts = [xp.transpose(head, (0, 2, 1, 3)).reshape(-1), xp.transpose(tail, (1, 0, 2)).reshape(-1)]
    return xp.concatenate(parts).astype(xp.uint8).reshape(n, kp // VALUES_PER_BYTE)


def unpack_tile16(packed: Any, k: int, dtype: Any = np.int8) -> Any:
    """Unpack a ``tile16`` stream ``uint8 [N, ceil(K/16)*4]`` into the ternary ``[N, K]`` matrix."""
    xp = _xp(packed)
    if packed.ndim != 2 or packed.shape[1] != tile16_bytes_per_row(k):
        raise KernelError(
            f"unpack_tile16 expects shape [N, {tile16_bytes_per_row(k)}] for K={k}, got {tuple(packed.shape)}"
        )
    n, row_bytes = packed.shape
    kp = row_bytes * VALUES_PER_BYTE
    nb = kp // TILE_K
    full = (n // TILE_ROWS) * TILE_ROWS
    flat = packed.reshape(-1).astype(xp.int32)
    split = full * row_bytes

    def planes(b: Any) -> Any:  # [..., 4 (s)] bytes -> [..., 4 (i), 4 (s)] ternary values
        return xp.stack([((b >> (2 * i)) & 3) - 1 for i in range(4)], axis=-2)

    head = planes(flat[:split].reshape(-1, nb, TILE_ROWS, 4))  # [g, b, r, i, s]
    tail = planes(flat[split:].reshape(nb, n - full, 4))  # [b, r, i, s]
    head = xp.transpose(head, (0, 2, 1, 3, 4)).reshape(full, kp)
    tail = xp.transpose(tail, (1, 0, 2, 3)).reshape(n - full, kp)
    return xp.concatenate([head, tail], axis=0)[:, :k].astype(dtype)


@dataclasses.dataclass(frozen=True)
class Layout:
    """One packed layout: how ternary ``[N, K]`` becomes bytes and back, and what a mesh may split."""

    name: str
    pack: Callable[[Any], Any]  # ternary int8 [N, K] -> uint8 codes
    unpack: Callable[[Any, int], Any]  # (codes, K) -> ternary int8 [N, K]
    packed_shape: Callable[[int, int], tuple[int, int]]  # [N, K] -> the codes' shape
    splits_input_columns: bool  # codes axis 1 is K: a mesh may split it (column-parallel linears)

    def __repr__(self) -> str:
        return f"Layout({self.name!r})"


def _pack_rows4_any(w: Any) -> Any:
    """:func:`pack_rows4` of ``w`` with zero rows appended up to a multiple of 4."""
    extra = -w.shape[0] % VALUES_PER_BYTE
    if extra:
        w = _xp(w).pad(w, ((0, extra), (0, 0)))
    return pack_rows4(w)


ROWS4 = Layout(
    "rows4", _pack_rows4_any, lambda p, k: unpack_rows4(p), lambda n, k: (-(-n // VALUES_PER_BYTE), k), True
)
TILE16 = Layout("tile16", pack_tile16, unpack_tile16, lambda n, k: (n, tile16_bytes_per_row(k)), False)
LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (ROWS4, TILE16)}


def get_layout(name: str) -> Layout:
    """The registered layout called ``name``."""
    try:
        return LAYOUTS[name]
    except KeyError:
        raise KernelError(f"unknown packed layout {name!r}; known: {sorted(LAYOUTS)}") from None


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PackedWeight:
    """A ternary ``[N, K]`` matrix packed at 2 bits, tagged with its layout.

    ``codes`` holds one matrix (the layout's ``packed_shape``) or, for a model with stacked layers, a
    ``[L, ...]`` stack of them; ``layer`` (a traced int32 scalar or None) then selects one, so a kernel can
    read it in place. ``layout`` and ``shape`` are static (part of the pytree structure).
    """

    codes: Any
    layer: Any = None
    layout: str = dataclasses.field(default="rows4", metadata=dict(static=True))
    shape: tuple[int, int] = dataclasses.field(default=(0, 0), metadata=dict(static=True))

    @property
    def nbytes(self) -> int:
        """Bytes of the codes."""
        return int(self.codes.nbytes)

    def at_layer(self, layer: Any) -> "PackedWeight":
        """The view of layer ``layer`` of a stacked weight (no copy)."""
        return dataclasses.replace(self, layer=layer)


def pack(w: Any, layout: str | Layout = "rows4") -> PackedWeight:
    """Pack ternary int8 ``[N, K]`` weights (NumPy or JAX) in ``layout``."""
    layout = get_layout(layout) if isinstance(layout, str) else layout
    _check_matrix(w, f"packing for layout {layout.name}")
    n, k = (int(d) for d in w.shape)
    return PackedWeight(layout.pack(w), None, layout.name, (n, k))


def unpack(w: PackedWeight) -> Any:
    """The ternary int8 ``[N, K]`` matrix of an (unstacked) packed weight."""
    if w.layer is not None or np.ndim(w.codes) != 2:
        raise KernelError(f"unpack expects one packed matrix, got codes of shape {tuple(np.shape(w.codes))}")
    return get_layout(w.layout).unpack(w.codes, w.shape[1])[: w.shape[0]]


def repack(w: PackedWeight, layout: str | Layout) -> PackedWeight:
    """The same matrix (or stack of matrices) in another layout; a no-op when the layout is the same."""
    layout = get_layout(layout) if isinstance(layout, str) else layout
    if w.layout == layout.name:
        return w
    source, (n, k) = get_layout(w.layout), w.shape
    if np.ndim(w.codes) == 3:  # a [L, ...] stack of one matrix per layer
        xp = _xp(w.codes)
        codes = xp.stack([layout.pack(source.unpack(c, k)[:n]) for c in w.codes])
    else:
        codes = layout.pack(source.unpack(w.codes, k)[:n])
    return dataclasses.replace(w, codes=codes, layout=layout.name)


def repack_tree(tree: Any, layout: str | Layout) -> Any:
    """Every :class:`PackedWeight` of a pytree repacked in ``layout`` (other leaves unchanged)."""
    return jax.tree_util.tree_map(
        lambda x: repack(x, layout) if isinstance(x, PackedWeight) else x, tree, is_leaf=lambda x: isinstance(x, PackedWeight)
    )
