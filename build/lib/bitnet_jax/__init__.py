"""bitnet-jax: BitNet b1.58 ternary LLMs in JAX -- models, checkpoints, generation and kernels."""

from bitnet_jax.config import ModelConfig
from bitnet_jax.errors import BitNetError, CheckpointError, ConfigError
from bitnet_jax.generate import GenerationError, forward, generate, generate_stream
from bitnet_jax.loading import BitNetModel, from_pretrained, read_checkpoint
from bitnet_jax.sampling import SamplingError

__version__ = "0.1.0"

__all__ = [
    "BitNetError",
    "BitNetModel",
    "CheckpointError",
    "ConfigError",
    "GenerationError",
    "ModelConfig",
    "SamplingError",
    "forward",
    "from_pretrained",
    "generate",
    "generate_stream",
    "read_checkpoint",
]
