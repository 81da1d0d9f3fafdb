"""The exceptions bitnet-jax raises for bad input: each names the file, tensor, field or argument."""

from __future__ import annotations


class BitNetError(Exception):
    """Base class of every error bitnet-jax raises on purpose."""


class ConfigError(BitNetError, ValueError):
    """A model or run configuration field is missing, unknown or out of range."""


class CheckpointError(BitNetError, ValueError):
    """A checkpoint file or directory is malformed: missing, extra, mis-shaped or corrupt tensors."""
