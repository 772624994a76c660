"""Population training for grid models: ``jaxlm.train.make_train_step``, vmapped.

Trains a *population* of members (learning rates x seeds) in one compiled
program: parameters are stacked along a leading member axis and the step is
``jax.vmap``-ed, so one compile serves the whole LR sweep and all seeds.
Each member draws its own batches (sampled with replacement inside the step
from its own key) and its own init.

Optimiser for every model: clip(grad_clip) -> Adam -> decoupled weight decay
(matrices only; not A_log, pos_embed, norms, biases, Dskip) -> warmup + cosine
schedule, multiplied by the member's peak LR (a traced value in its optimizer state,
via ``optax.inject_hyperparams``, not static).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from jaxlm.train import create_state, make_train_step

NO_DECAY = ("A_log", "pos_embed", "log_dt", "D", "dt_b", "scale", "bias")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Attributes:
        steps: optimiser steps.
        batch_size: examples per step per member.
        warmup: linear warm-up steps.
        weight_decay: AdamW decoupled decay on matrices.
        grad_clip: global-norm clip.
        eval_every: steps between validation evaluations (learning curves).
        shift_aug: random +-shift (pixels, circular) on the last two spatial axes; 0 = off.
        task: "cls" (cross-entropy, accuracy) or "forecast" (MSE on the increment, RMSE).
        eval_batch: evaluation batch size.
    """

    steps: int = 300
    batch_size: int = 32
    warmup: int = 20
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    eval_every: int = 50
    shift_aug: int = 0
    task: str = "cls"
    eval_batch: int = 256


def decay_mask(params) -> Any:
    flat = traverse_util.flatten_dict(_as_dict(params))
    mask = {k: (v.ndim >= 2 and not any(str(p) in NO_DECAY for p in k)) for k, v in flat.items()}
    return _from_like(params, traverse_util.unflatten_dict(mask))


