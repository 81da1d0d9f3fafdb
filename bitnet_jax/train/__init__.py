"""Training: run configs, data pipeline, starting from checkpoints, the jitted QAT step, checkpoints, the
loop and export (fine-tuning: docs/finetuning.md)."""

from bitnet_jax.config.run import TrainConfig, config_from_dict, load_config
from bitnet_jax.train.export import export_run
from bitnet_jax.train.init import load_init
from bitnet_jax.train.loop import train

__all__ = ["TrainConfig", "config_from_dict", "export_run", "load_config", "load_init", "train"]
