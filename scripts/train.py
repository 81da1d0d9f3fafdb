#!/usr/bin/env python
"""Train from a run config: ``python scripts/train.py CONFIG [--set SECTION.FIELD=VALUE ...]`` (= ``bitnet-jax train``)."""

import sys

from bitnet_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
