"""The pure train step and the optimizer builder against float64 numpy references."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.core import init
from jaxlm.train import (
    OptimConfig,
    create_state,
    lm_loss_fn,
    make_optimizer,
    make_schedule,
    make_train_step,
    path_mask,
)
from jaxlm.train.metrics import NonFiniteError, check_finite, flops_per_token
from jaxlm.train.presets import TRAIN

N, D = 16, 5


def _regression(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, D))
    y = rng.normal(size=(N,))
    w0 = rng.normal(size=(D,))
    return x, y, w0


def _mse_loss(params, batch, rng):
    del rng
    r = batch["x"] @ params["w"] - batch["y"]
    return jnp.mean(r * r), jnp.asarray(batch["y"].shape[0], jnp.float32)


def _np_grad(w, x, y):
    return 2.0 * x.T @ (x @ w - y) / len(y)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_step_matches_numpy_float64(name):
    x, y, w0 = _regression(1)
    cfg = OptimConfig(name=name, lr=0.05, warmup_steps=0, min_lr_ratio=1.0, b1=0.9, b2=0.99,
                      eps=1e-8, weight_decay=0.01 if name == "adamw" else 0.0, no_decay=(),
                      clip_norm=0.0)
    tx, lr_fn = make_optimizer(cfg, total_steps=10)
    step = jax.jit(make_train_step(_mse_loss, tx, lr_fn=lr_fn), donate_argnums=0)
    state = create_state({"w": jnp.asarray(w0, jnp.float32)}, tx)
    batch = {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(y, jnp.float32)}
    w, m, v, mom = w0.copy(), np.zeros(D), np.zeros(D), np.zeros(D)
    for t in range(1, 4):
        g = _np_grad(w, x, y)
        state, metrics = step(state, batch, jax.random.key(0))
        np.testing.assert_allclose(float(metrics["grad_norm"]), np.linalg.norm(g), rtol=1e-4)
        np.testing.assert_allclose(float(metrics["loss"]), np.mean((x @ w - y) ** 2), rtol=1e-4)
        if name == "sgd":
            mom = 0.9 * mom + g
            upd = -0.05 * mom
        else:
            m = 0.9 * m + 0.1 * g
            v = 0.99 * v + 0.01 * g * g
            mh, vh = m / (1 - 0.9**t), v / (1 - 0.99**t)
            upd = -0.05 * (mh / (np.sqrt(vh) + 1e-8) + 0.01 * w)
        w = w + upd
        np.testing.assert_allclose(float(metrics["update_norm"]), np.linalg.norm(upd), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(state.params["w"]), w, rtol=1e-4, atol=1e-6)
    assert int(state.step) == 3


def test_schedule_warmup_then_cosine():
    cfg = OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    f = make_schedule(cfg, total_steps=110)
    np.testing.assert_allclose(float(f(5)), 0.5, rtol=1e-6)
    np.testing.assert_allclose(float(f(10)), 1.0, rtol=1e-6)
    mid = 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 0.5))
    np.testing.assert_allclose(float(f(60)), mid, rtol=1e-5)
    np.testing.assert_allclose(float(f(110)), 0.1, rtol=1e-5)


def test_decay_mask_by_path():
    cfg = TRAIN.get("tiny-gpt_test").model
    params = jax.eval_shape(lambda k: init(k, cfg), jax.random.key(0))
    mask = path_mask(params, OptimConfig().no_decay, match=False)
    assert mask["layers"][1]["attn"]["wq"] is True
    assert mask["layers"][0]["mlp"]["w_up"] is True
    assert mask["layers"][0]["attn"]["bq"] is False
    assert mask["layers"][0]["attn_norm"]["scale"] is False
    assert mask["embed"] is False and mask["pos_embed"] is False


def test_weight_decay_only_on_masked():
    params = {"w": jnp.ones((3,)), "norm": {"scale": jnp.ones((3,))}}
    cfg = OptimConfig(name="sgd", lr=0.1, warmup_steps=0, min_lr_ratio=1.0, b1=0.0,
                      weight_decay=0.5, no_decay=("norm",), clip_norm=0.0)
    tx, _ = make_optimizer(cfg, 10)
    zeros = jax.tree.map(jnp.zeros_like, params)
    upd, _ = tx.update(zeros, tx.init(params), params)
    np.testing.assert_allclose(np.asarray(upd["w"]), -0.05 * np.ones(3), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(upd["norm"]["scale"]), np.zeros(3))


def test_grad_accumulation_equals_large_batch():
    tc = TRAIN.get("tiny_test")
    cfg = tc.model
    optim = dataclasses.replace(tc.optim, name="adafactor")
    tx, lr_fn = make_optimizer(optim, 10)
    loss_fn = lm_loss_fn(cfg)
    rng = np.random.default_rng(2)
    toks = rng.integers(0, 257, size=(8, 17))
    batch = {"inputs": jnp.asarray(toks[:, :-1], jnp.int32),
             "targets": jnp.asarray(toks[:, 1:], jnp.int32)}
    params = init(jax.random.key(3), cfg)
    outs = []
    for accum in (1, 4):
        step = jax.jit(make_train_step(loss_fn, tx, lr_fn=lr_fn, grad_accum=accum))
        state = create_state(params, tx)
        for _ in range(2):
            state, metrics = step(state, batch, jax.random.key(0))
        outs.append((state.params, metrics))
    chex.assert_trees_all_close(outs[0][0], outs[1][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(outs[0][1]["loss"]), float(outs[1][1]["loss"]), rtol=1e-5)
    assert float(outs[1][1]["tokens"]) == 8 * 16


def test_masked_tokens_do_not_count_and_no_retrace():
    tc = TRAIN.get("tiny_test")
    tx, lr_fn = make_optimizer(tc.optim, 10)
    loss_fn = lm_loss_fn(tc.model)
    rng = np.random.default_rng(4)
    toks = rng.integers(0, 257, size=(4, 9))
    mask = np.ones((4, 8), np.float32)
    mask[:, 5:] = 0
    batch = {"inputs": jnp.asarray(toks[:, :-1]), "targets": jnp.asarray(toks[:, 1:]),
             "mask": jnp.asarray(mask)}
    params = init(jax.random.key(5), tc.model)
    loss, w = loss_fn(params, batch, None)
    short = {"inputs": batch["inputs"][:, :5], "targets": batch["targets"][:, :5]}
    loss_short, _ = loss_fn(params, short, None)  # causal: first 5 logits unchanged
    np.testing.assert_allclose(float(loss), float(loss_short), rtol=1e-5)
    assert float(w) == 20.0

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(state, batch, rng):
        return make_train_step(loss_fn, tx, lr_fn=lr_fn)(state, batch, rng)

    state = create_state(params, tx)
    for _ in range(3):
        state, metrics = step(state, batch, jax.random.key(0))
    assert int(state.step) == 3 and float(metrics["tokens"]) == 20.0


def test_check_finite_names_the_step():
    check_finite({"loss": 1.0}, 10)
    with pytest.raises(NonFiniteError, match="step 30 .*finite at step 20"):
        check_finite({"loss": float("nan"), "grad_norm": 1.0}, 30, last_ok=20)


def test_flops_per_token_counts_matmuls():
    cfg = TRAIN.get("20m").model
    n_matmul = cfg.num_params() - 2 * cfg.n_layers * cfg.d_model - cfg.d_model  # minus norms
    attn = 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * 256
    np.testing.assert_allclose(flops_per_token(cfg, 256), 6 * n_matmul + attn, rtol=1e-9)
    assert 19e6 < cfg.num_params() < 21e6