def _as_dict(tree):
    """Lists -> dicts with str keys (flax.traverse_util needs dicts)."""
    if isinstance(tree, dict):
        return {k: _as_dict(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return {str(i): _as_dict(v) for i, v in enumerate(tree)}
    return tree


def _from_like(like, d):
    if isinstance(like, dict):
        return {k: _from_like(v, d[k]) for k, v in like.items()}
    if isinstance(like, (list, tuple)):
        return type(like)(_from_like(v, d[str(i)]) for i, v in enumerate(like))
    return d


def make_optimizer(tcfg: TrainConfig, params) -> optax.GradientTransformation:
    sched = optax.warmup_cosine_decay_schedule(0.0, 1.0, tcfg.warmup, tcfg.steps, 0.01)
    return optax.chain(
        optax.clip_by_global_norm(tcfg.grad_clip),
        optax.scale_by_adam(),
        optax.add_decayed_weights(tcfg.weight_decay, mask=decay_mask(params)),
        optax.scale_by_schedule(sched),
    )


def _augment(key, x, shift: int):
    """Random circular shift in [-shift, shift] of the last two spatial axes, per example."""
    if shift == 0:
        return x
    s = jax.random.randint(key, (x.shape[0], 2), -shift, shift + 1)
    ax_h, ax_w = x.ndim - 3, x.ndim - 2
    return jax.vmap(lambda xi, si: jnp.roll(xi, (si[0], si[1]), (ax_h - 1, ax_w - 1)))(x, s)


def loss_and_metric(task: str, out, y):
    if task == "cls":
        loss = optax.softmax_cross_entropy_with_integer_labels(out, y).mean()
        return loss, (jnp.argmax(out, -1) == y).astype(jnp.float32)
    err = (out - y) ** 2
    return err.mean(), err.reshape(err.shape[0], -1).mean(-1)


def train_population(
    init_fn: Callable,
    predict_fn: Callable,
    tcfg: TrainConfig,
    data: dict,
    lrs: list[float],
    seeds: list[int],
    *,
    progress: Callable[..., Any] | None = None,
    desc: str = "",
) -> dict:
    """Trains len(lrs) * len(seeds) members.

    Args:
        init_fn: key -> params.
        predict_fn: (params, x) -> logits [B, K] (cls) or predictions (forecast).
        tcfg: training config.
        data: {"train"|"val"|"test": (x, y)} numpy arrays.
        lrs, seeds: the sweep; member m has lr lrs[m // len(seeds)], seed seeds[m % len(seeds)].
        progress: ``progress(total=, desc=)`` -> tqdm-like bar.

    Returns:
        dict with "lr", "seed" per member, "curve_steps", "train_loss" [E, P],
        "val_curve" [E, P] (accuracy or RMSE), "val", "test" [P] final metrics,
        "train_seconds" (excluding the first, compiling chunk), "compile_seconds".
    """
    if tcfg.task not in ("cls", "forecast"):
        raise ValueError(f"TrainConfig.task must be 'cls' or 'forecast', got {tcfg.task!r}")
    if tcfg.steps % tcfg.eval_every:
        raise ValueError(f"steps={tcfg.steps} must be a multiple of eval_every={tcfg.eval_every}")
    member_lr = np.repeat(np.asarray(lrs, np.float32), len(seeds))
    member_seed = np.tile(np.asarray(seeds), len(lrs))
    keys = jax.vmap(jax.random.key)(jnp.asarray(member_seed))
    k_init = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
    k_data = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    params = jax.jit(jax.vmap(init_fn))(k_init)
    one = jax.tree.map(lambda p: p[0], params)
    lr_arr = jnp.asarray(member_lr)
    # the member's lr lives in its optimizer state, so one vmapped train step serves all
    tx = optax.inject_hyperparams(
        lambda learning_rate: optax.chain(make_optimizer(tcfg, one),
                                          optax.scale(-learning_rate)))(learning_rate=1.0)

    def member_state(p, lr):
        st = create_state(p, tx)
        hyper = {**st.opt_state.hyperparams, "learning_rate": lr}
        return st.replace(opt_state=st.opt_state._replace(hyperparams=hyper))

    state = jax.jit(jax.vmap(member_state))(params, lr_arr)
    xtr, ytr = (jnp.asarray(a) for a in data["train"])
    ntr = xtr.shape[0]

    def loss_fn(p, batch, rng):
        del batch  # sampled here from the member's key (folded with the step by the step)
        kb, ka = jax.random.split(rng)
        idx = jax.random.randint(kb, (tcfg.batch_size,), 0, ntr)
        xb, yb = _augment(ka, xtr[idx], tcfg.shift_aug), ytr[idx]
        loss = loss_and_metric(tcfg.task, predict_fn(p, xb), yb)[0]
        return loss, jnp.ones((), jnp.float32)

    vstep = jax.vmap(make_train_step(loss_fn, tx), in_axes=(0, None, 0))

    @jax.jit
    def run_chunk(st):
        def body(st, _):
            st, metrics = vstep(st, {}, k_data)
            return st, metrics["loss"]

        st, losses = jax.lax.scan(body, st, None, length=tcfg.eval_every)
        return st, losses.mean(0)

    @jax.jit
    def eval_batch(p, x, y):
        out = jax.vmap(lambda pi: predict_fn(pi, x))(p)
        return jax.vmap(lambda oi: loss_and_metric(tcfg.task, oi, y)[1])(out)  # [P, b]

    def evaluate(p, split):
        x, y = data[split]
        vals = []
        bs = tcfg.eval_batch
        n = len(x)
        for i in range(0, n, bs):
            xb, yb = x[i:i + bs], y[i:i + bs]
            pad = bs - len(xb) if n > bs else 0
            if pad:  # keep one compiled shape
                xb = np.concatenate([xb, xb[:pad]])
                yb = np.concatenate([yb, yb[:pad]])
            v = np.asarray(eval_batch(p, jnp.asarray(xb), jnp.asarray(yb)))
            vals.append(v[:, : v.shape[1] - pad])
        m = np.concatenate(vals, 1).mean(1)
        return m if tcfg.task == "cls" else np.sqrt(m)

    n_chunks = tcfg.steps // tcfg.eval_every
    bar = progress(total=n_chunks, desc=desc) if progress else None
    curves, losses, steps = [], [], []
    t_compile = t_train = 0.0
    for c in range(n_chunks):
        t0 = time.perf_counter()
        state, loss = run_chunk(state)
        params = state.params
        loss = np.asarray(loss)
        dt = time.perf_counter() - t0
        if c == 0:
            t_compile = dt
        else:
            t_train += dt
        if not np.isfinite(loss).all():
            bad = np.flatnonzero(~np.isfinite(loss)).tolist()
            loss = np.where(np.isfinite(loss), loss, np.nan)
            if len(bad) == len(loss):
                raise FloatingPointError(f"{desc}: all members diverged by step "
                                         f"{(c + 1) * tcfg.eval_every}")
        losses.append(loss)
        curves.append(evaluate(params, "val"))
        steps.append((c + 1) * tcfg.eval_every)
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    per_chunk = t_train / max(1, n_chunks - 1)
    return {
        "lr": member_lr, "seed": member_seed, "curve_steps": np.asarray(steps),
        "train_loss": np.stack(losses), "val_curve": np.stack(curves),
        "val": curves[-1], "test": evaluate(params, "test"),
        "compile_seconds": t_compile, "train_seconds_est": per_chunk * n_chunks,
        "step_seconds": per_chunk / tcfg.eval_every, "params": params,
    }


def select_lr(res: dict, higher_is_better: bool) -> dict:
    """Best LR by mean validation metric over seeds; test metric of that LR's seeds."""
    lrs = np.unique(res["lr"])
    val = np.asarray(res["val"], np.float64)
    val = np.where(np.isfinite(val), val, -np.inf if higher_is_better else np.inf)
    means = [val[res["lr"] == lr].mean() for lr in lrs]
    best = lrs[int(np.argmax(means) if higher_is_better else np.argmin(means))]
    sel = res["lr"] == best
    return {"lr": float(best), "val": res["val"][sel], "test": res["test"][sel],
            "members": np.flatnonzero(sel)}
