"""Decode attention: the single-query multiply+reduce path equals the batched-dot path and a
float64 reference on a ragged cache in the [L, B, K, S, Dh] layout; the cache layout itself."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.core import MODELS, init_cache
from jaxlm.core import transformer as tr


def _ragged(cfg, b, s, seed):
    """Random q [B,1,H,Dh], keys/vals [B,K,S,Dh] and slot positions [B,K,S] with holes (-1),
    a different fill per row and head (an evicting cache), and the query position [B,1]."""
    rng = np.random.default_rng(seed)
    nk, hd = cfg.n_kv_heads, cfg.head_dim
    q = rng.normal(size=(b, 1, cfg.n_heads, hd)).astype(np.float32)
    k = rng.normal(size=(b, nk, s, hd)).astype(np.float32)
    v = rng.normal(size=(b, nk, s, hd)).astype(np.float32)
    pos = np.stack([np.stack([rng.permutation(s) for _ in range(nk)]) for _ in range(b)])
    pos = np.where(rng.random((b, nk, s)) < 0.3, -1, pos).astype(np.int32)
    qpos = np.full((b, 1), s - 3, np.int32)  # keys at positions > s - 3 are in the future
    return q, k, v, pos, qpos


def _reference(cfg, q, k, v, pos, qpos, bias):
    """Float64 numpy attention of one query per row over the ragged cache."""
    b, _, h, hd = q.shape
    g = cfg.q_per_kv
    out = np.zeros((b, h, hd))
    for bi in range(b):
        for hi in range(h):
            ki = hi // g
            sc = k[bi, ki].astype(np.float64) @ q[bi, 0, hi].astype(np.float64) / np.sqrt(hd)
            sc = sc + bias[bi, hi]
            ok = (pos[bi, ki] >= 0) & (pos[bi, ki] <= qpos[bi, 0])
            sc = np.where(ok, sc, -np.inf)
            p = np.exp(sc - sc.max())
            p /= p.sum()
            out[bi, hi] = p @ v[bi, ki].astype(np.float64)
    return out[:, None]


def _einsum_attend(cfg, q, k, v, pos, qpos, bias):
    """The batched-einsum formulation (float32), independent of ``_attend``'s dot_generals."""
    b, t, h, hd = q.shape
    nk, g = cfg.n_kv_heads, cfg.q_per_kv
    sc = jnp.einsum("btkgd,bksd->bkgts", q.reshape(b, t, nk, g, hd), k) / np.sqrt(hd)
    sc = sc + bias.reshape(b, nk, g, t, -1)
    kp = pos[:, :, None, None, :]
    ok = (kp >= 0) & (kp <= qpos[:, None, None, :, None])
    p = jax.nn.softmax(jnp.where(ok, sc, -jnp.inf), axis=-1)
    return jnp.einsum("bkgts,bksd->btkgd", p, v).reshape(b, t, h, hd), p


@pytest.mark.parametrize("seed,t", [(0, 1), (1, 1), (2, 3)])
def test_attend_equals_einsum_and_float64_on_a_ragged_cache(seed, t):
    cfg = MODELS.get("smollm2-135m_test")
    assert cfg.q_per_kv > 1  # GQA: heads grouped over the KV heads
    b, s = 3, 37
    q, k, v, pos, qpos = _ragged(cfg, b, s, seed)
    q = np.random.default_rng(seed + 3).normal(size=(b, t, cfg.n_heads, cfg.head_dim)).astype(
        np.float32)
    qpos = qpos + np.arange(t, dtype=np.int32)[None] - (t - 1)
    bias = np.random.default_rng(seed + 7).normal(size=(b, cfg.n_heads, t, s)).astype(np.float32)
    args = [jnp.asarray(a) for a in (q, k, v, qpos, pos)]
    out, probs = jax.jit(lambda *a: tr._attend(cfg, *a[:5], None, None, a[5]))(
        *args, jnp.asarray(bias))
    out = np.asarray(out)
    assert out.shape == (b, t, cfg.n_heads, cfg.head_dim)
    assert np.abs(out).max() > 0.1
    ein, pe = _einsum_attend(cfg, *(jnp.asarray(a) for a in (q, k, v, pos, qpos, bias)))
    scale = np.abs(np.asarray(ein)).max()
    np.testing.assert_allclose(out, np.asarray(ein), rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(np.asarray(probs), np.asarray(pe), rtol=0, atol=1e-5)
    if t == 1:
        ref = _reference(cfg, q, k, v, pos, qpos, bias[:, :, 0])
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    lo = dataclasses.replace(cfg, attn_dtype="bfloat16")  # the low-precision policy still runs
    out_lo = np.asarray(tr._attend(lo, *args[:5], None, None, jnp.asarray(bias))[0])
    np.testing.assert_allclose(out_lo, out, rtol=0, atol=3e-2 * scale)


def test_cache_layout_is_layers_batch_heads_slots_dim():
    cfg = MODELS.get("smollm2-135m_test")
    c = init_cache(cfg, batch=2, capacity=11)
    assert c.k.shape == (cfg.n_layers, 2, cfg.n_kv_heads, 11, cfg.head_dim) == c.v.shape
    assert c.pos.shape == (cfg.n_layers, 2, cfg.n_kv_heads, 11)
    assert (c.capacity, c.batch) == (11, 2)


def test_decode_writes_keys_at_the_cursor_slot_of_every_head():
    cfg = dataclasses.replace(MODELS.get("smollm2-135m_test"), n_layers=2)
    from jaxlm.core import apply, init

    params = init(jax.random.PRNGKey(0), cfg)
    toks = jax.random.randint(jax.random.PRNGKey(1), (2, 5), 0, cfg.vocab_size)
    out = apply(params, cfg, toks, cache=init_cache(cfg, 2, 8))
    c = out.cache
    k = np.asarray(c.k)
    assert np.all(np.abs(k[:, :, :, :5]).sum(-1) > 0) and np.all(k[:, :, :, 5:] == 0)
    np.testing.assert_array_equal(np.asarray(c.pos)[:, :, :, :5],
                                  np.broadcast_to(np.arange(5), (2, 2, cfg.n_kv_heads, 5)))
    assert np.all(np.asarray(c.pos)[:, :, :, 5:] == -1) and int(c.cursor) == 5
