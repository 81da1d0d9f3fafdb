"""Inference: whole-sequence logits, KV-cached generation, sampling, streaming text, chat and perplexity."""

from bitnet_jax.inference.chat import encode_chat, encode_conversation, format_chat, stop_token_ids
from bitnet_jax.inference.generate import forward, generate, generate_stream
from bitnet_jax.inference.perplexity import perplexity
from bitnet_jax.inference.sampling import SamplingParams
from bitnet_jax.inference.streaming import IncrementalDecoder

__all__ = [
    "IncrementalDecoder",
    "SamplingParams",
    "encode_chat",
    "encode_conversation",
    "format_chat",
    "forward",
    "generate",
    "generate_stream",
    "perplexity",
    "stop_token_ids",
]
