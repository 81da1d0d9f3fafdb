"""Every exception bitnet-jax raises on purpose: a :class:`BitNetError` naming the file, tensor, field or
argument at fault. The command line prints any of them as one line (a traceback only with ``--debug``).
"""

from __future__ import annotations


class BitNetError(Exception):
    """Base class of every error bitnet-jax raises on purpose."""


class ConfigError(BitNetError, ValueError):
    """A model, mesh or run configuration field is missing, unknown, of the wrong type or out of range.

    ``key`` (the field name) and ``reason`` are set when the error is about one field, so a validator can
    name the field by its full path (``model.hidden_size``) without rewriting the message text.
    """

    def __init__(self, message: str, *, key: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.key = key
        self.reason = reason

    @classmethod
    def field(cls, owner: str, key: str, reason: str) -> "ConfigError":
        """An error about field ``key`` of ``owner`` (a class name or a key path)."""
        return cls(f"{owner}.{key}: {reason}", key=key, reason=reason)


class CheckpointError(BitNetError, ValueError):
    """A checkpoint file or directory is malformed: missing, extra, mis-shaped or corrupt tensors."""


class CodecError(CheckpointError):
    """Bytes that do not decode to a valid ternary tensor (the caller adds the file and tensor names)."""


class TokenizerError(CheckpointError):
    """A tokenizer file or tokenizer metadata that cannot be used."""


class KernelError(BitNetError, ValueError):
    """A ternary-matmul kernel cannot run what it was given (unknown backend, wrong layout or operands)."""


class KernelFallbackWarning(BitNetError, RuntimeWarning):
    """A Pallas kernel did not compile for a shape on this device; the ``xla`` kernel runs there instead."""


class GenerationError(BitNetError, ValueError):
    """Invalid prompts or generation arguments."""


class SamplingError(GenerationError):
    """An invalid sampling argument (temperature, top-k, top-p)."""


class QueueFullError(GenerationError):
    """The serving engine's waiting queue is full (HTTP 429)."""


class EngineClosedError(GenerationError):
    """The serving engine is draining or stopped and takes no new requests (HTTP 503)."""


class ApiError(BitNetError):
    """A server request error answered as OpenAI-shaped JSON (``status``, and the field at fault as ``param``)."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code

    def body(self) -> dict:
        """The JSON body."""
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class DistributedError(BitNetError, RuntimeError):
    """A multi-process run could not start or lost a peer."""


__all__ = [
    "BitNetError",
    "CheckpointError",
    "CodecError",
    "ConfigError",
    "DistributedError",
    "GenerationError",
    "KernelError",
    "KernelFallbackWarning",
    "SamplingError",
    "TokenizerError",
]
