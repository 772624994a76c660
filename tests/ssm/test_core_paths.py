"""ssm's ViT attention and norms (now ``jaxlm.core``'s) against float64 numpy references."""

from __future__ import annotations

import jax
import numpy as np

from jaxlm.ssm import baselines
from jaxlm.ssm.layers import layernorm, rmsnorm
from jaxlm.ssm.mamba_nd import NDConfig


def _ln64(x, scale, bias, eps):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * scale + bias


def test_vit_block_equals_bidirectional_float64_reference():
    cfg = NDConfig(kind="vit", grid=(4, 4), d_model=16, depth=1, n_heads=4, n_classes=2)
    p = baselines._vit_init(jax.random.PRNGKey(0), cfg)
    rng = np.random.default_rng(0)
    p = {k: (v if k.startswith("norm") else  # fresh non-zero biases too
             np.asarray(v) + 0.1 * rng.normal(size=np.shape(v)).astype(np.float32))
         for k, v in p.items()}
    p["norm1"] = {"scale": 1 + 0.1 * rng.normal(size=16).astype(np.float32),
                  "bias": 0.1 * rng.normal(size=16).astype(np.float32)}
    x = rng.normal(size=(2, 3, 5, 16)).astype(np.float32)  # any grid: flattened to tokens
    got = np.asarray(baselines._vit_apply(p, cfg, x), np.float64)

    q64 = {k: (np.asarray(v, np.float64) if not isinstance(v, dict)
               else {a: np.asarray(b, np.float64) for a, b in v.items()}) for k, v in p.items()}
    s = x.reshape(2, 15, 16).astype(np.float64)
    h = _ln64(s, q64["norm1"]["scale"], q64["norm1"]["bias"], 1e-5)
    q, k, v = np.split(h @ q64["qkv"] + q64["qkv_b"], 3, -1)
    heads = lambda t: t.reshape(2, 15, 4, 4).transpose(0, 2, 1, 3)  # [B, H, L, Dh]
    att = heads(q) @ heads(k).transpose(0, 1, 3, 2) / 2.0
    att = np.exp(att - att.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)  # no mask: every token sees every token
    o = (att @ heads(v)).transpose(0, 2, 1, 3).reshape(2, 15, 16)
    s = s + o @ q64["proj"] + q64["proj_b"]
    h = _ln64(s, q64["norm2"]["scale"], q64["norm2"]["bias"], 1e-5)
    u = h @ q64["fc1"] + q64["fc1_b"]
    gelu = 0.5 * u * (1 + np.tanh(np.sqrt(2 / np.pi) * (u + 0.044715 * u**3)))
    want = (s + gelu @ q64["fc2"] + q64["fc2_b"]).reshape(x.shape)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_norms_equal_float64_reference():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 7, 12)).astype(np.float32) * 3 + 1
    scale = (1 + 0.2 * rng.normal(size=12)).astype(np.float32)
    bias = (0.2 * rng.normal(size=12)).astype(np.float32)
    x64 = x.astype(np.float64)
    for eps in (1e-5, 1e-2):
        ln = np.asarray(layernorm({"scale": scale, "bias": bias}, x, eps), np.float64)
        np.testing.assert_allclose(ln, _ln64(x64, scale, bias, eps), rtol=1e-5, atol=1e-5)
        rms = np.asarray(rmsnorm({"scale": scale}, x, eps), np.float64)
        want = x64 / np.sqrt((x64 * x64).mean(-1, keepdims=True) + eps) * scale
        np.testing.assert_allclose(rms, want, rtol=1e-5, atol=1e-5)
