"""The pure training step: ``train_step(state, batch, rng) -> (state, metrics)``.

Build it once with everything static bound in::

    tx, lr_fn = make_optimizer(cfg.optim, cfg.steps)
    step_fn = make_train_step(lm_loss_fn(model_cfg), tx, lr_fn=lr_fn, grad_accum=2)
    step = jax.jit(step_fn, donate_argnums=0)          # or parallel.gspmd_step / shard_map_step
    state, metrics = step(state, {"inputs": x, "targets": y}, rng)

Any model trains through it: a ``loss_fn(params, batch, rng) -> (loss, weight)``
returns the mean loss over its micro-batch and the number of items averaged
(tokens, examples). Micro-batches and devices are combined weighted by
``weight``, so gradient accumulation and data parallelism give the gradient
of the mean over the whole batch. Metrics are device scalars; pull them to the
host only at log steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxlm.core import ModelConfig, apply, embed, run_blocks, unembed
from jaxlm.train.optim import global_norm
from jaxlm.train.state import TrainState

Batch = dict[str, jax.Array]
LossFn = Callable[[Any, Batch, jax.Array], tuple[jax.Array, jax.Array]]
StepFn = Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict[str, jax.Array]]]


def lm_loss_fn(model_cfg: ModelConfig) -> LossFn:
    """Next-token cross-entropy of the jaxlm Transformer.

    The batch holds ``inputs`` [B, T] and ``targets`` [B, T] int32 and optionally
    ``mask`` [B, T] (1 = count this target). With ``at`` [B, N] (slot predicting each
    target), ``targets``/``mask`` are [B, N] and the LM head runs at those slots only
    (e.g. a command after a long prompt: N x V logits instead of T x V).

    Returns:
        ``loss_fn(params, batch, rng) -> (mean loss over counted tokens, token count)``.
    """

    def loss_fn(params, batch: Batch, rng: jax.Array):
        del rng  # the model has no dropout
        if "at" in batch:  # head only at the scored slots
            toks = batch["inputs"]
            pos = jnp.broadcast_to(jnp.arange(toks.shape[1], dtype=jnp.int32), toks.shape)
            x = run_blocks(params, model_cfg, embed(params, model_cfg, toks, pos),
                           positions=pos).x
            logits = unembed(params, model_cfg, x, at=batch["at"])  # [B, N, V]
        else:
            logits = apply(params, model_cfg, batch["inputs"]).logits  # [B, T, V] f32
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])  # [B, T]
        mask = batch.get("mask")
        mask = jnp.ones_like(ce) if mask is None else mask.astype(ce.dtype)
        weight = jnp.sum(mask)
        return jnp.sum(ce * mask) / jnp.maximum(weight, 1.0), weight

    return loss_fn


def split_microbatches(batch: Batch, n: int) -> Batch:
    """[B, ...] -> [n, B / n, ...] with micro-batch ``a`` = rows ``a, a + n, ...``.

    Interleaving (rather than contiguous blocks) keeps every micro-batch spread
    over all data-parallel devices when the batch dimension is sharded.
    """

    def split(x):
        b = x.shape[0]
        if b % n:
            raise ValueError(f"batch of {b} rows is not divisible into {n} micro-batches")
        return jnp.swapaxes(x.reshape(b // n, n, *x.shape[1:]), 0, 1)

    return jax.tree.map(split, batch)


def make_train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    *,
    lr_fn: Callable[[jax.Array], jax.Array] | None = None,
    grad_accum: int = 1,
    axis_name: str | tuple[str, ...] | None = None,
) -> StepFn:
    """Builds the pure step ``train_step(state, batch, rng) -> (state, metrics)``.

    Args:
        loss_fn: ``(params, batch, rng) -> (mean loss, weight)``.
        tx: the optax transformation (from ``make_optimizer``).
        lr_fn: the schedule, only to report ``lr`` in the metrics.
        grad_accum: micro-batches per step; the batch's leading dim must divide.
        axis_name: mesh axis (or axes) to average over when the step runs inside
            ``jax.shard_map`` (explicit ``lax.pmean``); None under GSPMD / one device.

    Returns:
        The step function. ``rng`` is folded with ``state.step`` inside, so pass
        the same key every step. Metrics (float32 scalars): ``loss``,
        ``grad_norm``, ``param_norm``, ``update_norm``, ``lr``, ``tokens``.
    """
    if grad_accum < 1:
        raise ValueError(f"grad_accum must be >= 1, got {grad_accum}")

    def weighted(params, mb, key):
        loss, w = loss_fn(params, mb, key)
        w = jax.lax.stop_gradient(w).astype(jnp.float32)
        return loss * w, (loss * w, w)

    grad_fn = jax.grad(weighted, has_aux=True)

    def train_step(state: TrainState, batch: Batch, rng: jax.Array):
        rng = jax.random.fold_in(rng, state.step)
        params = state.params
        if axis_name is not None:
            # Inside shard_map the replicated params are "invariant"; differentiating a
            # per-device loss w.r.t. them would psum the gradient implicitly. Casting them
            # to "varying" keeps each device's local gradient, averaged explicitly below.
            params = jax.lax.pcast(params, axis_name, to="varying")
        if grad_accum == 1:
            g, (lsum, wsum) = grad_fn(params, batch, rng)
        else:
            mbs = split_microbatches(batch, grad_accum)

            def body(carry, xs):
                g_acc, l_acc, w_acc = carry
                mb, i = xs
                g, (l, w) = grad_fn(params, mb, jax.random.fold_in(rng, i))
                g_acc = jax.tree.map(lambda a, b: a + b.astype(a.dtype), g_acc, g)
                return (g_acc, l_acc + l, w_acc + w), None

            # The first micro-batch seeds the carry (so under shard_map it already has the
            # per-device "varying" type the loop body produces).
            first = jax.tree.map(lambda x: x[0], mbs)
            g0, (l0, w0) = grad_fn(params, first, jax.random.fold_in(rng, 0))
            init = (jax.tree.map(lambda x: x.astype(jnp.float32), g0), l0, w0)
            rest = jax.tree.map(lambda x: x[1:], mbs)
            (g, lsum, wsum), _ = jax.lax.scan(body, init, (rest, jnp.arange(1, grad_accum)))
        tokens = wsum
        if axis_name is not None:
            g = jax.lax.pmean(g, axis_name)
            lsum = jax.lax.pmean(lsum, axis_name)
            wsum = jax.lax.pmean(wsum, axis_name)
            tokens = jax.lax.psum(tokens, axis_name)
        denom = jnp.maximum(wsum, 1e-9)
        grads = jax.tree.map(lambda x, p: (x / denom).astype(p.dtype), g, state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": lsum / denom,
            "grad_norm": global_norm(grads),
            "param_norm": global_norm(new_params),
            "update_norm": global_norm(updates),
            "lr": (lr_fn(state.step) if lr_fn is not None else jnp.nan) * jnp.ones((), jnp.float32),
            "tokens": tokens,
        }
        new_state = state.replace(params=new_params, opt_state=opt_state, step=state.step + 1)
        return new_state, {k: v.astype(jnp.float32) for k, v in metrics.items()}

    return train_step


def make_eval_step(loss_fn: LossFn) -> Callable[[Any, Batch], dict[str, jax.Array]]:
    """``eval_step(params, batch) -> {"loss_sum", "weight"}`` (sum over batches, then divide)."""

    def eval_step(params, batch: Batch):
        loss, w = loss_fn(params, batch, jax.random.key(0))
        w = w.astype(jnp.float32)
        return {"loss_sum": loss * w, "weight": w}

    return eval_step


def jit_train_step(step_fn: StepFn) -> StepFn:
    """Single-device / default-placement jit with the state donated."""
    return jax.jit(step_fn, donate_argnums=0)
