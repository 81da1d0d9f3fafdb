"""A checked, memory-mapped reader of the GGUF container: header, metadata and tensor directory.

Why not ``gguf.GGUFReader``: it refuses bitnet.cpp's I2_S tensors (type 36) at open, and on a corrupt
file it can loop for as long as a bogus array count says (reads past the end come back empty rather
than failing). This reader uses ``gguf``'s constants (value types, tensor types, block sizes) and checks
every count, offset and size against the file before touching it, so a malformed file raises
:class:`CheckpointError` naming the file and the field, never allocating more than the file holds.
Tensor data stays in the memory map: :meth:`GGUFFile.tensor_bytes` returns a zero-copy view.
"""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from bitnet_jax.errors import CheckpointError

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_ARRAY_NESTING = 4
I2_S = 36  # bitnet.cpp's 2-bit ternary type (not in upstream ggml)
I2_S_BLOCK = 128  # weights per I2_S block as x86 bitnet.cpp writes it
I2_S_TAIL = 32  # bytes after the codes: one float32 scale, padded
# Tensor types whose id means something else in bitnet.cpp's fork than upstream (facts sheet section 4).
FORK_AMBIGUOUS_IDS = range(37, 64)
FORK_ARCHS = ("bitnet-b1.58", "bitnet-25")
# bitnet.cpp's own types besides I2_S, refused by name (their layouts depend on build-time kernels)
FORK_TYPES = {37: "I8_S (bitnet.cpp type 37)", 38: "TL1 (bitnet.cpp type 38)",
              39: "TL2 (bitnet.cpp type 39; upstream llama.cpp uses 39 for MXFP4)"}

_SCALARS: dict[int, tuple[str, np.dtype]] = {
    GGUFValueType.UINT8: ("<B", np.dtype("<u1")),
    GGUFValueType.INT8: ("<b", np.dtype("<i1")),
    GGUFValueType.UINT16: ("<H", np.dtype("<u2")),
    GGUFValueType.INT16: ("<h", np.dtype("<i2")),
    GGUFValueType.UINT32: ("<I", np.dtype("<u4")),
    GGUFValueType.INT32: ("<i", np.dtype("<i4")),
    GGUFValueType.FLOAT32: ("<f", np.dtype("<f4")),
    GGUFValueType.BOOL: ("<?", np.dtype("?")),
    GGUFValueType.UINT64: ("<Q", np.dtype("<u8")),
    GGUFValueType.INT64: ("<q", np.dtype("<i8")),
    GGUFValueType.FLOAT64: ("<d", np.dtype("<f8")),
}
# The fewest bytes one value of a type can take (for bounding counts before looping).
_MIN_SIZE = {**{t: d.itemsize for t, (_, d) in _SCALARS.items()}, GGUFValueType.STRING: 8, GGUFValueType.ARRAY: 12}


def type_name(type_id: int) -> str:
    """Human name of a GGML tensor type id (``I2_S`` for 36)."""
    if type_id == I2_S:
        return "I2_S"
    try:
        return GGMLQuantizationType(type_id).name
    except ValueError:
        return f"unknown type id {type_id}"


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One entry of the tensor directory; ``dims`` in GGUF order (``ne0`` first, the contiguous axis)."""

    name: str
    dims: tuple[int, ...]
    type_id: int
    offset: int  # absolute byte offset in the file
    nbytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """NumPy (row-major) shape: the reversed ``dims``."""
        return tuple(reversed(self.dims))

    @property
    def n_elements(self) -> int:
        """Number of elements."""
        n = 1
        for d in self.dims:
            n *= d
        return n

    @property
    def type_name(self) -> str:
        """Name of the tensor type."""
        return type_name(self.type_id)


@dataclasses.dataclass(frozen=True)
class GGUFFile:
    """A parsed GGUF file: version, metadata (numeric arrays are memory-map views) and tensors."""

    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo]
    alignment: int
    data: np.ndarray  # the whole file, memory-mapped uint8
    value_types: dict[str, int] = dataclasses.field(default_factory=dict)  # metadata key -> GGUFValueType

    def tensor_bytes(self, name: str) -> np.ndarray:
        """Zero-copy uint8 view of a tensor's bytes (bounds were checked at open)."""
        t = self.tensors[name]
        return self.data[t.offset : t.offset + t.nbytes]

    def tensor_array(self, name: str, dtype: Any) -> np.ndarray:
        """Zero-copy view of a plain (F32/F16/...) tensor as ``dtype`` in NumPy shape."""
        t = self.tensors[name]
        return self.tensor_bytes(name).view(np.dtype(dtype).newbyteorder("<")).reshape(t.shape)


