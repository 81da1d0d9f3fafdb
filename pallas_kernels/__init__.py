"""Packed ternary (2-bit) x int8 matrix multiplication behind one :class:`Kernel` object per model.

* :func:`select_kernel` -- the kernel for a model: the argument, else ``$BITNET_JAX_KERNEL``, else the
  platform's default (``tpu`` on TPU, ``mosaic_gpu`` on Hopper, ``triton`` on other CUDA GPUs, ``cpu``
  -- the C++ kernel -- on CPUs when its extension is built, ``xla`` elsewhere); :func:`get_kernel` by name.
* :class:`Kernel` -- ``pack`` / ``unpack``, the exact int32 ``matmul`` of int8 activations and a
  :class:`PackedWeight`, and the head projections.
* :class:`PackedWeight` -- packed codes tagged with their layout (:mod:`pallas_kernels.layouts`, the one
  place layouts are documented); a weight in another kernel's layout is refused, never misread.
* :func:`ternary_matmul_reference` -- the exact int64 NumPy reference every backend is tested against.

Backends, one module each: :mod:`~pallas_kernels.xla` (plain XLA, every platform), :mod:`~pallas_kernels.tpu`
(Mosaic TPU), :mod:`~pallas_kernels.gpu.mosaic` (Mosaic GPU, Hopper ``wgmma``), :mod:`~pallas_kernels.gpu.triton`
(every CUDA GPU; the default off Hopper), :mod:`~pallas_kernels.cpu` (C++ through XLA FFI). Each Pallas backend
has split-K decode tiles (M <= 16) and prefill tiles; Pallas kernels run interpreted on a CPU host.
:mod:`~pallas_kernels.attention` holds the fused prompt attention a GPU/TPU kernel brings, and
:mod:`~pallas_kernels.timing` the device-side timers of the benchmark scripts (docs/accelerators.md).
"""

from __future__ import annotations

from pallas_kernels.kernel import BACKENDS, ENV_VAR, Kernel, default_backend, get_kernel, select_kernel
from pallas_kernels.layouts import LAYOUTS, Layout, PackedWeight, get_layout, pack, repack, repack_tree, unpack
from pallas_kernels.reference import ternary_matmul_reference

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "LAYOUTS",
    "Kernel",
    "Layout",
    "PackedWeight",
    "default_backend",
    "get_kernel",
    "get_layout",
    "pack",
    "repack",
    "repack_tree",
    "select_kernel",
    "ternary_matmul_reference",
    "unpack",
]
