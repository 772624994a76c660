"""Transformer core: shapes, variants, caching, masks, jit equivalence, float64 reference."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.core import MODELS, ModelConfig, apply, init, init_cache, positions_from_mask
from jaxlm.core import layers
from jaxlm.utils.config import ConfigError

VARIANTS = ["smollm2-135m_test", "gptj-tiny_test", "mpt-tiny_test", "cerebras-gpt-tiny_test"]


def _toks(cfg, b, t, seed=1):
    return jax.random.randint(jax.random.PRNGKey(seed), (b, t), 0, cfg.vocab_size)


@pytest.mark.parametrize("name", VARIANTS)
def test_shapes_and_dtypes_with_eval_shape(name):
    cfg = MODELS.get(name)
    params = jax.eval_shape(lambda k: init(k, cfg), jax.random.PRNGKey(0))
    assert sum(np.prod(x.shape) for x in jax.tree.leaves(params)) == cfg.num_params()
    out = jax.eval_shape(
        lambda p, t: apply(p, cfg, t, return_hidden=True, return_attn=True),
        params, jax.ShapeDtypeStruct((2, 7), jnp.int32),
    )
    assert out.logits.shape == (2, 7, cfg.vocab_size) and out.logits.dtype == jnp.float32
    assert len(out.hidden) == cfg.n_layers + 1 and out.hidden[0].shape == (2, 7, cfg.d_model)
    assert len(out.attn) == cfg.n_layers and out.attn[0].shape == (2, cfg.n_heads, 7, 7)


@pytest.mark.parametrize("name", VARIANTS)
def test_cached_decode_equals_full_recompute(name):
    cfg = MODELS.get(name)
    params = init(jax.random.PRNGKey(0), cfg)
    toks = _toks(cfg, 2, 12)
    full = apply(params, cfg, toks).logits
    cache = init_cache(cfg, 2, 16)
    out = apply(params, cfg, toks[:, :5], cache=cache)
    logits, cache = [out.logits], out.cache
    for t in range(5, 12):
        out = apply(params, cfg, toks[:, t : t + 1], cache=cache)
        logits.append(out.logits)
        cache = out.cache
    np.testing.assert_allclose(jnp.concatenate(logits, 1), full, rtol=1e-4, atol=1e-5)
    assert int(cache.cursor) == 12 and list(cache.next_pos) == [12, 12]


def test_jit_equals_no_jit():
    cfg = MODELS.get("gptj-tiny_test")
    params = init(jax.random.PRNGKey(0), cfg)
    toks = _toks(cfg, 2, 9)
    with jax.disable_jit():
        ref = apply(params, cfg, toks).logits
    got = jax.jit(lambda p, t: apply(p, cfg, t).logits)(params, toks)
    chex.assert_trees_all_close(got, ref, rtol=1e-5, atol=1e-6)


def test_causality_future_tokens_do_not_leak():
    cfg = MODELS.get("smollm2-135m_test")
    params = init(jax.random.PRNGKey(0), cfg)
    a = _toks(cfg, 1, 10, seed=2)
    b = a.at[0, 6:].set((a[0, 6:] + 7) % cfg.vocab_size)
    la, lb = apply(params, cfg, a).logits, apply(params, cfg, b).logits
    np.testing.assert_allclose(la[:, :6], lb[:, :6], rtol=1e-6, atol=1e-6)
    assert not np.allclose(la[:, 6:], lb[:, 6:])


def test_left_padding_matches_unpadded():
    cfg = MODELS.get("mpt-tiny_test")  # ALiBi: relative positions must survive padding
    params = init(jax.random.PRNGKey(0), cfg)
    toks = _toks(cfg, 1, 6, seed=3)
    ref = apply(params, cfg, toks).logits[:, -1]
    padded = jnp.concatenate([jnp.zeros((1, 4), jnp.int32), toks], axis=1)
    mask = jnp.concatenate([jnp.zeros((1, 4), bool), jnp.ones((1, 6), bool)], axis=1)
    got = apply(params, cfg, padded, positions=positions_from_mask(mask)).logits[:, -1]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_attn_bias_drops_a_span_like_deleting_it():
    """A -inf bias on positions 2..4 equals running without them, for a model without
    position information (pos="none"), where deletion and masking are equivalent."""
    cfg = dataclasses.replace(MODELS.get("smollm2-135m_test"), pos="none")
    params = init(jax.random.PRNGKey(0), cfg)
    toks = _toks(cfg, 1, 8, seed=4)
    bias = jnp.zeros((1, 1, 8, 8)).at[..., 2:5].set(-1e9)
    got = apply(params, cfg, toks, attn_bias=bias).logits[:, -1]
    kept = jnp.concatenate([toks[:, :2], toks[:, 5:]], axis=1)
    ref = apply(params, cfg, kept).logits[:, -1]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_write_slots_put_tokens_where_asked():
    cfg = MODELS.get("smollm2-135m_test")
    params = init(jax.random.PRNGKey(0), cfg)
    toks = _toks(cfg, 2, 4, seed=5)
    cache = init_cache(cfg, 2, 8)
    # write the 4 tokens into slots 7, 5, 3, 1 (reversed, spread): attention is by position,
    # so logits must equal the appended layout
    slots = jnp.broadcast_to(jnp.array([7, 5, 3, 1]), (2, cfg.n_kv_heads, 4))
    got = apply(params, cfg, toks, cache=cache, write_slots=slots)
    ref = apply(params, cfg, toks)
    np.testing.assert_allclose(got.logits, ref.logits, rtol=1e-5, atol=1e-6)
    assert list(np.asarray(got.cache.pos[0, 0, 0])) == [-1, 3, -1, 2, -1, 1, -1, 0]


def _np_forward_f64(params, cfg, toks):
    """Independent float64 numpy forward of the Llama-style (half-RoPE, RMSNorm, SwiGLU) model."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    t = toks.shape[1]
    x = p["embed"][np.asarray(toks[0])]
    inv = 1.0 / cfg.rope_base ** (np.arange(0, cfg.head_dim, 2) / cfg.head_dim)
    ang = np.arange(t)[:, None] * inv[None]
    cos, sin = np.cos(ang), np.sin(ang)

    def rms(v, s):
        return v / np.sqrt((v * v).mean(-1, keepdims=True) + cfg.norm_eps) * s

    def rope(v):  # [T, N, Dh] half layout
        h = cfg.head_dim // 2
        a, b = v[..., :h], v[..., h:]
        c, s = cos[:, None], sin[:, None]
        return np.concatenate([a * c - b * s, b * c + a * s], -1)

    g = cfg.n_heads // cfg.n_kv_heads
    for lp in p["layers"]:
        h = rms(x, lp["attn_norm"]["scale"])
        q = rope(np.einsum("td,dhe->the", h, lp["attn"]["wq"]))
        k = rope(np.einsum("td,dke->tke", h, lp["attn"]["wk"]))
        v = np.einsum("td,dke->tke", h, lp["attn"]["wv"])
        k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
        s = np.einsum("the,she->hts", q, k) / np.sqrt(cfg.head_dim)
        s = np.where(np.tril(np.ones((t, t), bool))[None], s, -np.inf)
        pr = np.exp(s - s.max(-1, keepdims=True))
        pr /= pr.sum(-1, keepdims=True)
        o = np.einsum("hts,she->the", pr, v)
        x = x + np.einsum("the,hed->td", o, lp["attn"]["wo"])
        h = rms(x, lp["mlp_norm"]["scale"])
        gate = h @ lp["mlp"]["w_gate"]
        x = x + ((gate / (1 + np.exp(-gate))) * (h @ lp["mlp"]["w_up"])) @ lp["mlp"]["w_down"]
    x = rms(x, p["final_norm"]["scale"])
    return x @ p["embed"].T


