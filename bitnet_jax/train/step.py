"""One jitted training step: quantization-aware forward/backward (STE), AdamW, clipping, accumulation.

The model is the core ``Transformer`` in its training form (``Form(kernel=None)``): latent float32
weights, both quantizers applied with the straight-through estimator. The optimizer is ``optax`` AdamW behind global-norm
clipping, with warmup and the BitNet b1.58 two-stage schedule: the learning rate decays (cosine) in stage 1,
drops to ``stage2_lr_scale * lr`` when stage 2 starts and decays again; weight decay is on in stage 1
and off in stage 2. A step takes a batch of ``[grad_accum, micro_batch, seq_len]`` arrays (inputs,
targets, weights, positions, segments: :mod:`bitnet_jax.train.data`) and scans over the micro-batches;
the loss is the float32 cross-entropy averaged over the weighted targets of the whole batch (every
token of a text row; the assistant replies of a chat), attention kept inside each packed document.

Memory: ``training.remat`` rematerializes each decoder layer in the backward pass (``nn.remat``, i.e.
``jax.checkpoint``, with that ``jax.checkpoint_policies`` policy) through the model's
``Form.layer_transform`` hook; ``compute_dtype: bfloat16`` runs activations in bf16 over float32 master
weights and optimizer state. ``training.quant_warmup_steps`` blends both quantizers in over the first
steps, ``x + lambda (q(x) - x)`` with ``lambda = step / warmup`` rising from 0 to 1 (a full-precision
model converted to ternary by training); those steps run their own compiled program.

Parallelism uses the one mesh vocabulary (axes ``data``, ``fsdp``, ``tensor``): the micro-batch is split
over ``data`` x ``fsdp``; parameters and the AdamW moments are stored by
:data:`~bitnet_jax.parallel.rules.PARAM_RULES` (latent ternary weights split by rows over ``fsdp``), and
the forward pass gathers them packed at 2 bits (:mod:`bitnet_jax.parallel.fsdp`, put into the model's
:class:`~bitnet_jax.model.Form` with the batch constraint); XLA partitions the rest.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from bitnet_jax.config import BATCH_AXES, ModelConfig, TrainConfig
from bitnet_jax.errors import ConfigError
from bitnet_jax.model import Form, Transformer
from bitnet_jax.parallel import fsdp
from bitnet_jax.parallel.kernel import batch_constraint
from bitnet_jax.parallel.rules import param_shardings, place

State = dict[str, Any]


def stage2_start(cfg: TrainConfig) -> int:
    """The first step of stage 2."""
    return int(round(cfg.schedule.stage2_fraction * cfg.training.steps))


def learning_rate_schedule(cfg: TrainConfig) -> Callable[[Any], jax.Array]:
    """Linear warmup, then the two stages, each a cosine from its peak down to ``final_lr_scale * peak``.

    Stage 1's cosine spans the whole run and is cut off at stage 2 (about ``0.55 * lr`` at the
    midpoint); stage 2 restarts at the lower peak ``stage2_lr_scale * lr`` and decays over the rest.
    """
    s = cfg.schedule
    total, s2, peak = cfg.training.steps, stage2_start(cfg), cfg.optimizer.lr

    def schedule(count):
        t = jnp.asarray(count, jnp.float32)
        warm = jnp.minimum(1.0, (t + 1.0) / s.warmup_steps) if s.warmup_steps else 1.0
        in2 = t >= s2
        start = jnp.where(in2, s2, 0.0)
        length = jnp.where(in2, max(total - s2, 1), max(total, 1))
        progress = jnp.clip((t - start) / length, 0.0, 1.0)
        shape = s.final_lr_scale + (1.0 - s.final_lr_scale) * 0.5 * (1.0 + jnp.cos(math.pi * progress))
        return peak * jnp.where(in2, s.stage2_lr_scale, 1.0) * warm * shape

    return schedule


def weight_decay_schedule(cfg: TrainConfig) -> Callable[[Any], jax.Array]:
    """``weight_decay`` during stage 1, zero in stage 2."""
    s2, wd = stage2_start(cfg), cfg.optimizer.weight_decay
    return lambda count: jnp.where(jnp.asarray(count) < s2, wd, 0.0).astype(jnp.float32)


def decay_mask(params) -> Any:
    """Weight decay applies to matrices (linears, embedding), not to norm gains."""
    return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping then AdamW with the two-stage LR and weight-decay schedules."""
    o = cfg.optimizer
    adamw = optax.adamw(
        learning_rate=learning_rate_schedule(cfg),
        b1=o.b1,
        b2=o.b2,
        eps=o.eps,
        weight_decay=weight_decay_schedule(cfg),
        mask=decay_mask,
    )
    return optax.chain(optax.clip_by_global_norm(o.clip_norm), adamw) if o.clip_norm > 0 else adamw


def remat_transform(policy: str) -> Callable[[type], type]:
    """The layer-class transform for ``training.remat``: ``nn.remat`` with that checkpoint policy."""
    if policy == "none":
        return Form.layer_transform
    chosen = getattr(jax.checkpoint_policies, policy)
    return lambda layer_class: nn.remat(layer_class, policy=chosen, prevent_cse=True)


