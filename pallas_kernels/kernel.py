"""The one kernel object a model multiplies its packed ternary weights with, chosen once per model.

A :class:`Kernel` bundles everything that depends on the backend: its name, the packed layout its
weights must be in, ``pack`` / ``unpack``, the exact int8 x ternary ``matmul`` (which reads one layer of
a stacked weight in place where the backend can), the output-head projections (float and int8), and
the attention it prefers for long prompts. :func:`select_kernel` picks it once -- from the argument,
else ``$BITNET_JAX_KERNEL``, else the platform -- and the model's packed linear layers receive it.

Shape-dependent choices are the kernel's: ``matmul`` takes ``decode_fn`` (split-K GEMV tiles) for
``M <= decode_max_m`` rows and ``matmul_fn`` (prefill tiles) above. A Pallas kernel that does not
compile for a shape (an unsupported GPU, a Mosaic limit) is replaced for that shape by the ``xla``
kernel with a one-line :class:`~bitnet_jax.errors.KernelFallbackWarning` (:func:`guarded`).

The mesh-aware version (column split + ``psum``, packed FSDP gathers) wraps a kernel in
:mod:`bitnet_jax.parallel`; the model code never sees the difference.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp

from bitnet_jax.errors import KernelError, KernelFallbackWarning
from pallas_kernels import layouts
from pallas_kernels.layouts import Layout, PackedWeight

ENV_VAR = "BITNET_JAX_KERNEL"
BACKENDS: tuple[str, ...] = ("xla", "tpu", "mosaic_gpu", "triton", "cpu")
HOPPER = (9, 10)  # wgmma exists on compute capability 9.x only (not on Blackwell 10.x / 12.x)

MatmulFn = Callable[[jax.Array, jax.Array], jax.Array]
# (q [B, T, H, D], k, v [B, S, Hkv, D], q_positions [B, T]) -> [B, T, H * D]
AttentionFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]


def xla_head_float(x: jax.Array, table: jax.Array) -> jax.Array:
    """Float32 logits ``x @ table.T`` as an XLA dot (float32 accumulate)."""
    return jnp.dot(x, table.astype(x.dtype).T, preferred_element_type=jnp.float32)


def xla_head_int8(xq: jax.Array, table: jax.Array) -> jax.Array:
    """Exact int32 ``xq @ table.T`` of int8 operands as an XLA dot."""
    return jnp.dot(xq, table.T, preferred_element_type=jnp.int32)


@dataclasses.dataclass(frozen=True)
class Kernel:
    """A ternary-matmul backend: layout, pack/unpack, exact matmul, and its head projections."""

    name: str
    layout: Layout
    matmul_fn: MatmulFn  # (int8 x [M, K], codes) -> int32 [M, N]
    stacked_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array] | None = None  # reads layer in place
    head_float_fn: Callable[[jax.Array, jax.Array], jax.Array] = xla_head_float
    head_int8_fn: Callable[[jax.Array, jax.Array], jax.Array] = xla_head_int8
    # (x, table, codes, scales) -> (argmax tokens, rows recomputed): the exact head's greedy choice read
    # through an int8 screen of the table; None where the kernel has none
    head_greedy_fn: Callable[..., tuple[jax.Array, jax.Array]] | None = None
    # the screen's layout for head_greedy_fn: (vocab, hidden) -> codes shape, and the packing of row-major
    # int8 codes (codes, out, row0) -> out (cpu.screen_shape / cpu.pack_screen)
    screen_shape_fn: Callable[[int, int], tuple[int, int]] | None = None
    pack_screen_fn: Callable[..., Any] | None = None
    head_screen_pays_fn: Callable[[], bool] | None = None  # whether head_greedy beats the float head here
    interpret: bool = False  # Pallas kernels run interpreted on CPU
    transparent: bool = False  # plain XLA ops: XLA's partitioner can split it without shard_map
    decode_fn: MatmulFn | None = None  # the split-K GEMV tiles, for M <= decode_max_m
    decode_max_m: int = 0
    # fused attention (q, k, v, q_positions, default) -> out; None: the model's own (``default``)
    attention_fn: Callable[..., jax.Array] | None = None

    def __repr__(self) -> str:
        return f"Kernel({self.name!r}, layout={self.layout.name!r}{', interpret=True' if self.interpret else ''})"

    def pack(self, w: Any) -> PackedWeight:
        """Pack ternary int8 ``[N, K]`` weights (NumPy or JAX) in this kernel's layout."""
        return layouts.pack(w, self.layout)

    def unpack(self, w: PackedWeight) -> Any:
        """The ternary int8 ``[N, K]`` matrix of a weight packed for this kernel."""
        self.check_weight(w)
        return layouts.unpack(w)

    def check_weight(self, w: Any) -> None:
        """Raise :class:`KernelError` unless ``w`` is a :class:`PackedWeight` in this kernel's layout."""
        if not isinstance(w, PackedWeight):
            raise KernelError(f"kernel {self.name!r} multiplies PackedWeight values, got {type(w).__name__}")
        if w.layout != self.layout.name:
            raise KernelError(
                f"a weight packed in layout {w.layout!r} cannot be multiplied by kernel {self.name!r} "
                f"(layout {self.layout.name!r}); repack it (pallas_kernels.repack) or load the model for this kernel"
            )

    def matmul(self, x: jax.Array, w: PackedWeight) -> jax.Array:
        """Exact int32 ``[M, N]`` product of int8 ``x [M, K]`` and the packed ternary ``w [N, K]``."""
        self.check_weight(w)
        if x.dtype != jnp.int8 or x.ndim != 2:
            raise KernelError(f"kernel {self.name!r} expects int8 activations [M, K], got {x.dtype} {tuple(x.shape)}")
        if x.shape[1] != w.shape[1]:
            raise KernelError(f"activations have K={x.shape[1]} but the weight is [{w.shape[0]}, {w.shape[1]}]")
        if w.layer is not None and self.stacked_fn is not None:
            out = self.stacked_fn(x, w.codes, w.layer)
        else:
            codes = w.codes if w.layer is None else jax.lax.dynamic_index_in_dim(w.codes, w.layer, keepdims=False)
            out = self.matmul_for(x.shape[0])(x, codes)
        return out if out.shape[1] == w.shape[0] else out[:, : w.shape[0]]  # rows4 pads N to a multiple of 4

    def matmul_for(self, m: int) -> MatmulFn:
        """The raw ``(x, codes) -> int32`` function used for ``m`` activation rows (decode or prefill)."""
        if self.decode_fn is not None and m <= self.decode_max_m:
            return self.decode_fn
        return self.matmul_fn

    def attend(self, q: jax.Array, k: jax.Array, v: jax.Array, q_positions: jax.Array, default: AttentionFn) -> jax.Array:
        """Causal attention (slot ``j`` visible to a query at position ``p`` iff ``j <= p``): this kernel's
        fused attention where it applies (it falls back to ``default`` itself), else ``default``."""
        if self.attention_fn is None:
            return default(q, k, v, q_positions)
        return self.attention_fn(q, k, v, q_positions, default)

    def head_float(self, x: jax.Array, table: jax.Array) -> jax.Array:
        """Float32 logits ``x @ table.T`` for float ``x [M, D]`` and a float ``table [V, D]``."""
        return self.head_float_fn(x, table)

    def head_int8(self, xq: jax.Array, table: jax.Array) -> jax.Array:
        """Exact int32 ``xq @ table.T`` for int8 ``xq [M, D]`` and an int8 ``table [V, D]``."""
        return self.head_int8_fn(xq, table)

    def head_screen_pays(self) -> bool:
        """Whether greedy decoding is faster through :meth:`head_greedy` than through the float head."""
        return self.head_greedy_fn is not None and self.head_screen_pays_fn is not None and self.head_screen_pays_fn()

    def screen_shape(self, vocab: int, hidden: int) -> tuple[int, int]:
        """The shape of the head screen's codes for a ``[vocab, hidden]`` table in this kernel's layout."""
        if self.screen_shape_fn is None:
            raise KernelError(f"kernel {self.name!r} has no screened greedy head")
        return self.screen_shape_fn(vocab, hidden)

    def pack_screen(self, codes: Any, out: Any = None, row0: int = 0) -> Any:
        """Row-major int8 screen codes ``[V, D]`` in this kernel's screen layout (into rows ``row0 ..`` of
        ``out`` when given: a large table packs a chunk of rows at a time)."""
        if self.pack_screen_fn is None:
            raise KernelError(f"kernel {self.name!r} has no screened greedy head")
        return self.pack_screen_fn(codes, out, row0)

    def head_greedy(self, x: jax.Array, table: jax.Array, codes: jax.Array, scales: jax.Array) -> jax.Array:
        """``argmax(head_float(x, table), -1)`` (int32 ``[M]``) read through the table's int8 screen."""
        if self.head_greedy_fn is None:
            raise KernelError(f"kernel {self.name!r} has no screened greedy head")
        return self.head_greedy_fn(x, table, codes, scales)[0]


