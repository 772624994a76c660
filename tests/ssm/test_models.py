"""Mamba block, Mamba LM decoding, Mamba-ND orderings/layers, baselines."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.ssm import baselines, mamba_nd
from jaxlm.ssm.layers import count_params
from jaxlm.ssm.mamba import (
    LM_PRESETS,
    MambaConfig,
    block_init,
    init_mixer,
    layer_param_count,
    lm_apply,
    lm_init,
    lm_init_cache,
    lm_step,
)
from jaxlm.ssm.mamba_nd import NDConfig, Order, cycle_orders, flatten, layer_orders, unflatten


@pytest.mark.parametrize("d_model, expected", [(64, 32768), (128, 116736), (384, 964608),
                                               (768, 3772416)])
def test_layer_param_count_matches_spec_formula_and_table(d_model, expected):
    cfg = MambaConfig(d_model=d_model)
    shapes = jax.eval_shape(lambda k: block_init(k, cfg), jax.random.key(0))
    n = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
    assert n == layer_param_count(d_model) == expected


def test_mixer_init_follows_reference():
    cfg = MambaConfig(d_model=32, d_state=8)
    p = init_mixer(jax.random.key(1), cfg)
    np.testing.assert_allclose(np.exp(p["A_log"][3]), np.arange(1, 9), rtol=1e-6)
    np.testing.assert_array_equal(p["D"], 1.0)
    dt = np.log1p(np.exp(np.asarray(p["dt_b"], np.float64)))  # softplus(inverse softplus(dt))
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
    assert np.std(np.log(dt)) > 0.5  # log-uniform spread, not constant
    assert p["conv_w"].shape == (4, 64) and np.abs(p["conv_w"]).max() <= 0.5  # U(+-1/sqrt(4))
    assert p["x_proj"].shape == (64, cfg.rank + 16)


def test_lm_decode_matches_parallel_forward_and_prefill():
    cfg = LM_PRESETS.get("mamba_130m_test")
    params = lm_init(jax.random.key(0), cfg)
    tok = jax.random.randint(jax.random.key(1), (2, 10), 0, cfg.vocab_size)
    logits = lm_apply(params, cfg, tok)
    cache = lm_init_cache(cfg, 2)
    step = jax.jit(lambda c, t: lm_step(params, cfg, c, t))
    for t in range(10):
        cache, lg = step(cache, tok[:, t])
        np.testing.assert_allclose(lg, logits[:, t], atol=2e-5, rtol=2e-5)
    _, states = lm_apply(params, cfg, tok[:, :6], return_state=True)  # prefill then decode
    for t in range(6, 10):
        states, lg = step(states, tok[:, t])
        np.testing.assert_allclose(lg, logits[:, t], atol=2e-5, rtol=2e-5)


def test_lm_rejects_float_tokens():
    cfg = LM_PRESETS.get("mamba_130m_test")
    params = lm_init(jax.random.key(0), cfg)
    with pytest.raises(ValueError, match="integer array"):
        lm_apply(params, cfg, jnp.ones((2, 3)))


def test_cycles_are_the_spec_cycles():
    assert [o.name for o in cycle_orders(2)] == ["(HW)+", "(HW)-", "(WH)+", "(WH)-"]
    assert [o.name for o in cycle_orders(3)] == ["(THW)+", "(THW)-", "(TWH)+", "(TWH)-",
                                                 "(WHT)+", "(WHT)-"]
    assert [o.name for o in layer_orders(2, 5)] == ["(HW)+", "(HW)-", "(WH)+", "(WH)-", "(HW)+"]
    assert {o.name for o in layer_orders(2, 4, "raster")} == {"(HW)+"}
    assert [o.name for o in layer_orders(2, 3, "bilayer")] == ["(HW)+", "(HW)-", "(HW)+"]


@pytest.mark.parametrize("grid", [(3, 5), (2, 3, 4)])
def test_orderings_are_permutations_and_inverse_restores_grid(grid):
    ids = np.arange(np.prod(grid)).reshape(1, *grid, 1)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, *grid, 3)), jnp.float32)
    seen = set()
    for order in cycle_orders(len(grid)):
        seq = np.asarray(flatten(jnp.asarray(ids), order))[0, :, 0]
        assert sorted(seq.tolist()) == list(range(np.prod(grid)))  # a permutation
        seen.add(tuple(seq.tolist()))
        np.testing.assert_array_equal(unflatten(flatten(x, order), order, grid), x)
    assert len(seen) == len(cycle_orders(len(grid)))  # all distinct
    # explicit meaning: (HW)+ is raster with W fastest; (WH)+ is column-major
    raster = np.asarray(flatten(jnp.asarray(ids), cycle_orders(len(grid))[0]))[0, :, 0]
    np.testing.assert_array_equal(raster, np.arange(np.prod(grid)))
    if len(grid) == 2:
        wh = np.asarray(flatten(jnp.asarray(ids), Order((1, 0), False)))[0, :, 0]
        np.testing.assert_array_equal(wh, ids[0, :, :, 0].T.reshape(-1))


def _tiny(**kw):
    base = NDConfig(grid=(4, 4), d_model=8, depth=1, d_state=4)
    return dataclasses.replace(base, **kw)


@pytest.mark.parametrize("order", cycle_orders(2), ids=lambda o: o.name)
def test_nd_layer_is_causal_along_its_own_order(order):
    """Conv and scan follow the layer's flatten order: a change at sequence position k
    leaves positions < k (in that order) unchanged and changes later ones."""
    cfg = _tiny()
    p = mamba_nd.nd_layer_init(jax.random.key(0), cfg, order)
    x = jax.random.normal(jax.random.key(1), (1, 4, 4, 8))
    k = 6
    pos = np.asarray(flatten(jnp.arange(16.0).reshape(1, 4, 4, 1), order))[0, :, 0].astype(int)
    r, c = divmod(pos[k], 4)
    x2 = x.at[0, r, c].add(jax.random.normal(jax.random.key(2), (8,)))
    f = lambda v: flatten(mamba_nd.nd_layer_apply(p, cfg, v, order), order)
    d = np.abs(np.asarray(f(x2) - f(x))).max(-1)[0]
    assert d[:k].max() < 1e-6 and d[k:].min() > 1e-6


def test_residual_forms():
    cfg = _tiny()
    order = cycle_orders(2)[0]
    p = mamba_nd.nd_layer_init(jax.random.key(0), cfg, order)
    p["out_proj"] = jnp.zeros_like(p["out_proj"])
    x = jax.random.normal(jax.random.key(1), (2, 4, 4, 8)) * 3 + 1
    y_pre = mamba_nd.nd_layer_apply(p, cfg, x, order)
    y_nd = mamba_nd.nd_layer_apply(p, dataclasses.replace(cfg, residual="mamba_nd"), x, order)
    np.testing.assert_allclose(y_pre, x, atol=1e-6)
    xn = (x - x.mean(-1, keepdims=True)) / jnp.sqrt(x.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(y_nd, xn, atol=1e-4)


@pytest.mark.parametrize("patch", [(1, 2), (2, 2, 1)])
def test_patchify_roundtrip(patch):
    grid = (4, 4) if len(patch) == 2 else (2, 4, 6)
    x = jax.random.normal(jax.random.key(0), (2, *grid, 3))
    t = mamba_nd.patchify(x, patch)
    assert t.shape[-1] == np.prod(patch) * 3
    np.testing.assert_array_equal(mamba_nd.unpatchify(t, patch, 3), x)


VARIANTS = [dict(), dict(mixer="bi"), dict(mixer="nd"), dict(mixer="split"),
            dict(order_scheme="raster"), dict(kind="vit", n_heads=2), dict(kind="bilstm"),
            dict(kind="s4nd"), dict(head="dense", out_channels=2)]


@pytest.mark.parametrize("kw", VARIANTS, ids=lambda kw: "-".join(map(str, kw.values())) or "base")
def test_models_run_and_are_finite(kw):
    cfg = _tiny(depth=2, **kw)
    p = mamba_nd.init(jax.random.key(0), cfg)
    x = jax.random.normal(jax.random.key(1), (2, 4, 4, 1))
    y = mamba_nd.apply(p, cfg, x)
    assert y.shape == ((2, 4, 4, 2) if cfg.head == "dense" else (2, 10))
    assert np.isfinite(np.asarray(y)).all()
    assert count_params(p) == mamba_nd.param_count(cfg)


def test_3d_model_and_split_validation():
    cfg = NDConfig(grid=(2, 4, 4), patch=(1, 2, 2), d_model=12, depth=2, d_state=4)
    p = mamba_nd.init(jax.random.key(0), cfg)
    assert mamba_nd.apply(p, cfg, jnp.ones((1, 2, 4, 4, 1))).shape == (1, 10)
    with pytest.raises(ValueError, match="divisible by 6"):
        mamba_nd.init(jax.random.key(0), dataclasses.replace(cfg, d_model=8, mixer="split"))


def test_shape_and_config_errors_are_clear():
    cfg = _tiny()
    p = mamba_nd.init(jax.random.key(0), cfg)
    with pytest.raises(ValueError, match=r"input must be \[B, 4, 4, 1\]"):
        mamba_nd.apply(p, cfg, jnp.ones((2, 5, 4, 1)))
    with pytest.raises(ValueError, match="patch"):
        mamba_nd.init(jax.random.key(0), _tiny(patch=(3, 3)))
    with pytest.raises(ValueError, match="order_scheme"):
        mamba_nd.init(jax.random.key(0), _tiny(order_scheme="zigzag"))


def test_s4nd_fft_conv_equals_direct_bidirectional_conv():
    cfg = _tiny(kind="s4nd")
    ap = baselines._s4nd_init(jax.random.key(3), cfg)["axes"][0]
    n = 7
    k = np.asarray(baselines.s4d_kernel(ap, n))  # [D, 2n]
    x = np.random.default_rng(0).normal(size=(8, n))
    y_fft = np.fft.irfft(np.fft.rfft(x, 2 * n) * np.fft.rfft(k, 2 * n), 2 * n)[:, :n]
    y_dir = np.zeros_like(x)
    for i, j in itertools.product(range(n), range(n)):
        lag = i - j
        y_dir[:, i] += x[:, j] * (k[:, lag] if lag >= 0 else k[:, 2 * n + lag])
    np.testing.assert_allclose(y_fft, y_dir, atol=1e-5)


def test_match_width_brings_baselines_within_10_percent():
    ref = mamba_nd.param_count(NDConfig(d_model=32, depth=4))
    for kind, field, depth in (("vit", "d_model", 2), ("bilstm", "lstm_hidden", 2),
                               ("s4nd", "d_model", 4)):
        c = mamba_nd.match_width(NDConfig(kind=kind, depth=depth), ref, field)
        assert abs(mamba_nd.param_count(c) - ref) <= 0.1 * ref, kind


@pytest.mark.parametrize("grid", [(3, 5), (2, 3, 4)])
def test_order_perm_gather_equals_transpose_flatten(grid):
    x = jax.random.normal(jax.random.key(0), (2, *grid, 3))
    raster = x.reshape(2, -1, 3)
    for order in cycle_orders(len(grid)):
        perm = mamba_nd.order_perm(grid, order)
        np.testing.assert_array_equal(raster[:, perm], flatten(x, order))


def test_scanned_model_equals_layer_by_layer():
    cfg = _tiny(depth=4, d_model=8)
    p = mamba_nd.init(jax.random.key(0), cfg)
    x = jax.random.normal(jax.random.key(1), (2, 4, 4, 1))
    h = mamba_nd.embed_apply(p["embed"], cfg, x)
    for bp, o in zip(p["blocks"], layer_orders(2, 4), strict=True):
        g = flatten(mamba_nd.layernorm(bp["norm"], h), o)  # independent transpose path
        xi, z = jnp.split(g @ bp["in_proj"], 2, -1)
        from jaxlm.ssm.mamba import branch_apply
        y = branch_apply(bp["branches"][0], cfg.mamba, xi)
        y = (y * jax.nn.silu(z)) @ bp["out_proj"]
        h = h + unflatten(y, o, (4, 4))
    ref = mamba_nd.head_apply(p["head"], cfg, h)
    np.testing.assert_allclose(mamba_nd.apply(p, cfg, x), ref, atol=1e-5, rtol=1e-5)


def test_factorised_scans_each_row_independently():
    # one layer, order (HW)+: only the innermost axis (W) forms a sequence, rows are separate
    cfg = _tiny(order_scheme="factorised", head="dense", out_channels=1)
    p = mamba_nd.init(jax.random.key(0), cfg)
    x = jax.random.normal(jax.random.key(1), (2, 4, 4, 1))
    x2 = x.at[:, 1].add(jax.random.normal(jax.random.key(2), (2, 4, 1)))  # perturb row 1
    xx = jnp.concatenate([x, x2])
    y, y2 = jnp.split(jax.jit(lambda xx: mamba_nd.apply(p, cfg, xx))(xx), 2)
    changed = np.abs(np.asarray(y2 - y)).max(axis=(0, 2, 3))  # per row
    assert changed[1] > 1e-3 and changed[[0, 2, 3]].max() == 0.0
    # the alternating (non-factorised) layer carries the state from row 1 into rows 2, 3
    cfg_alt = dataclasses.replace(cfg, order_scheme="alternating")
    ya, ya2 = jnp.split(jax.jit(lambda xx: mamba_nd.apply(p, cfg_alt, xx))(xx), 2)
    d = np.asarray(ya2 - ya)
    assert np.abs(d[:, 2:]).max() > 1e-4


def test_factorised_3d_non_cube_matches_layer_by_layer():
    cfg = NDConfig(grid=(2, 4, 6), patch=(1, 2, 2), d_model=8, depth=3, d_state=4,
                   order_scheme="factorised")
    p = mamba_nd.init(jax.random.key(0), cfg)
    x = jax.random.normal(jax.random.key(1), (2, 2, 4, 6, 1))

    def layer_by_layer(p, x):
        h = mamba_nd.embed_apply(p["embed"], cfg, x)
        for bp, o in zip(p["blocks"], layer_orders(3, 3, "factorised"), strict=True):
            h = mamba_nd.nd_layer_apply(bp, cfg, h, o)  # segments: W (3), W (3), H (2) tokens
        return mamba_nd.head_apply(p["head"], cfg, h)

    got, ref = jax.jit(lambda p, x: (mamba_nd.apply(p, cfg, x), layer_by_layer(p, x)))(p, x)
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="factorised"):
        mamba_nd.init(jax.random.key(0), dataclasses.replace(cfg, mixer="nd"))