def blended(quantizer: Callable[[jax.Array], jax.Array], lam: jax.Array) -> Callable[[jax.Array], jax.Array]:
    """``x + lam (q(x) - x)``: the quantizer blended in by ``lam`` (straight-through: the gradient is 1)."""

    def blend(x: jax.Array) -> jax.Array:
        return x + lam.astype(x.dtype) * (quantizer(x) - x)

    return blend


def make_module(model_cfg: ModelConfig, quantize: bool = True, mesh: Mesh | None = None, remat: str = "none",
                blend: jax.Array | None = None) -> Transformer:
    """The training-form (latent weight) Transformer; ``quantize=False`` drops both quantizers. With a
    ``mesh``, the form gathers FSDP-stored weights packed and keeps activations split by batch; ``remat``
    names the layer rematerialization policy; ``blend`` (a traced lambda) blends both quantizers in."""
    form = Form(quantize=quantize, layer_transform=remat_transform(remat))
    if mesh is not None:
        form = dataclasses.replace(form, weight_quantizer=fsdp.weight_quantizer(mesh),
                                   shard_batch=batch_constraint(mesh))
    if blend is not None:
        form = dataclasses.replace(form, weight_quantizer=blended(form.weight_quantizer, blend),
                                   activation_quantizer=blended(form.activation_quantizer, blend))
    return Transformer(model_cfg, form)


def batch_nll(module: Transformer, params, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """(sum of the weighted float32 next-token nll, sum of the weights) of a batch of ``[B, T]`` arrays."""
    logits, _ = module.apply({"params": params}, batch["inputs"], batch["positions"],
                             segment_ids=batch["segments"])
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, batch["targets"][..., None], axis=-1)[..., 0]
    weights = batch["weights"].astype(jnp.float32)
    return jnp.sum(nll * weights), jnp.sum(weights)


def windows_batch(windows: jax.Array) -> dict[str, jax.Array]:
    """A batch of plain ``[B, T + 1]`` token windows: one document per row, every target trained."""
    windows = jnp.asarray(windows)
    b, t = windows.shape[0], windows.shape[1] - 1
    return {
        "inputs": windows[:, :-1],
        "targets": windows[:, 1:],
        "weights": jnp.ones((b, t), jnp.float32),
        "positions": jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t)),
        "segments": jnp.ones((b, t), jnp.int32),
    }


def token_nll(module: Transformer, params, windows: jax.Array) -> jax.Array:
    """Mean float32 next-token cross-entropy of ``windows [B, T + 1]``."""
    total, count = batch_nll(module, params, windows_batch(windows))
    return total / count


def init_state(cfg: TrainConfig, model_cfg: ModelConfig, tx: optax.GradientTransformation, params=None) -> State:
    """Parameters (``params``, else fresh ones seeded by ``training.seed``), optimizer state, step 0, RNG key."""
    key = jax.random.PRNGKey(cfg.training.seed)
    init_key, rng = jax.random.split(key)
    if params is None:
        dummy = jnp.zeros((1, min(8, cfg.data.seq_len)), jnp.int32)
        params = make_module(model_cfg).init(init_key, dummy)["params"]
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32), "rng": rng}


BATCH_KEYS = ("inputs", "targets", "weights", "positions", "segments")


def batch_sharding(mesh: Mesh) -> dict[str, NamedSharding]:
    """Shard each ``[accum, micro_batch, T]`` batch array along the micro-batch axis over ``data`` x ``fsdp``."""
    return {k: NamedSharding(mesh, P(None, BATCH_AXES, None)) for k in BATCH_KEYS}


def eval_sharding(mesh: Mesh) -> dict[str, NamedSharding]:
    """Shard each ``[B, T]`` evaluation batch array by rows over ``data`` x ``fsdp``."""
    return {k: NamedSharding(mesh, P(BATCH_AXES, None)) for k in BATCH_KEYS}


def abstract_batch(cfg: TrainConfig, mesh: Mesh) -> dict[str, jax.ShapeDtypeStruct]:
    """The shapes, dtypes and shardings of one step's batch (for compiling without data)."""
    accum, seq = cfg.training.grad_accum, cfg.data.seq_len
    shape = (accum, cfg.training.batch_size // accum, seq)
    sh = batch_sharding(mesh)
    return {k: jax.ShapeDtypeStruct(shape, np.float32 if k == "weights" else np.int32, sharding=sh[k])
            for k in BATCH_KEYS}


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated placement."""
    return NamedSharding(mesh, P())


def state_shardings(state: Any, tx: optax.GradientTransformation, mesh: Mesh) -> Any:
    """Shardings for a training state (arrays or shapes): parameters and their optimizer moments by the
    rules of :data:`bitnet_jax.parallel.rules.PARAM_RULES`, everything else (step, RNG, counters) replicated."""
    params = param_shardings(state["params"], mesh)
    rep = replicated(mesh)
    opt = optax.tree_map_params(tx, lambda _, s: s, state["opt_state"], params, transform_non_params=lambda _: rep)
    return {"params": params, "opt_state": opt, "step": rep, "rng": rep}


def abstract_state(cfg: TrainConfig, model_cfg: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh) -> State:
    """The state's shapes, dtypes and shardings (what a checkpoint is restored into), without computing it."""
    shapes = jax.eval_shape(lambda: init_state(cfg, model_cfg, tx))
    return jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, state_shardings(shapes, tx, mesh)
    )


