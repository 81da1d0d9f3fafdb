"""Serving: the continuous-batching :class:`Engine` (usable from Python) and the OpenAI-compatible HTTP app."""

from bitnet_jax.serve.engine import Engine, EngineClosedError, QueueFullError, Request

__all__ = ["Engine", "EngineClosedError", "QueueFullError", "Request"]
