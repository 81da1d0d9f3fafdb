"""Configuration: what a model is (:class:`ModelConfig`), the device mesh (:class:`MeshConfig`) and a
training run (:class:`TrainConfig`), all frozen dataclasses checked by one validator."""

from bitnet_jax.config.mesh import AXES, BATCH_AXES, MeshConfig
from bitnet_jax.config.model import ModelConfig, preset_dir
from bitnet_jax.config.run import TrainConfig, config_from_dict, load_config, parse_override

__all__ = [
    "AXES",
    "BATCH_AXES",
    "MeshConfig",
    "ModelConfig",
    "TrainConfig",
    "config_from_dict",
    "load_config",
    "parse_override",
    "preset_dir",
]