def _cuda_capability() -> tuple[int, int] | None:
    try:
        text = str(getattr(jax.devices()[0], "compute_capability", ""))
        major, _, minor = text.partition(".")
        return int(major), int(minor or 0)
    except (RuntimeError, ValueError):
        return None


def default_backend(platform: str | None = None) -> str:
    """The backend a platform gets by default: ``tpu``; ``mosaic_gpu`` on Hopper (9.x), ``triton`` on other
    CUDA GPUs; ``cpu`` (the C++ kernel) on CPUs when its extension is built; ``xla`` elsewhere."""
    from pallas_kernels import cpu

    platform = platform or jax.default_backend()
    if platform == "tpu":
        return "tpu"
    if platform in ("gpu", "cuda"):
        cap = _cuda_capability()
        return "mosaic_gpu" if cap is not None and HOPPER[0] <= cap[0] < HOPPER[1] else "triton"
    if platform == "cpu" and cpu.AVAILABLE:
        return "cpu"
    return "xla"


def get_kernel(name: str, *, interpret: bool | None = None, guard: bool = True) -> Kernel:
    """The kernel called ``name`` (one of :data:`BACKENDS`); Pallas kernels run interpreted on a CPU host.

    ``guard=False`` drops the per-shape compile check (and its ``xla`` fallback) of a compiled Pallas
    kernel: for lowering to another platform than this process's (``lowering_platforms=("cuda",)``),
    where a local compile would fail and swap the kernel out of the program.
    """
    if name not in BACKENDS:
        raise KernelError(f"unknown ternary-matmul kernel {name!r}; known: {', '.join(BACKENDS)}")
    if interpret is None:
        interpret = jax.default_backend() == "cpu"
    return _make_kernel(name, bool(interpret), bool(guard))