class _Cursor:
    """Sequential reads over the mapped file; every read is bounds-checked and names its field."""

    def __init__(self, buf: np.ndarray, path: Path):
        self.buf = buf
        self.mv = memoryview(buf)
        self.size = int(buf.shape[0])
        self.path = path
        self.pos = 0

    def fail(self, field: str, why: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: GGUF field {field}: {why} (at byte {self.pos})")

    def need(self, n: int, field: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(field, f"needs {n} bytes but the file ends after {self.size - self.pos}")

    def scalar(self, vtype: int, field: str) -> Any:
        fmt, dt = _SCALARS[vtype]
        self.need(dt.itemsize, field)
        (value,) = struct.unpack_from(fmt, self.mv, self.pos)
        self.pos += dt.itemsize
        return value

    def u32(self, field: str) -> int:
        return self.scalar(GGUFValueType.UINT32, field)

    def u64(self, field: str) -> int:
        return self.scalar(GGUFValueType.UINT64, field)

    def count(self, field: str, min_item: int) -> int:
        n = self.u64(field)
        if min_item and n > (self.size - self.pos) // min_item:
            raise self.fail(field, f"count {n} is impossible: the rest of the file holds {self.size - self.pos} bytes")
        return n

    def string(self, field: str) -> str:
        n = self.count(field + " (string length)", 1)
        raw = self.mv[self.pos : self.pos + n]
        self.pos += n
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError:
            raise self.fail(field, "string is not valid UTF-8") from None

    def value(self, vtype: int, field: str, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            return self.scalar(vtype, field)
        if vtype == GGUFValueType.STRING:
            return self.string(field)
        if vtype == GGUFValueType.ARRAY:
            if depth >= MAX_ARRAY_NESTING:
                raise self.fail(field, f"arrays nested deeper than {MAX_ARRAY_NESTING}")
            itype = self.u32(field + " (array item type)")
            if itype not in _MIN_SIZE:
                raise self.fail(field, f"unknown array item type {itype}")
            n = self.count(field + " (array length)", _MIN_SIZE[itype])
            if itype in _SCALARS:
                dt = _SCALARS[itype][1]
                arr = self.buf[self.pos : self.pos + n * dt.itemsize].view(dt)
                self.pos += n * dt.itemsize
                return arr
            return [self.value(itype, f"{field}[{i}]", depth + 1) for i in range(n)]
        raise self.fail(field, f"unknown value type {vtype}")


def _vtype_name(vtype: int) -> str:
    try:
        return GGUFValueType(vtype).name
    except ValueError:
        return f"value type {vtype}"


def _element_count(dims: tuple[int, ...], cur: _Cursor, field: str) -> int:
    n = 1
    for d in dims:
        n *= d
        if n > (1 << 62):
            raise cur.fail(field, f"dimensions {list(dims)} overflow (product exceeds 2**62)")
    return n


def _tensor_nbytes(name: str, dims: tuple[int, ...], type_id: int, arch: str | None, cur: _Cursor) -> int:
    field = f"tensor {name} type"
    n = _element_count(dims, cur, f"tensor {name} dims")
    if type_id == I2_S:
        if n % 4:
            raise cur.fail(field, f"I2_S tensor has {n} elements, not a multiple of 4")
        return n // 4 + I2_S_TAIL
    if type_id in FORK_TYPES:  # no BitNet-family file holds upstream MXFP4: name both meanings of 39
        raise cur.fail(field, f"{FORK_TYPES[type_id]} is not supported: convert the model to I2_S, TQ2_0 or TQ1_0")
    if arch in FORK_ARCHS and type_id in FORK_AMBIGUOUS_IDS:
        raise cur.fail(field, f"type id {type_id} means different things in bitnet.cpp and llama.cpp; not supported")
    try:
        qtype = GGMLQuantizationType(type_id)
    except ValueError:
        raise cur.fail(field, f"unknown tensor type id {type_id}") from None
    block, size = GGML_QUANT_SIZES[qtype]
    if dims[0] % block:
        raise cur.fail(field, f"{qtype.name} rows of {dims[0]} elements are not a multiple of its block ({block})")
    return n // block * size


def open_gguf(path: str | Path) -> GGUFFile:
    """Parse a GGUF file's header, metadata and tensor directory (memory-mapped, fully bounds-checked)."""
    path = Path(path)
    try:
        data = np.memmap(path, dtype=np.uint8, mode="r")
    except (OSError, ValueError) as e:  # ValueError: empty file
        raise CheckpointError(f"{path}: cannot open as GGUF ({e})") from None
    cur = _Cursor(data, path)
    cur.need(4, "magic")
    if bytes(cur.mv[0:4]) != MAGIC:
        raise cur.fail("magic", f"expected b'GGUF', found {bytes(cur.mv[0:4])!r}")
    cur.pos = 4
    version = cur.u32("version")
    if version not in SUPPORTED_VERSIONS:
        hint = " (a big-endian file?)" if version & 0xFFFF == 0 else ""
        raise cur.fail("version", f"unsupported version {version}{hint}; supported: {SUPPORTED_VERSIONS}")
    n_tensors = cur.count("tensor_count", 24)  # a tensor entry takes at least 24 bytes
    n_kv = cur.count("kv_count", 13)  # a key/value pair takes at least 13 bytes
    metadata: dict[str, Any] = {}
    value_types: dict[str, int] = {}
    for i in range(n_kv):
        key = cur.string(f"metadata key #{i}")
        if key in metadata:
            raise cur.fail(key, "duplicate metadata key")
        vtype = cur.u32(f"{key} (value type)")
        metadata[key] = cur.value(vtype, key)
        value_types[key] = vtype
    arch = metadata.get("general.architecture")
    if "general.architecture" in metadata and value_types["general.architecture"] != GGUFValueType.STRING:
        raise cur.fail("general.architecture", f"must be a string, is stored as {_vtype_name(value_types['general.architecture'])}")
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if "general.alignment" in metadata and value_types["general.alignment"] != GGUFValueType.UINT32:
        raise cur.fail("general.alignment", f"must be a UINT32, is stored as {_vtype_name(value_types['general.alignment'])}")
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1) or alignment > (1 << 20):
        raise cur.fail("general.alignment", f"{alignment!r} is not a power of two up to 2**20")
    entries = []
    for i in range(n_tensors):
        name = cur.string(f"tensor #{i} name")
        n_dims = cur.u32(f"tensor {name} n_dims")
        if not 1 <= n_dims <= MAX_DIMS:
            raise cur.fail(f"tensor {name} n_dims", f"{n_dims} dimensions (must be 1..{MAX_DIMS})")
        dims = tuple(cur.u64(f"tensor {name} dims[{j}]") for j in range(n_dims))
        if min(dims) == 0:
            raise cur.fail(f"tensor {name} dims", f"zero-sized dimension in {list(dims)}")
        type_id = cur.u32(f"tensor {name} type")
        offset = cur.u64(f"tensor {name} offset")
        nbytes = _tensor_nbytes(name, dims, type_id, arch, cur)
        entries.append((name, dims, type_id, offset, nbytes))
    data_start = -(-cur.pos // alignment) * alignment
    tensors: dict[str, TensorInfo] = {}
    for name, dims, type_id, offset, nbytes in entries:
        if name in tensors:
            raise cur.fail(f"tensor {name}", "duplicate tensor name")
        if offset % alignment:
            raise cur.fail(f"tensor {name} offset", f"{offset} is not a multiple of the alignment {alignment}")
        start = data_start + offset
        if start + nbytes > cur.size:
            raise cur.fail(
                f"tensor {name} offset",
                f"data [{start}, {start + nbytes}) lies past the end of the file ({cur.size} bytes)",
            )
        tensors[name] = TensorInfo(name, dims, type_id, start, nbytes)
    ordered = sorted(tensors.values(), key=lambda t: t.offset)
    for before, after in zip(ordered, ordered[1:]):
        if after.offset < before.offset + before.nbytes:
            raise cur.fail(f"tensor {after.name} offset", f"its data overlaps tensor {before.name}'s "
                           f"[{before.offset}, {before.offset + before.nbytes})")
    return GGUFFile(path, version, metadata, tensors, alignment, data, value_types)
