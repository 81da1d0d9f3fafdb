"""Ternary GGUF tensor encodings <-> the ``rows4`` packed layout, vectorised in NumPy.

A ternary matrix ``[out, in]`` is handled as 2-bit codes ``w + 1`` in {0, 1, 2}. Flattened row-major
(GGUF's order, ``in`` contiguous), the encodings are:

* **TQ2_0** (llama.cpp): blocks of 256 weights, 66 bytes: 64 code bytes then an fp16 ``d``. In each
  32-byte half ``c`` of the codes, byte ``m`` holds weights ``128c + m + 32k`` in bits ``2k+1:2k``.
* **TQ1_0** (llama.cpp): blocks of 256 weights, 54 bytes: 48 + 4 bytes of base-3 digits then fp16 ``d``.
  A byte stores up to five trits ``t0..t4`` as ``ceil(256 * sum(t_k * 3**(4-k)) / 243)``, so trit ``k``
  comes back as ``((byte * 3**k) mod 256) * 3 >> 8``. Bytes 0-31 hold weights ``32k + m``, bytes 32-47
  weights ``160 + 16k + m``, bytes 48-51 weights ``240 + 4k + m`` (four trits each).
* **I2_S** (bitnet.cpp): ``n/4`` code bytes, then one float32 scale (multiplicative) and padding to 32
  bytes. The file does not say which of bitnet.cpp's three code layouts it holds (``layout``):
  ``x86`` (the default, x86 builds with ``ACT_PARALLEL``): blocks of 128 weights, byte ``m`` of a block
  holding weights ``m + 32g`` in bits ``7-2g:6-2g``; ``arm`` (ARM NEON builds): blocks of 64, byte ``m``
  holding weights ``m + 16g``; ``x86-1x4`` (x86 without ``ACT_PARALLEL``): byte ``[r, c]`` of an
  ``[out/4, in]`` array holds rows ``4r .. 4r+3`` of column ``c`` in bits ``7:6 .. 1:0``.

:func:`llama_qk_permutation` is the row order llama.cpp's converters give q/k for GGUF arch ``llama``.

Decoders return ``(rows4 codes uint8 [out/4, in], per-block d or the I2_S scale)``.
"""

from __future__ import annotations

import numpy as np

from bitnet_jax.errors import CodecError
from pallas_kernels.layouts import pack_rows4, unpack_rows4

QK_K = 256
TQ2_0_BYTES = 66
TQ1_0_BYTES = 54
I2S_BLOCK = 128
I2S_TAIL = 32
# I2_S layout -> weights per block (0: the 4-row interleave, no blocks)
I2S_LAYOUTS = {"x86": 128, "arm": 64, "x86-1x4": 0}
_SHIFT_LO = np.array([0, 2, 4, 6], dtype=np.uint8)  # TQ2_0: group k at bits 2k
_SHIFT_HI = np.array([6, 4, 2, 0], dtype=np.uint8)  # I2_S: group g at bits 6-2g
_POW3 = np.array([1, 3, 9, 27, 81], dtype=np.uint8)