def sharded_init(cfg: TrainConfig, model_cfg: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh,
                 params=None) -> State:
    """A state created directly in its shardings (no device ever holds the whole of a split tensor): fresh
    parameters, or ``params`` (host arrays of a checkpoint, placed shard by shard)."""
    shardings = jax.tree_util.tree_map(lambda s: s.sharding, abstract_state(cfg, model_cfg, tx, mesh))
    if params is None:
        return jax.jit(lambda: init_state(cfg, model_cfg, tx), out_shardings=shardings)()
    placed = place(params, shardings["params"])
    return jax.jit(lambda p: init_state(cfg, model_cfg, tx, p), out_shardings=shardings, donate_argnums=0)(placed)


def check_mesh(cfg: TrainConfig, mesh: Mesh) -> None:
    """The micro-batch must split evenly over the batch axes of ``mesh``."""
    micro = cfg.training.batch_size // cfg.training.grad_accum
    ways = math.prod(mesh.shape[a] for a in BATCH_AXES)
    if micro % ways:
        raise ConfigError(
            f"training.batch_size: the micro-batch ({micro} = batch_size / grad_accum) must be divisible by "
            f"mesh data x fsdp = {ways} (mesh {dict(mesh.shape)})"
        )


def quant_blend(cfg: TrainConfig, step: jax.Array) -> jax.Array:
    """The quantization warm-up's ``lambda`` at ``step``: ``step / quant_warmup_steps``, capped at 1."""
    return jnp.minimum(1.0, step.astype(jnp.float32) / max(cfg.training.quant_warmup_steps, 1))


def make_train_step(cfg: TrainConfig, model_cfg: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh,
                    warmup: bool = False):
    """The jitted ``step(state, batch) -> (state, metrics)`` for a batch of ``[accum, micro, T]`` arrays.

    ``warmup``: the program of the quantization warm-up steps (both quantizers blended in by
    :func:`quant_blend`); the loss is averaged over every weighted target of the whole batch.
    """
    lr = learning_rate_schedule(cfg)
    t = cfg.training
    shardings = jax.tree_util.tree_map(lambda s: s.sharding, abstract_state(cfg, model_cfg, tx, mesh))

    def stored(grads):  # gradients and their accumulator split like the parameters, never whole per device
        return jax.lax.with_sharding_constraint(grads, shardings["params"])

    def step(state: State, batch: dict[str, jax.Array]):
        params = state["params"]
        blend = quant_blend(cfg, state["step"]) if warmup else None
        module = make_module(model_cfg, t.quantize, mesh, t.remat, blend)
        count = jnp.maximum(jnp.sum(batch["weights"]), 1.0)  # the weighted targets of the whole batch

        def loss_fn(p, micro_batch):
            total, _ = batch_nll(module, p, micro_batch)
            return total / count

        grad_fn = jax.value_and_grad(loss_fn)

        def micro(acc, micro_batch):
            loss, grads = grad_fn(params, micro_batch)
            return stored(jax.tree_util.tree_map(jnp.add, acc, stored(grads))), loss

        zeros = stored(jax.tree_util.tree_map(jnp.zeros_like, params))
        grads, losses = jax.lax.scan(micro, zeros, batch)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new = {
            "params": optax.apply_updates(params, updates),
            "opt_state": opt_state,
            "step": state["step"] + 1,
            "rng": jax.random.fold_in(state["rng"], state["step"]),
        }
        metrics = {"loss": jnp.sum(losses), "grad_norm": optax.tree.norm(grads), "lr": lr(state["step"]),
                   "tokens": count}
        if warmup:
            metrics["quant_blend"] = blend
        return new, metrics

    rep = replicated(mesh)
    return jax.jit(step, in_shardings=(shardings, batch_sharding(mesh)), out_shardings=(shardings, rep),
                   donate_argnums=0)


def make_eval_step(cfg: TrainConfig, model_cfg: ModelConfig, mesh: Mesh):
    """The jitted ``eval(params, batch of [B, T] arrays) -> (weighted nll sum, weight sum)``."""
    module = make_module(model_cfg, cfg.training.quantize, mesh)
    tx = make_optimizer(cfg)
    params = jax.tree_util.tree_map(lambda s: s.sharding, abstract_state(cfg, model_cfg, tx, mesh)["params"])
    return jax.jit(
        lambda p, b: batch_nll(module, p, b),
        in_shardings=(params, eval_sharding(mesh)),
        out_shardings=replicated(mesh),
    )
