"""Collectives of a compiled XLA program, read from its HLO text (what a sharded step communicates)."""

from __future__ import annotations

import dataclasses
import math
import re

KINDS = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
          "s64": 8, "u64": 8, "f64": 8}
_OP = re.compile(r"=\s+(?P<shape>\(.*?\)|\S+)\s+(?P<kind>" + "|".join(KINDS) + r")(?:-start)?\(")
_OP_NAME = re.compile(r'op_name="(?P<name>[^"]*)"')
_ARRAY = re.compile(r"(?P<dtype>[a-z]+[0-9]*)\[(?P<dims>[0-9,]*)\]")


@dataclasses.dataclass(frozen=True)
class Collective:
    """One collective instruction: its kind and the (per-device) arrays it produces."""

    kind: str
    arrays: tuple[tuple[str, tuple[int, ...]], ...]  # (dtype, shape) per result
    op_name: str = ""  # the JAX operation it was partitioned from, e.g. ".../q_proj/dot_general"

    @property
    def nbytes(self) -> int:
        """Bytes of the per-device result(s)."""
        return sum(_BYTES.get(dt, 4) * math.prod(shape) for dt, shape in self.arrays)

    @property
    def dtypes(self) -> set[str]:
        """The element types it carries."""
        return {dt for dt, _ in self.arrays}


def collectives(hlo_text: str) -> list[Collective]:
    """Every collective in ``compiled.as_text()`` (async ``-start`` ops counted once, ``-done`` skipped)."""
    out = []
    for line in hlo_text.splitlines():
        m = _OP.search(line)
        if not m:
            continue
        arrays = tuple(
            (a["dtype"], tuple(int(d) for d in a["dims"].split(",") if d)) for a in _ARRAY.finditer(m["shape"])
        )
        name = _OP_NAME.search(line)
        out.append(Collective(m["kind"], arrays, name["name"] if name else ""))
    return out


def summary(colls: list[Collective]) -> dict[str, dict[str, int]]:
    """Count and bytes per collective kind."""
    out: dict[str, dict[str, int]] = {}
    for c in colls:
        entry = out.setdefault(c.kind, {"count": 0, "bytes": 0})
        entry["count"] += 1
        entry["bytes"] += c.nbytes
    return out


# Inside a ternary linear only its activation math may communicate: the integer partial sums
# (dot_general, or psum in a shard_map), the activation absmax (reduce_max), the int8 activations
# themselves, and the packed uint8 codes when a shard_map boundary or sharding constraint gathers them.
# Anything else there (unpacking ops, int32/float codes) reshards unpacked weights.
_LINEAR_SCOPE = re.compile(r"(?:^|/|\()([a-z]+_proj)/([A-Za-z_/]+)")
ACTIVATION_OPS = frozenset({"dot_general", "reduce_max", "reshape", "psum", "psum_invariant"})
BOUNDARY_OPS = frozenset({"sharding_constraint", "shard_map"})
CONSTRAINED_DTYPES = frozenset({"u8", "s8"})


def moves_weights(c: Collective) -> bool:
    """True when a collective inside a ternary linear carries its weights in any form but packed uint8."""
    for _, path in _LINEAR_SCOPE.findall(c.op_name):
        op = path.rstrip("/").rsplit("/", 1)[-1]  # the innermost operation, e.g. shard_map/psum -> psum
        if op in BOUNDARY_OPS:
            if not c.dtypes <= CONSTRAINED_DTYPES:
                return True
        elif op not in ACTIVATION_OPS:
            return True
    return False


def gathers_packed_weights(c: Collective) -> bool:
    """True for an all-gather of 2-bit codes (uint8) inside a ternary linear."""
    return c.kind == "all-gather" and c.dtypes == {"u8"} and bool(_LINEAR_SCOPE.search(c.op_name))


# Pallas kernels in lowered StableHLO: their custom-call targets (Mosaic TPU, Mosaic GPU, Triton).
PALLAS_TARGETS = ("tpu_custom_call", "mosaic_gpu", "mosaic_gpu_v2", "__gpu$xla.gpu.triton")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_FUNC = re.compile(r"^\s*func\.func\s+(?:public\s+|private\s+)?@([\w$.-]+)\(")
_CALL = re.compile(r"\bcall @([\w$.-]+)\(")
_CUSTOM = re.compile(r"custom_call @([\w$.-]+)\(")


def _call_sites(mlir_text: str) -> list[tuple[str, str, str, bool]]:
    """``(function, kind, target, inside_manual)`` for every call and custom call of a StableHLO module;
    ``inside_manual`` when it sits in the region of an ``sdy.manual_computation`` (a ``shard_map``)."""
    sites = []
    func, stack = None, []  # stack: one bool per open brace: does it open a manual region?
    for raw in mlir_text.splitlines():
        line = _STRING.sub('""', raw)
        m = _FUNC.match(line)
        if m:  # functions do not nest
            func = m.group(1)
        inside = any(stack)
        for kind, pattern in (("call", _CALL), ("custom_call", _CUSTOM)):
            sites.extend((func, kind, target, inside) for target in pattern.findall(line))
        manual = "sdy.manual_computation" in line
        last_open = line.rfind("{")
        for i, ch in enumerate(line):
            if ch == "{":
                stack.append(manual and i == last_open and line.rstrip().endswith("{"))
            elif ch == "}" and stack:
                stack.pop()
    return sites


def pallas_calls_outside_shard_map(mlir_text: str) -> list[tuple[str, str]]:
    """``(function, target)`` of every Pallas kernel call in a lowered module that does not run inside a
    ``shard_map`` (directly, or in a function reached only from inside one): XLA's partitioner would
    have to replicate such an opaque call."""
    sites = _call_sites(mlir_text)
    outside = {"main"}  # functions that run (at least once) outside every manual region
    changed = True
    while changed:
        changed = False
        for func, kind, target, inside in sites:
            if kind == "call" and func in outside and not inside and target not in outside:
                outside.add(target)
                changed = True
    return [(func, target) for func, kind, target, inside in sites
            if kind == "custom_call" and target in PALLAS_TARGETS and func in outside and not inside]


def pallas_call_count(mlir_text: str) -> int:
    """Number of Pallas kernel custom calls in a lowered module (each outlined function counted once)."""
    return sum(1 for _, kind, target, _ in _call_sites(mlir_text) if kind == "custom_call" and target in PALLAS_TARGETS)
