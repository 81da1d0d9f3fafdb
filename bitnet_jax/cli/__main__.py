"""``python -m bitnet_jax.cli``."""

import sys

from bitnet_jax.cli import main

sys.exit(main())
