"""Decoder-only Transformer as pure ``init`` / ``apply`` over an explicit param pytree.

Params layout (a nested dict; ``layers`` is a list of per-layer dicts so layer
surgery, per-layer offload and weight edits stay trivial)::

    {"embed": [V, D], "pos_embed": [P, D]?,
     "layers": [{"attn_norm": {...}, "mlp_norm": {...}?,
                 "attn": {"wq": [D, H, Dh], "wk": [D, K, Dh], "wv": [D, K, Dh],
                          "wo": [H, Dh, D], "bq"?, "bk"?, "bv"?, "bo"?},
                 "mlp": {"w_up", "w_down", "w_gate"?, biases?}}, ...],
     "final_norm": {...}, "lm_head": [D, V]?, "lm_head_bias": [V]?}

Attention is position-based: a query at position p attends to every slot whose
stored position q satisfies 0 <= q <= p. That single rule gives causal masking,
left padding (pad tokens get position -1) and arbitrary slot orders in an
evicting KV cache.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from jaxlm.core import layers
from jaxlm.core import params as params_lib
from jaxlm.core.cache import KVCache
from jaxlm.core.config import ModelConfig

Array = jax.Array
Params = dict[str, Any]
# intervene(site, layer, activation) -> activation; sites: "embed", "attn_out",
# "mlp_hidden", "mlp_out", "resid_post". Used by interpretability and editing.
Intervene = Callable[[str, int, Array], Array]

NEG_INF = float(jnp.finfo(jnp.float32).min)


@struct.dataclass
class ModelOutput:
    """What ``apply`` returns.

    Attributes:
        logits: [B, T, V] float32 (or [B, 1, V] with ``last_logits_only``).
        cache: the updated KVCache when one was passed, else None.
        hidden: tuple of L + 1 residual streams [B, T, D] (embeddings, then after
            each block) when ``return_hidden``, else None.
        attn: tuple of L attention-probability arrays [B, H, T, S] when
            ``return_attn``, else None.
    """

    logits: Array
    cache: KVCache | None = None
    hidden: tuple[Array, ...] | None = None
    attn: tuple[Array, ...] | None = None


# --------------------------------------------------------------------------- init
init = params_lib.init  # random params from ``param_spec(cfg)`` (see ``jaxlm.core.params``)


# --------------------------------------------------------------------------- attention
def _write_cache(kc, vc, pc, layer, k, v, q_pos, cursor, slots):
    """Writes T new keys/values of one layer into the stacked buffers, in place.

    kc, vc: [L, B, S, K, Dh]; pc: [L, B, K, S]; k, v: [B, T, K, Dh]; q_pos: [B, T].
    slots None: append at ``cursor``; else [B, K, T] slot per token and head.
    Writing into the stacked buffers (rather than slicing a layer out and
    stacking again) lets XLA update the donated cache without copying it.
    """
    b, t, nk, _ = k.shape
    new_pos = jnp.broadcast_to(q_pos[:, None, :], (b, nk, t)).astype(jnp.int32)
    if slots is None:
        kc = jax.lax.dynamic_update_slice(kc, k[None].astype(kc.dtype), (layer, 0, cursor, 0, 0))
        vc = jax.lax.dynamic_update_slice(vc, v[None].astype(vc.dtype), (layer, 0, cursor, 0, 0))
        pc = jax.lax.dynamic_update_slice(pc, new_pos[None], (layer, 0, 0, cursor))
        return kc, vc, pc
    bi = jnp.arange(b)[:, None, None]
    ki = jnp.arange(nk)[None, :, None]
    kc = kc.at[layer, bi, slots, ki].set(jnp.swapaxes(k, 1, 2).astype(kc.dtype))
    vc = vc.at[layer, bi, slots, ki].set(jnp.swapaxes(v, 1, 2).astype(vc.dtype))
    pc = pc.at[layer, bi, ki, slots].set(new_pos)
    return kc, vc, pc


def attention(
    p: Params,
    cfg: ModelConfig,
    x: Array,
    q_pos: Array,
    rope: tuple[Array, Array] | None,
    kv: tuple[Array, Array, Array] | None = None,
    cursor: Array | None = None,
    slots: Array | None = None,
    attn_bias: Array | None = None,
) -> tuple[Array, tuple[Array, Array, Array] | None, Array]:
    """Multi-head / grouped-query / multi-query attention.

    Args:
        p: this layer's attention params.
        x: [B, T, D] normed input.
        q_pos: [B, T] positions of the queries (-1 = padding).
        rope: (cos, sin) from ``layers.rope_angles`` or None.
        kv: (k [L,B,S,K,Dh], v [L,B,S,K,Dh], pos [L,B,K,S], layer index) of the
            whole stacked cache, or None to attend within ``x`` only.
        cursor, slots: where to write the new keys (see ``_write_cache``).
        attn_bias: additive bias broadcastable to [B, H, T, S] (S = T without cache).

    Returns:
        (output [B, T, D], updated (k, v, pos) stacks or None, probs [B, H, T, S]).
    """
    ct = cfg.cdtype
    b, t, _ = x.shape
    nk, g, hd = cfg.n_kv_heads, cfg.q_per_kv, cfg.head_dim
    q = jnp.einsum("btd,dhe->bthe", x, p["wq"].astype(ct))
    k = jnp.einsum("btd,dke->btke", x, p["wk"].astype(ct))
    v = jnp.einsum("btd,dke->btke", x, p["wv"].astype(ct))
    if "bq" in p:
        q, k, v = q + p["bq"].astype(ct), k + p["bk"].astype(ct), v + p["bv"].astype(ct)
    if rope is not None:
        q = layers.apply_rope(cfg, q, *rope)
        k = layers.apply_rope(cfg, k, *rope)
    if kv is None:
        keys, vals = k, v
        k_pos = jnp.broadcast_to(q_pos[:, None, :], (b, nk, t))  # [B, K, S=T]
        new_kv = None
    else:
        kc, vc, pc, li = kv
        new_kv = _write_cache(kc, vc, pc, li, k, v, q_pos, cursor, slots)
        keys, vals, k_pos = new_kv[0][li], new_kv[1][li], new_kv[2][li]
    qg = q.reshape(b, t, nk, g, hd)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, keys.astype(ct)).astype(jnp.float32)
    scores = scores * (1.0 / math.sqrt(hd))
    qp = q_pos[:, None, None, :, None]  # [B, 1, 1, T, 1]
    kp = k_pos[:, :, None, None, :]  # [B, K, 1, 1, S]
    if cfg.pos == "alibi":
        slopes = layers.alibi_slopes(cfg.n_heads).reshape(1, nk, g, 1, 1)
        scores = scores - slopes * (qp - kp).astype(jnp.float32)
    if attn_bias is not None:
        s = scores.shape[-1]
        bias = jnp.broadcast_to(attn_bias, (b, cfg.n_heads, t, s)).reshape(b, nk, g, t, s)
        scores = scores + bias.astype(jnp.float32)
    allowed = (kp <= qp) & (kp >= 0)
    scores = jnp.where(allowed, scores, NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("bkgts,bskd->btkgd", probs.astype(ct), vals.astype(ct))
    out = out.reshape(b, t, cfg.n_heads, hd)
    y = jnp.einsum("bthe,hed->btd", out, p["wo"].astype(ct))
    if "bo" in p:
        y = y + p["bo"].astype(ct)
    return y, new_kv, probs.reshape(b, cfg.n_heads, t, -1)


# --------------------------------------------------------------------------- model
def default_positions(tokens: Array, cache: KVCache | None) -> Array:
    """Consecutive positions [B, T], continuing from ``cache.next_pos`` if given."""
    b, t = tokens.shape
    base = jnp.zeros((b,), jnp.int32) if cache is None else cache.next_pos
    return base[:, None] + jnp.arange(t, dtype=jnp.int32)[None, :]


def positions_from_mask(mask: Array, offset: Array | None = None) -> Array:
    """Positions for a (left-)padded batch: real tokens count from ``offset``, pads get -1."""
    mask = mask.astype(jnp.int32)
    pos = jnp.cumsum(mask, axis=-1) - 1
    if offset is not None:
        pos = pos + offset[:, None]
    return jnp.where(mask > 0, pos, -1)


def embed(params: Params, cfg: ModelConfig, tokens: Array, positions: Array) -> Array:
    x = params["embed"].astype(cfg.cdtype)[tokens]
    if cfg.pos == "learned":
        pe = params["pos_embed"].astype(cfg.cdtype)
        x = x + pe[jnp.clip(positions, 0, cfg.max_seq_len - 1)]
    return x


def unembed(params: Params, cfg: ModelConfig, x: Array) -> Array:
    """Final norm + LM head; float32 logits."""
    x = layers.norm(params["final_norm"], cfg, x)
    if cfg.tie_embeddings:
        logits = jnp.einsum("btd,vd->btv", x, params["embed"].astype(cfg.cdtype))
    else:
        logits = x @ params["lm_head"].astype(cfg.cdtype)
        if "lm_head_bias" in params:
            logits = logits + params["lm_head_bias"].astype(cfg.cdtype)
    return logits.astype(jnp.float32)


def block(
    lp: Params,
    cfg: ModelConfig,
    x: Array,
    q_pos: Array,
    rope,
    *,
    layer: int = 0,
    kv=None,
    cursor=None,
    slots=None,
    attn_bias=None,
    intervene: Intervene | None = None,
):
    """One Transformer block (sequential pre-norm, or GPT-J parallel)."""
    h = layers.norm(lp["attn_norm"], cfg, x)
    a, new_kv, probs = attention(lp["attn"], cfg, h, q_pos, rope, kv, cursor, slots, attn_bias)
    if intervene is not None:
        a = intervene("attn_out", layer, a)
    if cfg.parallel_block:
        m = layers.mlp(lp["mlp"], cfg, h, intervene, layer)
        if intervene is not None:
            m = intervene("mlp_out", layer, m)
        x = x + a + m
    else:
        x = x + a
        m = layers.mlp(lp["mlp"], cfg, layers.norm(lp["mlp_norm"], cfg, x), intervene, layer)
        if intervene is not None:
            m = intervene("mlp_out", layer, m)
        x = x + m
    if intervene is not None:
        x = intervene("resid_post", layer, x)
    return x, new_kv, probs


def apply(
    params: Params,
    cfg: ModelConfig,
    tokens: Array,
    *,
    positions: Array | None = None,
    cache: KVCache | None = None,
    write_slots: Array | None = None,
    attn_bias: Array | None = None,
    return_hidden: bool = False,
    return_attn: bool = False,
    last_logits_only: bool = False,
    intervene: Intervene | None = None,
) -> ModelOutput:
    """Runs the model on ``tokens`` [B, T].

    Args:
        params: from ``init`` or a weight loader.
        cfg: the model config (static under jit).
        tokens: [B, T] int token ids.
        positions: [B, T] int positions (-1 marks padding). Default: consecutive,
            continuing from ``cache.next_pos``.
        cache: a KVCache to write the new keys/values into and attend over.
        write_slots: with a cache, [B, K, T] (same for all layers) or [L, B, K, T]
            slot indices to write; default appends at ``cache.cursor``.
        attn_bias: additive attention bias broadcastable to [B, H, T, S].
        return_hidden, return_attn: also return residual streams / attention probs.
        last_logits_only: compute logits for the last position only (prefill).
        intervene: optional activation hook ``f(site, layer, act) -> act``.

    Returns:
        ModelOutput.
    """
    if tokens.ndim != 2:
        raise ValueError(f"apply: tokens must be [batch, time], got shape {tokens.shape}")
    if positions is None:
        positions = default_positions(tokens, cache)
    x = embed(params, cfg, tokens, positions)
    if intervene is not None:
        x = intervene("embed", -1, x)
    rope = layers.rope_angles(cfg, jnp.maximum(positions, 0)) if cfg.pos == "rope" else None
    hidden = [x] if return_hidden else None
    attn = [] if return_attn else None
    kc = vc = pc = None
    if cache is not None:
        kc, vc, pc = cache.k, cache.v, cache.pos
    for i, lp in enumerate(params["layers"]):
        kv = None if cache is None else (kc, vc, pc, i)
        slots = None
        if write_slots is not None:
            slots = write_slots[i] if write_slots.ndim == 4 else write_slots
        x, kv_i, probs = block(
            lp, cfg, x, positions, rope, layer=i, kv=kv,
            cursor=None if cache is None else cache.cursor, slots=slots,
            attn_bias=attn_bias, intervene=intervene,
        )
        if cache is not None:
            kc, vc, pc = kv_i
        if return_hidden:
            hidden.append(x)
        if return_attn:
            attn.append(probs)
    if last_logits_only:
        x = x[:, -1:]
    logits = unembed(params, cfg, x)
    new_cache = None
    if cache is not None:
        new_cache = KVCache(
            k=kc,
            v=vc,
            pos=pc,
            next_pos=jnp.maximum(cache.next_pos, jnp.max(positions, axis=-1) + 1),
            cursor=cache.cursor + (tokens.shape[1] if write_slots is None else 0),
        )
    return ModelOutput(
        logits=logits,
        cache=new_cache,
        hidden=tuple(hidden) if return_hidden else None,
        attn=tuple(attn) if return_attn else None,
    )
