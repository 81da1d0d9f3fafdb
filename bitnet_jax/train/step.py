"""One jitted training step: quantization-aware forward/backward (STE), AdamW, clipping, accumulation.

The model is the core ``Transformer`` in its training form (``Form(kernel=None)``): latent float32
weights, both quantizers applied with the straight-through estimator. The optimizer is ``optax`` AdamW behind global-norm
clipping, with warmup and the BitNet b1.58 two-stage schedule: the learning rate decays (cosine) in stage 1,
drops to ``stage2_lr_scale * lr`` when stage 2 starts and decays again; weight decay is on in stage 1
and off in stage 2. A step takes ``[grad_accum, micro_batch, seq_len + 1]`` tokens and scans over the
micro-batches; the loss is float32 cross-entropy.

Parallelism uses the one mesh vocabulary (axes ``data``, ``fsdp``, ``tensor``): the micro-batch is split
over ``data`` x ``fsdp``; parameters and the AdamW moments are stored by
:data:`~bitnet_jax.parallel.rules.PARAM_RULES` (latent ternary weights split by rows over ``fsdp``), and
the forward pass gathers them packed at 2 bits (:mod:`bitnet_jax.parallel.fsdp`, put into the model's
:class:`~bitnet_jax.model.Form` with the batch constraint); XLA partitions the rest.
"""

from __future__ import annotations

import math
from typing import Any, Callable

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
from bitnet_jax.parallel.rules import param_shardings

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


def make_module(model_cfg: ModelConfig, quantize: bool = True, mesh: Mesh | None = None) -> Transformer:
    """The training-form (latent weight) Transformer; ``quantize=False`` drops both quantizers. With a
    ``mesh``, the form gathers FSDP-stored weights packed and keeps activations split by batch."""
    form = Form(quantize=quantize)
    if mesh is not None:
        form = Form(quantize=quantize, weight_quantizer=fsdp.weight_quantizer(mesh), shard_batch=batch_constraint(mesh))
    return Transformer(model_cfg, form)


def token_nll(module: Transformer, params, windows: jax.Array) -> jax.Array:
    """Mean float32 next-token cross-entropy of ``windows [B, T + 1]``."""
    logits, _ = module.apply({"params": params}, windows[:, :-1])
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, windows[:, 1:, None], axis=-1)[..., 0]
    return jnp.mean(nll)


def init_state(cfg: TrainConfig, model_cfg: ModelConfig, tx: optax.GradientTransformation) -> State:
    """Fresh parameters (seeded by ``training.seed``), optimizer state, step 0 and the RNG key."""
    key = jax.random.PRNGKey(cfg.training.seed)
    init_key, rng = jax.random.split(key)
    dummy = jnp.zeros((1, min(8, cfg.data.seq_len)), jnp.int32)
    params = make_module(model_cfg).init(init_key, dummy)["params"]
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32), "rng": rng}


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Shard ``[accum, micro_batch, T + 1]`` batches along the micro-batch axis over ``data`` x ``fsdp``."""
    return NamedSharding(mesh, P(None, BATCH_AXES, None))


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


def sharded_init(cfg: TrainConfig, model_cfg: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh) -> State:
    """A fresh state created directly in its shardings (no device ever holds the whole of a split tensor)."""
    shardings = jax.tree_util.tree_map(lambda s: s.sharding, abstract_state(cfg, model_cfg, tx, mesh))
    return jax.jit(lambda: init_state(cfg, model_cfg, tx), out_shardings=shardings)()


def check_mesh(cfg: TrainConfig, mesh: Mesh) -> None:
    """The micro-batch must split evenly over the batch axes of ``mesh``."""
    micro = cfg.training.batch_size // cfg.training.grad_accum
    ways = math.prod(mesh.shape[a] for a in BATCH_AXES)
    if micro % ways:
        raise ConfigError(
            f"training.batch_size: the micro-batch ({micro} = batch_size / grad_accum) must be divisible by "
            f"mesh data x fsdp = {ways} (mesh {dict(mesh.shape)})"
        )


def make_train_step(cfg: TrainConfig, model_cfg: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh):
    """The jitted ``step(state, batch) -> (state, metrics)`` for ``batch [accum, micro, T + 1]``."""
    module = make_module(model_cfg, cfg.training.quantize, mesh)
    lr = learning_rate_schedule(cfg)
    grad_fn = jax.value_and_grad(lambda p, w: token_nll(module, p, w))

    def step(state: State, batch: jax.Array):
        params = state["params"]

        def micro(acc, windows):
            loss, grads = grad_fn(params, windows)
            return jax.tree_util.tree_map(jnp.add, acc, grads), loss

        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        grads, losses = jax.lax.scan(micro, zeros, batch)
        grads = jax.tree_util.tree_map(lambda g: g / batch.shape[0], grads)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new = {
            "params": optax.apply_updates(params, updates),
            "opt_state": opt_state,
            "step": state["step"] + 1,
            "rng": jax.random.fold_in(state["rng"], state["step"]),
        }
        metrics = {"loss": jnp.mean(losses), "grad_norm": optax.tree.norm(grads), "lr": lr(state["step"])}
        return new, metrics

    shardings = jax.tree_util.tree_map(lambda s: s.sharding, abstract_state(cfg, model_cfg, tx, mesh))
    rep = replicated(mesh)
    return jax.jit(step, in_shardings=(shardings, batch_sharding(mesh)), out_shardings=(shardings, rep),
                   donate_argnums=0)


def make_eval_step(cfg: TrainConfig, model_cfg: ModelConfig, mesh: Mesh):
    """The jitted ``eval(params, windows [B, T + 1]) -> mean nll``."""
    module = make_module(model_cfg, cfg.training.quantize, mesh)
    tx = make_optimizer(cfg)
    params = jax.tree_util.tree_map(lambda s: s.sharding, abstract_state(cfg, model_cfg, tx, mesh)["params"])
    return jax.jit(
        lambda p, w: token_nll(module, p, w),
        in_shardings=(params, NamedSharding(mesh, P(BATCH_AXES, None))),
        out_shardings=replicated(mesh),
    )
