"""How a model is held and run, apart from what it is: :class:`Form`, and :class:`BitNetModel`, a loaded
model (config + parameters + tokenizer + form)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax

from bitnet_jax.config import ModelConfig
from bitnet_jax.errors import ConfigError
from bitnet_jax.model import quant
from pallas_kernels import Kernel


def unconstrained(x: jax.Array) -> jax.Array:
    """The identity: activations placed wherever XLA puts them."""
    return x


def same_layer(layer_class: type) -> type:
    """The identity on the decoder layer class (no rematerialization)."""
    return layer_class


@dataclasses.dataclass(frozen=True)
class Form:
    """How the weights are held and multiplied; :class:`~bitnet_jax.config.ModelConfig` says what the model is.

    * ``kernel`` set -- the packed inference form: ternary linears hold 2-bit codes in the kernel's layout
      and multiply through it; ``None`` -- the training form: latent float weights, fake quantization.
    * ``head`` -- ``"exact"`` (the float table as stored) or ``"int8"`` (per-row int8 codes + scales).
    * ``quantize`` -- training form only: ``False`` drops both quantizers (full-precision comparison runs).
    * ``scan_layers`` -- packed form only: one compiled layer body over stacked layer weights
      (:mod:`bitnet_jax.model.scan`).
    * ``weight_quantizer`` / ``shard_batch`` -- hooks :mod:`bitnet_jax.parallel` fills for a mesh (the FSDP
      packed weight gather; the batch split of the activations after the embedding). The model only calls them.
    * ``activation_quantizer`` -- training form: the activations' fake quantizer (the train step blends it
      in during a quantization warm-up, as it may the weight quantizer).
    * ``layer_transform`` -- wraps the decoder layer class (the train step passes ``nn.remat`` with the
      config's rematerialization policy); the identity by default.
    """

    kernel: Kernel | None = None
    head: str = "exact"
    quantize: bool = True
    scan_layers: bool = False
    weight_quantizer: Callable[[jax.Array], jax.Array] = quant.fake_quantize_weights
    shard_batch: Callable[[jax.Array], jax.Array] = unconstrained
    activation_quantizer: Callable[[jax.Array], jax.Array] = quant.fake_quantize_activations
    layer_transform: Callable[[type], type] = same_layer

    def __post_init__(self) -> None:
        if self.head not in ("exact", "int8"):
            raise ConfigError.field("Form", "head", f"must be 'exact' or 'int8', got {self.head!r}")
        if self.kernel is None and (self.scan_layers or self.head != "exact"):
            raise ConfigError("Form: scan_layers and the int8 head exist only in the packed form (give a kernel)")

    @property
    def packed(self) -> bool:
        """True for the inference form (packed codes multiplied by ``kernel``)."""
        return self.kernel is not None


@dataclasses.dataclass(frozen=True)
class BitNetModel:
    """A loaded model: its config, its parameter pytree, its tokenizer (or None) and its :class:`Form`."""

    config: ModelConfig
    params: Any
    tokenizer: Any = None
    form: Form = dataclasses.field(kw_only=True)  # required: params are only meaningful in their form

    @property
    def packed(self) -> bool:
        """True when the ternary linears hold packed codes (inference form)."""
        return self.form.packed

    @property
    def kernel(self) -> Kernel | None:
        """The kernel the packed weights are laid out for (None in the training form)."""
        return self.form.kernel
