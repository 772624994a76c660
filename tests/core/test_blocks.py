"""The composable forward: run_blocks ranges, scan, capture, segments, chunks, stacking, precision."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.core import MODELS, init, init_cache
from jaxlm.core.transformer import (apply, cast_params, embed, run_blocks, segment_positions,
                                    stack_layers, unembed, unstack_layers)

PRESETS = ["smollm2-135m_test", "gptj-tiny_test", "mpt-tiny_test", "cerebras-gpt-tiny_test"]


def _close(a, b, rtol=2e-5):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * max(1.0, np.abs(b).max()))


def _setup(name="smollm2-135m_test", seed=0):
    cfg = MODELS.get(name)
    params = init(jax.random.PRNGKey(seed), cfg)
    toks = jax.random.randint(jax.random.PRNGKey(seed + 1), (2, 10), 1, cfg.vocab_size)
    pos = jnp.broadcast_to(jnp.arange(10), (2, 10))
    return cfg, params, toks, pos


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("scan", [False, True])
def test_layer_ranges_compose_to_apply(name, scan):
    cfg, params, toks, pos = _setup(name)
    p = stack_layers(params) if scan else params
    x = embed(p, cfg, toks, pos)
    a = run_blocks(p, cfg, x, positions=pos, layers=slice(0, 1), scan=scan).x
    b = run_blocks(p, cfg, a, positions=pos, layers=range(1, 2), scan=scan).x
    _close(unembed(p, cfg, b), apply(params, cfg, toks).logits)


def test_stack_unstack_roundtrip_and_scan_with_cache():
    cfg, params, toks, pos = _setup()
    s = stack_layers(params)
    assert s["layers"]["attn"]["wq"].shape == (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.head_dim)
    back = unstack_layers(s)
    for x, y in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
        np.testing.assert_array_equal(x, y)
    cache = init_cache(cfg, 2, 16)
    a = apply(params, cfg, toks, cache=cache)
    b = apply(s, cfg, toks, cache=cache, scan=True)
    _close(b.logits, a.logits)
    _close(b.cache.k, a.cache.k)
    np.testing.assert_array_equal(b.cache.pos, a.cache.pos)
    nxt = jnp.array([[3], [4]])
    _close(apply(s, cfg, nxt, cache=b.cache, scan=True).logits,
           apply(params, cfg, nxt, cache=a.cache).logits)


@pytest.mark.parametrize("scan", [False, True])
def test_capture_returns_the_hooked_activations(scan):
    cfg, params, toks, pos = _setup("gptj-tiny_test")
    seen = {}

    def spy(site, layer, act):
        seen[(site, int(layer))] = act
        return act

    ref = apply(params, cfg, toks, intervene=spy, return_hidden=True)
    x = embed(params, cfg, toks, pos)
    p = stack_layers(params) if scan else params
    out = run_blocks(p, cfg, x, positions=pos, scan=scan,
                     capture=(("attn_out", "mlp_hidden", "resid_pre", "resid_post"), [1, 0]))
    assert out.captured["mlp_hidden"].shape == (2, 2, 10, cfg.d_ff)
    for k, layer in enumerate([1, 0]):
        _close(out.captured["attn_out"][k], seen[("attn_out", layer)])
        _close(out.captured["mlp_hidden"][k], seen[("mlp_hidden", layer)])
        _close(out.captured["resid_pre"][k], ref.hidden[layer])
        _close(out.captured["resid_post"][k], ref.hidden[layer + 1])
    with pytest.raises(ValueError, match="unknown capture sites"):
        run_blocks(params, cfg, x, positions=pos, capture=(("nope",), None))


def test_intervene_inside_run_blocks_changes_the_output():
    cfg, params, toks, pos = _setup()
    x = embed(params, cfg, toks, pos)

    def zero_attn(site, layer, act):  # under scan the layer index is traced: no Python if
        return jnp.where(layer == 1, 0.0, act) if site == "attn_out" else act

    for scan in (False, True):
        a = run_blocks(params, cfg, x, positions=pos, intervene=zero_attn, scan=scan)
        ref = apply(params, cfg, toks, intervene=zero_attn, return_hidden=True).hidden[-1]
        _close(a.x, ref)
        assert float(jnp.max(jnp.abs(a.x - run_blocks(params, cfg, x, positions=pos).x))) > 1e-3


@pytest.mark.parametrize("name", PRESETS)
def test_packed_documents_equal_separate_runs(name):
    cfg, params, _, _ = _setup(name)
    rng = np.random.default_rng(0)
    docs = [rng.integers(1, cfg.vocab_size, n).tolist() for n in (5, 3, 6)]
    row = sum(docs, [])
    seg = np.concatenate([np.full(len(d), i + 1) for i, d in enumerate(docs)] + [[-1, -1]])
    toks = jnp.asarray([row + [0, 0]])
    segj = jnp.asarray(seg[None])
    pos = segment_positions(segj)
    assert list(np.asarray(pos[0])) == [0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3, 4, 5, -1, -1]
    for chunk in (None, 4):
        x = embed(params, cfg, toks, pos)
        h = run_blocks(params, cfg, x, positions=pos, segment_ids=segj, chunk=chunk).x
        logits = unembed(params, cfg, h)
        start = 0
        for d in docs:
            ref = apply(params, cfg, jnp.asarray([d])).logits[0]
            _close(logits[0, start:start + len(d)], ref)
            start += len(d)


def test_shared_prefix_segment_and_cache_equal_full_sequences():
    cfg, params, _, _ = _setup()
    prompt, c1, c2 = [5, 9, 11, 2], [7, 8], [3, 4, 6]
    row = prompt + c1 + c2
    seg = jnp.asarray([[0] * 4 + [1] * 2 + [2] * 3])
    pos = jnp.asarray([[0, 1, 2, 3, 4, 5, 4, 5, 6]])
    out = apply(params, cfg, jnp.asarray([row]), positions=pos, segment_ids=seg)
    r1 = apply(params, cfg, jnp.asarray([prompt + c1])).logits[0]
    r2 = apply(params, cfg, jnp.asarray([prompt + c2])).logits[0]
    _close(out.logits[0, :6], r1)
    _close(out.logits[0, 6:], r2[4:])
    # the prompt in a cache, the candidates appended with their segments
    pre = apply(params, cfg, jnp.asarray([prompt]), cache=init_cache(cfg, 1, 9)).cache
    x = embed(params, cfg, jnp.asarray([c1 + c2]), pos[:, 4:])
    for chunk in (None, 2):
        b = run_blocks(params, cfg, x, positions=pos[:, 4:], cache=pre, segment_ids=seg[:, 4:],
                       chunk=chunk)
        lg = unembed(params, cfg, b.x, at=jnp.asarray([[1, 4]]))
        _close(lg[0, 0], r1[5])
        _close(lg[0, 1], r2[6])


def test_chunked_attention_equals_dense_with_bias():
    cfg, params, toks, pos = _setup("mpt-tiny_test")
    bias = jnp.where(jax.random.bernoulli(jax.random.PRNGKey(9), 0.2, (2, 1, 10, 10)), -1e9, 0.0)
    x = embed(params, cfg, toks, pos)
    a = run_blocks(params, cfg, x, positions=pos, attn_bias=bias).x
    b = run_blocks(params, cfg, x, positions=pos, attn_bias=bias, chunk=3).x
    _close(b, a)


def test_bf16_matmul_policy_is_close_and_faithful():
    cfg, params, toks, _ = _setup()
    ref = apply(params, cfg, toks).logits
    bcfg = dataclasses.replace(cfg, matmul_dtype="bfloat16", attn_dtype="bfloat16")
    bp = cast_params(params, bcfg)
    assert bp["layers"][0]["attn"]["wq"].dtype == jnp.bfloat16
    assert bp["final_norm"]["scale"].dtype == jnp.float32
    out = apply(bp, bcfg, toks).logits
    assert out.dtype == jnp.float32
    err = float(jnp.max(jnp.abs(out - ref)) / jnp.max(jnp.abs(ref)))
    assert 0 < err < 2e-2  # bf16 operands (8-bit mantissa), f32 accumulation
    assert cast_params(params, cfg) is params


@pytest.mark.parametrize("scan", [False, True])
def test_fetch_sees_each_block_and_remat_keeps_grads(scan):
    cfg, params, toks, pos = _setup()
    p = stack_layers(params) if scan else params
    x = embed(p, cfg, toks, pos)

    def loss(lay, **kw):
        out = run_blocks({"layers": lay}, cfg, x, positions=pos, scan=scan, **kw)
        return jnp.sum(out.x ** 2)

    # fetch scales every block's w_down by 2: the same as running doubled weights
    def twice(lp):
        return {**lp, "mlp": {**lp["mlp"], "w_down": 2.0 * lp["mlp"]["w_down"]}}

    doubled = (twice(p["layers"]) if scan else [twice(lp) for lp in p["layers"]])
    _close(loss(p["layers"], fetch=twice), loss(doubled))
    assert abs(float(loss(p["layers"], fetch=twice)) - float(loss(p["layers"]))) > 1e-3
    g0 = jax.grad(loss)(p["layers"])
    g1 = jax.grad(lambda lay: loss(lay, remat=True, fetch=lambda lp: lp))(p["layers"])
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0), strict=True):
        _close(a, b)
    assert max(float(jnp.abs(a).max()) for a in jax.tree.leaves(g0)) > 0


def test_part_of_a_stack_is_read_in_place_with_the_same_values_and_grads():
    # a 4-layer model: blocks 1..3 of the stack (read by a dynamic index inside the scan)
    # against the same blocks unrolled from the list, values and grads w.r.t. the input
    # and the stacked weights
    cfg = dataclasses.replace(MODELS.get("smollm2-135m_test"), n_layers=4)
    params = init(jax.random.PRNGKey(5), cfg)
    toks = jax.random.randint(jax.random.PRNGKey(6), (2, 7), 1, cfg.vocab_size)
    pos = jnp.broadcast_to(jnp.arange(7), (2, 7))
    s = stack_layers(params)
    x = embed(params, cfg, toks, pos)

    def loss(p, x, scan):
        out = run_blocks(p, cfg, x, positions=pos, layers=range(1, 4), scan=scan)
        return jnp.sum(jnp.tanh(out.x))

    # value and both grads in one compiled program per path (eager grads of the scan and of
    # the unrolled blocks dispatched op by op took ~1 min of the module under load)
    vg = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=2)
    (v_s, (gw_s, gx_s)), (v_l, (gw_l, gx_l)) = vg(s, x, True), vg(params, x, False)
    _close(v_s, v_l)
    assert float(jnp.abs(gx_l).max()) > 0
    _close(gx_s, gx_l, rtol=1e-4)
    gw_s, gw_l = gw_s["layers"], stack_layers(gw_l)["layers"]
    for a, b in zip(jax.tree.leaves(gw_s), jax.tree.leaves(gw_l), strict=True):
        _close(a, b, rtol=1e-4)
    # block 0 is outside the range: no gradient reaches it
    assert float(jnp.abs(gw_s["mlp"]["w_down"][0]).max()) == 0.0
