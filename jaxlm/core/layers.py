"""Pure building blocks: norms, positional schemes, MLPs.

Every function takes its params sub-tree explicitly. Shapes: B batch, T query
positions, S key slots, D model width, H query heads, K kv heads, G = H // K,
Dh head width, F MLP width.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxlm.core.config import ModelConfig
from jaxlm.quant.formats import QuantWeight
from jaxlm.quant.matmul import matmul as quant_matmul
from jaxlm.quant.matmul import matmul_many as quant_matmul_many

Array = jax.Array


# --------------------------------------------------------------------------- matmul
def dense(x: Array, w: Array, spec: str, cfg: ModelConfig) -> Array:
    """The one weight product of the model: ``einsum(spec, x, w)`` under the precision policy.

    ``cfg.matmul_dtype`` None: both operands in the compute dtype (``cfg.cdtype``).
    Otherwise (e.g. "bfloat16"): operands cast to it, float32 accumulation, result in
    the compute dtype. Weights already stored in that dtype (``transformer.cast_params``)
    are not cast again per call. Every weight product in ``jaxlm.core`` goes through
    here, so a new weight format plugs in at this one place: a ``jaxlm.quant.QuantWeight``
    leaf (int8 / Q8_0 / Q4_0 / Q4_1 blocks) knows its contracted axes and runs through
    ``jaxlm.quant.matmul`` (the C++ kernel on CPU for <= 16 rows, dequantize + XLA dot
    otherwise).
    """
    if isinstance(w, QuantWeight):
        return quant_matmul(x.astype(jnp.float32), w, impl=cfg.quant_impl,
                            act_bits=cfg.quant_act_bits).astype(cfg.cdtype)
    if cfg.matmul_dtype is None:
        return jnp.einsum(spec, x, w.astype(cfg.cdtype))
    mm = jnp.dtype(cfg.matmul_dtype)
    y = jnp.einsum(spec, x.astype(mm), w.astype(mm), preferred_element_type=jnp.float32)
    return y.astype(cfg.cdtype)


def dense_many(x: Array, ws, specs, cfg: ModelConfig) -> tuple:
    """``tuple(dense(x, w, spec, cfg) for w, spec in zip(ws, specs))``: several products of the
    same input (q/k/v, gate/up). Quantized weights of one format go to the kernel in one call
    (x quantized once, one thread-pool dispatch; bit-identical to separate calls); anything
    else runs product by product, so float models are unchanged."""
    ws = list(ws)
    if len(ws) > 1 and all(isinstance(w, QuantWeight) for w in ws):
        ys = quant_matmul_many(x.astype(jnp.float32), ws, impl=cfg.quant_impl,
                               act_bits=cfg.quant_act_bits)
        return tuple(y.astype(cfg.cdtype) for y in ys)
    return tuple(dense(x, w, spec, cfg) for w, spec in zip(ws, specs))


# --------------------------------------------------------------------------- norms
def norm(p: dict[str, Array], cfg: ModelConfig, x: Array) -> Array:
    """RMSNorm or LayerNorm over the last axis, computed in float32."""
    dtype = x.dtype
    x32 = x.astype(jnp.float32)
    if cfg.norm == "rms":
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + cfg.norm_eps)
        y = y * p["scale"].astype(jnp.float32)
    else:
        mu = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mu), axis=-1, keepdims=True)
        y = (x32 - mu) * jax.lax.rsqrt(var + cfg.norm_eps)
        y = y * p["scale"].astype(jnp.float32) + p["bias"].astype(jnp.float32)
    return y.astype(dtype)


# --------------------------------------------------------------------------- RoPE
def rope_angles(cfg: ModelConfig, positions: Array) -> tuple[Array, Array]:
    """cos/sin of RoPE for integer positions [B, T] -> ([B, T, R/2], [B, T, R/2])."""
    rot = cfg.rotary_dim or cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_base ** (jnp.arange(0, rot, 2, dtype=jnp.float32) / rot))
    ang = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, R/2]
    return jnp.cos(ang), jnp.sin(ang)


def apply_rope(cfg: ModelConfig, x: Array, cos: Array, sin: Array) -> Array:
    """Rotates x [B, T, N, Dh] by position; layout per cfg.rope_layout.

    "half": pairs (i, i + R/2) as in HF Llama; "interleaved": pairs (2i, 2i+1) as
    in GPT-J and llama.cpp's GGUF row order. Only the first R = rotary_dim dims
    rotate; the rest pass through.
    """
    rot = cfg.rotary_dim or cfg.head_dim
    dtype = x.dtype
    xr, xp = x[..., :rot].astype(jnp.float32), x[..., rot:]
    c, s = cos[:, :, None, :], sin[:, :, None, :]  # [B, T, 1, R/2]
    if cfg.rope_layout == "half":
        x1, x2 = xr[..., : rot // 2], xr[..., rot // 2 :]
        out = jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)
    else:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
        out = jnp.stack([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).reshape(xr.shape)
    out = out.astype(dtype)
    return out if rot == x.shape[-1] else jnp.concatenate([out, xp], axis=-1)


# --------------------------------------------------------------------------- ALiBi
def alibi_slopes(n_heads: int) -> Array:
    """Per-head ALiBi slopes (Press et al.), geometric in 2^(-8/n), for any head count."""

    def pow2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_heads).is_integer():
        s = pow2(n_heads)
    else:
        closest = 2 ** math.floor(math.log2(n_heads))
        s = pow2(closest) + pow2(2 * closest)[0::2][: n_heads - closest]
    return jnp.asarray(s, jnp.float32)


# --------------------------------------------------------------------------- MLP
def mlp(p: dict[str, Array], cfg: ModelConfig, x: Array, intervene=None, layer: int = 0) -> Array:
    """SwiGLU (silu(x Wg) * x Wu) Wd or GELU (gelu(x Wu)) Wd; x [B, T, D]."""
    ct = cfg.cdtype
    if cfg.mlp == "swiglu":
        up, gate = dense_many(x, (p["w_up"], p["w_gate"]), ("...d,df->...f",) * 2, cfg)
    else:
        up = dense(x, p["w_up"], "...d,df->...f", cfg)
    if "b_up" in p:
        up = up + p["b_up"].astype(ct)
    if cfg.mlp == "swiglu":
        if "b_gate" in p:
            gate = gate + p["b_gate"].astype(ct)
        h = jax.nn.silu(gate) * up
    else:
        h = jax.nn.gelu(up, approximate=True)
    if intervene is not None:
        h = intervene("mlp_hidden", layer, h)
    out = dense(h, p["w_down"], "...f,fd->...d", cfg)
    if "b_down" in p:
        out = out + p["b_down"].astype(ct)
    return out