def test_matches_float64_numpy_reference_on_random_params():
    cfg = dataclasses.replace(MODELS.get("smollm2-135m_test"), init_std=0.2)
    params = init(jax.random.PRNGKey(7), cfg)
    # random norm scales too, never the all-ones default
    for lp in params["layers"]:
        lp["attn_norm"]["scale"] = 1 + 0.3 * jax.random.normal(jax.random.PRNGKey(8), (cfg.d_model,))
    toks = _toks(cfg, 1, 11, seed=9)
    ref = _np_forward_f64(params, cfg, toks)
    got = np.asarray(apply(params, cfg, toks).logits[0])
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-5


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_rope_layouts_are_a_permutation_of_each_other(layout):
    """Interleaved RoPE on rows permuted (2i, 2i+1) <- (i, i+D/2) equals half-split RoPE."""
    cfg_h = dataclasses.replace(MODELS.get("smollm2-135m_test"), rope_layout="half")
    cfg_i = dataclasses.replace(cfg_h, rope_layout="interleaved")
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 5, 2, cfg_h.head_dim))
    cos, sin = layers.rope_angles(cfg_h, jnp.arange(5)[None] + 3)
    half = layers.apply_rope(cfg_h, x, cos, sin)
    d = cfg_h.head_dim
    perm = np.stack([np.arange(d // 2), np.arange(d // 2) + d // 2], -1).reshape(-1)
    inter = layers.apply_rope(cfg_i, x[..., perm], cos, sin)
    np.testing.assert_allclose(inter, half[..., perm], rtol=1e-5, atol=1e-6)
    # rotation preserves norms
    cfg = cfg_h if layout == "half" else cfg_i
    y = layers.apply_rope(cfg, x, cos, sin)
    np.testing.assert_allclose(jnp.linalg.norm(y, axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5)


def test_gqa_equals_mha_with_repeated_kv_heads():
    cfg = MODELS.get("smollm2-135m_test")  # 3 query heads, 1 kv head
    params = init(jax.random.PRNGKey(0), cfg)
    mha_cfg = dataclasses.replace(cfg, n_kv_heads=cfg.n_heads)
    mha = jax.tree.map(lambda a: a, params)
    for lp in mha["layers"]:
        lp["attn"]["wk"] = jnp.repeat(lp["attn"]["wk"], cfg.n_heads, axis=1)
        lp["attn"]["wv"] = jnp.repeat(lp["attn"]["wv"], cfg.n_heads, axis=1)
    toks = _toks(cfg, 2, 6)
    np.testing.assert_allclose(
        apply(params, cfg, toks).logits, apply(mha, mha_cfg, toks).logits, rtol=1e-5, atol=1e-6
    )


def test_bfloat16_compute_policy_runs_and_is_close():
    cfg = MODELS.get("smollm2-135m_test")
    bf = dataclasses.replace(cfg, compute_dtype="bfloat16")
    params = init(jax.random.PRNGKey(0), cfg)
    toks = _toks(cfg, 1, 8)
    a, b = apply(params, cfg, toks).logits, apply(params, bf, toks).logits
    assert b.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(a - b))) < 0.05 * float(jnp.max(jnp.abs(a))) + 1e-2


def test_intervene_hook_sees_and_changes_activations():
    cfg = MODELS.get("smollm2-135m_test")
    params = init(jax.random.PRNGKey(0), cfg)
    toks = _toks(cfg, 1, 5)
    seen = []

    def hook(site, layer, act):
        seen.append((site, layer, act.shape))
        return act * 0 if (site == "mlp_out" and layer == 1) else act

    out = apply(params, cfg, toks, intervene=hook)
    sites = {(s, l) for s, l, _ in seen}
    assert ("mlp_hidden", 0) in sites and ("attn_out", 1) in sites and ("embed", -1) in sites
    assert not np.allclose(out.logits, apply(params, cfg, toks).logits)


def test_bad_configs_raise_clear_errors():
    with pytest.raises(ConfigError, match="multiple of n_kv_heads"):
        ModelConfig(n_heads=4, n_kv_heads=3)
    with pytest.raises(ConfigError, match="unknown model preset"):
        MODELS.get("no-such-model")
    with pytest.raises(ConfigError, match="unknown config field"):
        MODELS.get("smollm2-135m_test", ["d_modle=3"])
    assert MODELS.get("smollm2-135m_test", ["n_layers=3"]).n_layers == 3
    with pytest.raises(ValueError, match="tokens must be"):
        cfg = MODELS.get("smollm2-135m_test")
        apply(init(jax.random.PRNGKey(0), cfg), cfg, jnp.zeros((3,), jnp.int32))
