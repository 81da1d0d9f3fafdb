"""Install libtpu (the TPU compiler JAX's ``jax[tpu]`` extra pins) into a separate directory.

The TPU compile checks (``tests/kernels/test_kernels_compile.py``) need libtpu, but a libtpu that sits
in the environment is loaded by every JAX process -- ``bitnet-jax`` included -- and prints a dozen lines
of initialisation noise on machines without a TPU. Installed with this script into ``DIR`` and named by
``BITNET_JAX_LIBTPU_PATH=DIR``, it is seen only by the compile-check subprocesses. ``.ci/run`` does this.

    python scripts/install_libtpu.py DIR
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys


def libtpu_requirement() -> str:
    """The libtpu requirement of the installed jax's ``tpu`` extra (e.g. ``libtpu==0.0.42.*``)."""
    for req in importlib.metadata.requires("jax") or ():
        name, _, marker = req.partition(";")
        if name.strip().startswith("libtpu") and "extra" in marker and "tpu" in marker:
            return name.strip()
    raise SystemExit("the installed jax declares no libtpu requirement in its 'tpu' extra")


def main() -> int:
    """Install the matching libtpu into ``sys.argv[1]`` with pip (no other packages)."""
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", sys.argv[1], libtpu_requirement()]
    return subprocess.run(cmd, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
