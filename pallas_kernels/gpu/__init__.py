"""GPU kernels: :mod:`~pallas_kernels.gpu.mosaic` (Mosaic GPU, Hopper ``wgmma``) and
:mod:`~pallas_kernels.gpu.triton` (Triton, for CUDA GPUs without ``wgmma``). Both use layout ``rows4``."""
