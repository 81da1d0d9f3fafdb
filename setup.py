"""Build hook: compiles the optional CPU ternary-matmul extension (everything else is in pyproject.toml).

The extension is an XLA FFI custom call; its headers ship with jaxlib (``jax.ffi.include_dir()``), so
``jax``/``jaxlib`` are build requirements. The extension is ``optional``: without a C++17 compiler the
package still installs, and :mod:`pallas_kernels.cpu` warns and the dispatcher falls back to XLA.
"""

from setuptools import Extension, setup


def _ffi_include_dir() -> str:
    import jax.ffi

    return jax.ffi.include_dir()


setup(
    ext_modules=[
        Extension(
            "pallas_kernels.cpu._ternary_cpu",
            sources=["csrc/module.cc", "csrc/ternary_cpu.cc", "csrc/head_cpu.cc"],
            depends=["csrc/common.h"],
            include_dirs=[_ffi_include_dir()],
            extra_compile_args=["-O3", "-std=c++17", "-fvisibility=hidden"],
            language="c++",
            optional=True,
        )
    ]
)
