"""Baseline blocks for grid models (selected by ``NDConfig.kind``), sharing Mamba-ND's trunk.

* ``"vit"``: pre-norm multi-head self-attention + GELU MLP (ratio ``mlp_ratio``).
  The attention is ``jaxlm.core.transformer.attention`` (non-causal: all tokens at
  position 0) on the fused torch-layout qkv/proj weights, viewed per head.
* ``"bilstm"``: x + W_o BiLSTM(LN x), the sequence flattened in the same
  per-layer orders as Mamba-ND (``order_scheme``), hidden ``lstm_hidden`` per
  direction.
* ``"s4nd"``: S4ND-like separable global convolution: for every grid axis a
  bidirectional per-channel LTI kernel K[c, l] = sum_n C[c, n] exp(dt_c A_n l) dt_c
  (S4D-real init A_n = -(n+1)), applied with FFTs along that axis; then skip,
  GELU and a GLU output projection. Same recurrence family as Mamba but
  time-invariant: isolates what selectivity adds.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.core import transformer as tfm
from jaxlm.core.config import ModelConfig
from jaxlm.ssm.layers import layernorm, layernorm_init, torch_linear_init
from jaxlm.ssm.mamba_nd import NDConfig, Order, order_perm

# ----------------------------------------------------------------------------- ViT


def _vit_init(key, cfg: NDConfig) -> dict:
    d, hdim = cfg.d_model, cfg.mlp_ratio * cfg.d_model
    ks = jax.random.split(key, 6)
    return {
        "norm1": layernorm_init(d),
        "qkv": torch_linear_init(ks[0], d, (d, 3 * d)),
        "qkv_b": jnp.zeros((3 * d,), jnp.float32),
        "proj": torch_linear_init(ks[1], d, (d, d)),
        "proj_b": jnp.zeros((d,), jnp.float32),
        "norm2": layernorm_init(d),
        "fc1": torch_linear_init(ks[2], d, (d, hdim)),
        "fc1_b": jnp.zeros((hdim,), jnp.float32),
        "fc2": torch_linear_init(ks[3], hdim, (hdim, d)),
        "fc2_b": jnp.zeros((d,), jnp.float32),
    }


def _vit_attn(p, d: int, nh: int) -> tuple[dict, ModelConfig]:
    """The fused qkv/proj weights as core attention params and a matching config
    (no positional scheme: the trunk adds its own position embedding)."""
    dh = d // nh
    heads = lambda w: w.reshape(w.shape[0], nh, dh) if w.ndim == 2 else w.reshape(nh, dh)
    wq, wk, wv = jnp.split(p["qkv"], 3, -1)
    bq, bk, bv = jnp.split(p["qkv_b"], 3, -1)
    ap = {"wq": heads(wq), "wk": heads(wk), "wv": heads(wv), "bq": heads(bq),
          "bk": heads(bk), "bv": heads(bv), "wo": p["proj"].reshape(nh, dh, d),
          "bo": p["proj_b"]}
    acfg = ModelConfig(d_model=d, n_heads=nh, n_kv_heads=nh, head_dim=dh, pos="none",
                       norm="layer", use_bias=True)
    return ap, acfg


def _vit_apply(p, cfg: NDConfig, x):
    shape = x.shape
    b, d, nh = shape[0], cfg.d_model, cfg.n_heads
    s = x.reshape(b, -1, d)  # [B, L, D]
    ap, acfg = _vit_attn(p, d, nh)
    # full (bidirectional) visibility through core's position rule: a query at position p
    # sees keys at positions 0..p, so every token at position 0 sees every token
    pos = jnp.zeros(s.shape[:2], jnp.int32)
    o, _, _ = tfm.attention(ap, acfg, layernorm(p["norm1"], s), pos, None)
    s = s + o
    h = layernorm(p["norm2"], s)
    s = s + jax.nn.gelu(h @ p["fc1"] + p["fc1_b"]) @ p["fc2"] + p["fc2_b"]
    return s.reshape(shape)


# ----------------------------------------------------------------------------- BiLSTM


def _lstm_dir_init(key, d_in, hid):
    k1, k2 = jax.random.split(key)
    return {"wi": torch_linear_init(k1, hid, (d_in, 4 * hid)),
            "wh": torch_linear_init(k2, hid, (hid, 4 * hid)),
            "b": jnp.zeros((4 * hid,), jnp.float32)}


def _lstm_run(p, x):
    """x [B, L, Din] -> hidden states [B, L, H] (forward direction)."""
    hid = p["wh"].shape[0]
    gx = x @ p["wi"] + p["b"]  # [B, L, 4H]

    def step(carry, g):
        h, c = carry
        i, f, gg, o = jnp.split(g + h @ p["wh"], 4, -1)
        c = jax.nn.sigmoid(f + 1.0) * c + jax.nn.sigmoid(i) * jnp.tanh(gg)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    z = jnp.zeros((x.shape[0], hid), x.dtype)
    _, hs = jax.lax.scan(step, (z, z), jnp.swapaxes(gx, 0, 1), unroll=4)
    return jnp.swapaxes(hs, 0, 1)


def _bilstm_init(key, cfg: NDConfig) -> dict:
    d, hid = cfg.d_model, cfg.lstm_hidden
    k1, k2, k3 = jax.random.split(key, 3)
    return {"norm": layernorm_init(d), "fwd": _lstm_dir_init(k1, d, hid),
            "bwd": _lstm_dir_init(k2, d, hid),
            "out": torch_linear_init(k3, 2 * hid, (2 * hid, d)),
            "out_b": jnp.zeros((d,), jnp.float32)}


def _bilstm_apply(p, cfg: NDConfig, xs, perm, inv):
    """xs [B, L, D] raster tokens; the LSTM runs along ``perm`` (the layer's order)."""
    s = jnp.take(layernorm(p["norm"], xs), perm, axis=1)
    hf = _lstm_run(p["fwd"], s)
    hb = jnp.flip(_lstm_run(p["bwd"], jnp.flip(s, 1)), 1)
    y = jnp.concatenate([hf, hb], -1) @ p["out"] + p["out_b"]
    return xs + jnp.take(y, inv, axis=1)


# ----------------------------------------------------------------------------- S4ND-like


def _s4nd_init(key, cfg: NDConfig) -> dict:
    d, n = cfg.d_model, cfg.d_state
    nd = len(cfg.grid)
    ks = jax.random.split(key, 3 + 3 * nd)
    axes = []
    for a in range(nd):
        k_dt, k_cf, k_cb = ks[3 + 3 * a: 6 + 3 * a]
        log_dt = jax.random.uniform(k_dt, (d,), jnp.float32, math.log(1e-2), math.log(0.5))
        axes.append({
            "log_dt": log_dt,
            "A_log": jnp.log(jnp.broadcast_to(jnp.arange(1, n + 1, dtype=jnp.float32), (d, n))),
            "C_fwd": jax.random.normal(k_cf, (d, n), jnp.float32) * (0.5 / math.sqrt(n)),
            "C_bwd": jax.random.normal(k_cb, (d, n), jnp.float32) * (0.5 / math.sqrt(n)),
        })
    return {"norm": layernorm_init(d), "axes": axes, "D": jnp.ones((d,), jnp.float32),
            "w_a": torch_linear_init(ks[0], d, (d, d)), "b_a": jnp.zeros((d,), jnp.float32),
            "w_g": torch_linear_init(ks[1], d, (d, d)), "b_g": jnp.zeros((d,), jnp.float32)}


def s4d_kernel(p: dict, length: int) -> jax.Array:
    """Bidirectional kernel over lags, laid out for a circular FFT of size 2*length: [D, 2L]."""
    dt = jnp.exp(p["log_dt"])[:, None, None]  # [D, 1, 1]
    a = -jnp.exp(p["A_log"])[:, :, None]  # [D, N, 1]
    lags = jnp.arange(length, dtype=jnp.float32)[None, None]
    basis = jnp.exp(dt * a * lags) * dt  # [D, N, L]
    k_f = jnp.einsum("dn,dnl->dl", p["C_fwd"], basis)
    k_b = jnp.einsum("dn,dnl->dl", p["C_bwd"], basis)
    zero = jnp.zeros_like(k_f[:, :1])
    # index m in [0, L): lag +m;  index 2L - m for m in [1, L): lag -m;  index L: unused.
    return jnp.concatenate([k_f, zero, jnp.flip(k_b[:, 1:], 1)], 1)


def _s4nd_apply(p, cfg: NDConfig, x):
    h = layernorm(p["norm"], x)
    y = h
    nd = x.ndim - 2
    for a, ap in enumerate(p["axes"]):
        ax = 1 + a
        n = x.shape[ax]
        k = s4d_kernel(ap, n)  # [D, 2n]
        yt = jnp.moveaxis(y, (ax, x.ndim - 1), (-1, -2))  # [..., D, n]
        yf = jnp.fft.irfft(jnp.fft.rfft(yt, 2 * n) * jnp.fft.rfft(k, 2 * n), 2 * n)[..., :n]
        y = jnp.moveaxis(yf, (-1, -2), (ax, x.ndim - 1))
    del nd
    y = jax.nn.gelu(y + p["D"] * h)
    return x + (y @ p["w_a"] + p["b_a"]) * jax.nn.sigmoid(y @ p["w_g"] + p["b_g"])


# ----------------------------------------------------------------------------- dispatch


def block_init(key: jax.Array, cfg: NDConfig, index: int) -> dict:
    del index
    return {"vit": _vit_init, "bilstm": _bilstm_init, "s4nd": _s4nd_init}[cfg.kind](key, cfg)


def layer_perms(cfg: NDConfig, order: Order) -> tuple[np.ndarray, np.ndarray]:
    """(perm, inverse) as int32 [1, L] for one layer (used by BiLSTM; ignored otherwise)."""
    perm = order_perm(cfg.token_grid, order)[None].astype(np.int32)
    return perm, np.argsort(perm, axis=1).astype(np.int32)


def block_seq_apply(p: dict, cfg: NDConfig, xs: jax.Array, grid: tuple[int, ...], perm,
                    inv) -> jax.Array:
    """One baseline block on raster tokens xs [B, L, D] (grid = token grid)."""
    if cfg.kind == "vit":
        return _vit_apply(p, cfg, xs)
    if cfg.kind == "bilstm":
        return _bilstm_apply(p, cfg, xs, perm[0], inv[0])
    x = xs.reshape(xs.shape[0], *grid, xs.shape[-1])
    return _s4nd_apply(p, cfg, x).reshape(xs.shape)