def codes_to_rows4(codes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Flat codes (0/1/2, row-major ``[out, in]``) -> ``rows4`` uint8 ``[out/4, in]``."""
    if np.any(codes > 2):
        raise CodecError(f"holds {int(np.count_nonzero(codes > 2))} invalid 2-bit code(s) (3)")
    w = codes.reshape(shape).view(np.int8) - np.int8(1)
    return pack_rows4(w)


def rows4_to_codes(packed: np.ndarray) -> np.ndarray:
    """``rows4`` uint8 ``[out/4, in]`` -> flat row-major codes (0/1/2) as uint8."""
    return (unpack_rows4(np.asarray(packed, dtype=np.uint8), np.int8) + np.int8(1)).view(np.uint8).reshape(-1)


def _blocks(raw: np.ndarray, n: int, block: int, nbytes: int) -> np.ndarray:
    if n % block:
        raise CodecError(f"{n} elements are not a multiple of the block size {block}")
    if raw.size != n // block * nbytes:
        raise CodecError(f"holds {raw.size} bytes, expected {n // block * nbytes}")
    return raw.reshape(n // block, nbytes)


def _fp16(col: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(col).view("<f2").reshape(-1).astype(np.float32)


def tq2_0_blocks(raw: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """TQ2_0 bytes of ``n`` weights -> (codes uint8 ``[blocks, 256]``, per-block ``d`` float32)."""
    blocks = _blocks(raw, n, QK_K, TQ2_0_BYTES)
    qs = blocks[:, :64].reshape(-1, 2, 1, 32)
    codes = (qs >> _SHIFT_LO.reshape(1, 1, 4, 1)) & np.uint8(3)
    return codes.reshape(-1, QK_K), _fp16(blocks[:, 64:])


def tq1_0_blocks(raw: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """TQ1_0 bytes of ``n`` weights -> (codes uint8 ``[blocks, 256]``, per-block ``d`` float32)."""
    blocks = _blocks(raw, n, QK_K, TQ1_0_BYTES)

    def trits(part: np.ndarray, k: int) -> np.ndarray:  # [blocks, k, bytes]
        shifted = part[:, None, :] * _POW3[:k].reshape(1, k, 1)  # uint8 wrap-around is the mod 256
        return ((shifted.astype(np.uint16) * 3) >> 8).astype(np.uint8).reshape(part.shape[0], -1)

    codes = np.concatenate([trits(blocks[:, :32], 5), trits(blocks[:, 32:48], 5), trits(blocks[:, 48:52], 4)], axis=1)
    return codes, _fp16(blocks[:, 52:])


def decode_tq(raw: np.ndarray, shape: tuple[int, int], kind: str) -> tuple[np.ndarray, float]:
    """TQ1_0 / TQ2_0 bytes -> (rows4 codes, the one ``d`` all nonzero blocks share)."""
    codes, d = (tq1_0_blocks if kind == "TQ1_0" else tq2_0_blocks)(raw, shape[0] * shape[1])
    scale = common_scale(d, np.any(codes != 1, axis=1))
    return codes_to_rows4(codes.reshape(-1), shape), scale


def _i2_s_layout(layout: str) -> int:
    if layout not in I2S_LAYOUTS:
        raise CodecError(f"unknown I2_S layout {layout!r}; choose one of {tuple(I2S_LAYOUTS)}")
    return I2S_LAYOUTS[layout]


def decode_i2_s(raw: np.ndarray, shape: tuple[int, int], layout: str = "x86") -> tuple[np.ndarray, float]:
    """I2_S bytes in bitnet.cpp's ``layout`` -> (rows4 codes, the float32 scale)."""
    block = _i2_s_layout(layout)
    n = shape[0] * shape[1]
    if block and n % block:
        raise CodecError(f"{n} elements are not a multiple of the I2_S block size {block} ({layout} layout)")
    if shape[0] % 4:
        raise CodecError(f"{shape[0]} rows are not a multiple of 4")
    if raw.size != n // 4 + I2S_TAIL:
        raise CodecError(f"holds {raw.size} bytes, expected {n // 4 + I2S_TAIL}")
    qs = raw[: n // 4]
    if block:
        codes = (qs.reshape(-1, 1, block // 4) >> _SHIFT_HI.reshape(1, 4, 1)) & np.uint8(3)
    else:  # [out/4, 1, in] -> rows 4r + g at bits 6-2g
        codes = (qs.reshape(shape[0] // 4, 1, shape[1]) >> _SHIFT_HI.reshape(1, 4, 1)) & np.uint8(3)
    scale = float(np.ascontiguousarray(raw[n // 4 : n // 4 + 4]).view("<f4")[0])
    return codes_to_rows4(codes.reshape(-1), shape), scale


def encode_tq2_0(packed: np.ndarray, d: float = 1.0) -> np.ndarray:
    """rows4 codes -> TQ2_0 bytes (flat uint8), every nonzero block with scale ``d``."""
    codes = rows4_to_codes(packed)
    _blocks(codes, codes.size, QK_K, QK_K)
    groups = codes.reshape(-1, 2, 4, 32) << _SHIFT_LO.reshape(1, 1, 4, 1)
    qs = np.bitwise_or.reduce(groups, axis=2).reshape(-1, 64)
    return np.concatenate([qs, _block_d(codes, d)], axis=1).reshape(-1)


def _block_d(codes: np.ndarray, d: float) -> np.ndarray:
    """fp16 ``d`` bytes per 256-weight block: ``d``, or 0 for an all-zero block (as llama.cpp writes it)."""
    nonzero = np.any(codes.reshape(-1, QK_K) != 1, axis=1, keepdims=True)
    return np.where(nonzero, np.float16(d), np.float16(0)).astype("<f2").view(np.uint8)


def encode_tq1_0(packed: np.ndarray, d: float = 1.0) -> np.ndarray:
    """rows4 codes -> TQ1_0 bytes (flat uint8), every nonzero block with scale ``d``."""
    codes = rows4_to_codes(packed)
    _blocks(codes, codes.size, QK_K, QK_K)
    blocks = codes.reshape(-1, QK_K).astype(np.uint16)

    def pack(part: np.ndarray, k: int) -> np.ndarray:  # part [blocks, k * bytes] -> [blocks, bytes]
        digits = part.reshape(part.shape[0], k, -1)
        weights = (3 ** np.arange(4, 4 - k, -1)).astype(np.uint16).reshape(1, k, 1)
        value = (digits * weights).sum(axis=1)
        return ((value * 256 + 242) // 243).astype(np.uint8)

    qs = np.concatenate([pack(blocks[:, :160], 5), pack(blocks[:, 160:240], 5), pack(blocks[:, 240:], 4)], axis=1)
    return np.concatenate([qs, _block_d(codes, d)], axis=1).reshape(-1)


def encode_i2_s(packed: np.ndarray, scale: float, layout: str = "x86") -> np.ndarray:
    """rows4 codes + scale -> I2_S bytes as bitnet.cpp's ``layout`` writes them (codes, float32 scale, padding)."""
    block = _i2_s_layout(layout)
    codes = rows4_to_codes(packed)
    out, inp = packed.shape[0] * 4, packed.shape[1]
    if block and codes.size % block:
        raise CodecError(f"{codes.size} elements are not a multiple of the I2_S block size {block} ({layout} layout)")
    groups = codes.reshape(-1, 4, block // 4) if block else codes.reshape(out // 4, 4, inp)
    qs = np.bitwise_or.reduce(groups << _SHIFT_HI.reshape(1, 4, 1), axis=1).reshape(-1)
    tail = np.zeros(I2S_TAIL, dtype=np.uint8)
    tail[:4] = np.array([scale], dtype="<f4").view(np.uint8)
    return np.concatenate([qs, tail])


def llama_qk_permutation(rows: int, heads: int) -> np.ndarray:
    """Row ``i`` of a GGUF ``llama`` q/k weight is row ``perm[i]`` of the transformers weight.

    llama.cpp's converters reorder each head's rows from rotate-half pairs ``(j, j + d/2)`` to adjacent
    pairs ``(2j, 2j + 1)`` (NORM RoPE): ``w.reshape(heads, 2, d/2, K).swapaxes(1, 2).reshape(rows, K)``.
    """
    if rows % (2 * heads):
        raise CodecError(f"{rows} rows do not split into {heads} heads of even size")
    return np.arange(rows).reshape(heads, 2, rows // heads // 2).swapaxes(1, 2).reshape(-1)


def permute_rows4(packed: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """rows4 codes of the matrix whose row ``i`` is row ``perm[i]`` of ``packed``'s."""
    return pack_rows4(unpack_rows4(np.asarray(packed, dtype=np.uint8), np.int8)[perm])


def common_scale(d: np.ndarray, nonzero: np.ndarray) -> float:
    """The one ``d`` shared by every block holding a nonzero weight (1.0 when all blocks are zero)."""
    used = d[nonzero]
    if used.size == 0:
        return 1.0
    if not np.all(np.isfinite(used)):
        raise CodecError("a block's scale d is not finite")
    bad = np.flatnonzero(used != used[0])
    if bad.size:
        raise CodecError(
            f"blocks disagree on the scale (d = {float(used[0])!r} and {float(used[bad[0]])!r}); "
            "a ternary tensor needs one scale per tensor"
        )
    return float(used[0])