@functools.lru_cache(maxsize=None)
def compile_error(fn: Callable[..., Any], *operands: jax.ShapeDtypeStruct) -> str | None:
    """Why ``fn`` does not compile for operands shaped like ``operands`` (None when it does); cached,
    so each shape is compiled once per process."""
    try:
        jax.jit(fn).trace(*operands).lower().compile()
    except Exception as e:  # noqa: BLE001 -- any lowering/compiler error means: do not use it here
        text = str(e).strip()
        return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"[:300]
    return None


@functools.lru_cache(maxsize=None)
def warn_fallback(what: str, shapes: tuple, error: str, instead: str) -> None:
    """Warn (once per distinct case) that ``what`` does not compile for ``shapes`` and ``instead`` runs."""
    shown = " x ".join(str(list(s)) for s in shapes) or "any shape"
    warnings.warn(
        f"{what} does not compile for {shown} on {jax.default_backend()}; using {instead} there ({error})",
        KernelFallbackWarning,
        stacklevel=4,
    )


def guarded(name: str, fn: MatmulFn) -> MatmulFn:
    """``fn`` where it compiles for the operands' shapes, else the ``xla`` kernel with a one-line warning."""
    from pallas_kernels import xla

    def call(x: jax.Array, codes: jax.Array) -> jax.Array:
        shapes = jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct(codes.shape, codes.dtype)
        error = compile_error(fn, *shapes)
        if error is None:
            return fn(x, codes)
        warn_fallback(f"kernel {name!r}", (x.shape, codes.shape), error, "the xla kernel")
        return xla.ternary_matmul(x, codes)

    return call


def _pallas_kernel(name: str, interpret: bool, guard: bool) -> Kernel:
    from pallas_kernels import attention

    paths = {"tpu": "pallas_kernels.tpu", "mosaic_gpu": "pallas_kernels.gpu.mosaic", "triton": "pallas_kernels.gpu.triton"}
    try:
        module = importlib.import_module(paths[name])
    except ImportError as e:  # this jax lacks (or renamed) a Pallas API the module needs
        raise KernelError(f"kernel {name!r} is not available with jax {jax.__version__} ({e})") from None
    prefill = functools.partial(module.prefill, interpret=interpret)
    decode = functools.partial(module.decode, interpret=interpret)
    if guard and not interpret:
        prefill, decode = guarded(name, prefill), guarded(name, decode)
    return Kernel(
        name, layouts.ROWS4, prefill, interpret=interpret, decode_fn=decode, decode_max_m=module.DECODE_MAX_M,
        attention_fn=None if interpret else attention.for_backend(name),
    )


@functools.lru_cache(maxsize=None)
def _make_kernel(name: str, interpret: bool, guard: bool = True) -> Kernel:
    """One Kernel object per (name, interpret, guard), so equal choices hit the same compiled programs."""
    if name == "xla":
        from pallas_kernels import xla

        return Kernel("xla", layouts.ROWS4, xla.ternary_matmul, transparent=True)
    if name == "cpu":
        from pallas_kernels import cpu

        cpu.require()
        return Kernel("cpu", layouts.TILE16, cpu.ternary_matmul, cpu.ternary_matmul_stacked, cpu.head_float, cpu.head_int8,
                      head_greedy_fn=cpu.head_greedy, head_screen_pays_fn=cpu.head_screen_pays,
                      screen_shape_fn=cpu.screen_shape, pack_screen_fn=cpu.pack_screen)
    return _pallas_kernel(name, interpret, guard)


def select_kernel(name: str | None = None, *, platform: str | None = None) -> Kernel:
    """The kernel for a model: ``name``, else ``$BITNET_JAX_KERNEL``, else the platform's default."""
    chosen = name or os.environ.get(ENV_VAR) or None
    if chosen is not None and chosen not in BACKENDS:
        source = "the kernel argument" if name else f"${ENV_VAR}"
        raise KernelError(f"unknown ternary-matmul kernel {chosen!r} (from {source}); known: {', '.join(BACKENDS)}")
    if chosen is not None:
        return get_kernel(chosen)
    default = default_backend(platform)
    try:
        return get_kernel(default)
    except KernelError as e:  # the platform's default cannot even be imported: run, but say so
        warn_fallback(f"kernel {default!r}", (), str(e), "the xla kernel")
        return get_kernel("xla")
