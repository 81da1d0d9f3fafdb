"""bitnet-jax: BitNet b1.58 ternary LLMs in JAX -- models, checkpoints, generation and kernels."""

from bitnet_jax.chat import encode_chat, format_chat, stop_token_ids
from bitnet_jax.config import ModelConfig
from bitnet_jax.errors import BitNetError, CheckpointError, ConfigError
from bitnet_jax.export import save_pretrained
from bitnet_jax.generate import GenerationError, forward, generate, generate_stream
from bitnet_jax.loading import BitNetModel, from_pretrained, read_checkpoint
from bitnet_jax.sampling import SamplingError
from bitnet_jax.sharding import MeshConfig, make_mesh, shard
from bitnet_jax.tokenizer import load_tokenizer

__version__ = "0.1.0"

__all__ = [
    "BitNetError",
    "BitNetModel",
    "CheckpointError",
    "ConfigError",
    "GenerationError",
    "MeshConfig",
    "ModelConfig",
    "SamplingError",
    "encode_chat",
    "format_chat",
    "forward",
    "from_pretrained",
    "generate",
    "generate_stream",
    "load_tokenizer",
    "make_mesh",
    "read_checkpoint",
    "save_pretrained",
    "shard",
    "stop_token_ids",
]
