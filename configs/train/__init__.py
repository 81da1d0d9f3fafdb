"""The example run configs (``bitnet-jax train --example NAME``), shipped as package data."""
