"""Fixed-budget cache state, one-pass prefill statistics and prompt-time compression.

``PolicyState`` wraps the core ``KVCache`` (keys stored after RoPE at their
original positions, per-layer/KV-head slot positions) with the policy's
per-slot accumulated score and the slot the next token will be written to.
All fields are per batch row; shapes never change during decoding.

The prompt is prefilled **once** with full attention into a temporary cache
(capacity = padded prompt length), emitting the score statistics every policy
needs (``PrefillStats``); ``compress`` then derives any number of
fixed-budget caches from it (one per row: prompt index x policy).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import struct

from jaxlm.core.cache import KVCache, init_cache
from jaxlm.core.config import ModelConfig
from jaxlm.core.transformer import Params, apply, positions_from_mask
from jaxlm.kvcache import policy as P

Array = jax.Array


@struct.dataclass
class PolicyState:
    """A fixed-budget KV cache plus the policy's per-slot state.

    Attributes:
        cache: core KVCache with k, v [L, B, K, S, Dh] and pos [L, B, K, S]
            (original positions, -1 = empty; valid mask = pos >= 0).
        score: [L, B, K, S] float32 accumulated score per slot.
        free_slot: [L, B, K] int32 slot that receives the next token.
        prompt_len: [B] int32 real prompt length per row.
        step: [] int32 generated tokens processed so far (tau schedule, noise stream).
    """

    cache: KVCache
    score: Array
    free_slot: Array
    prompt_len: Array
    step: Array

    @property
    def capacity(self) -> int:
        return self.cache.capacity

    def valid(self) -> Array:
        """[L, B, K, S] True on occupied slots."""
        return self.cache.pos >= 0


@struct.dataclass
class PrefillStats:
    """Per-prompt score statistics from one full-attention prefill.

    Attributes:
        attn: [L, B, H, S0] column sums of attention over the valid prompt rows (H2O).
        last: [L, B, H, S0] attention of the last prompt token (TOVA).
        obs: [L, B, K, W, S0] attention of the last W prompt rows, summed over each
            KV group (SnapKV observation window).
        gumbel: [V, L, B, H, S0] column sums of softmax((x + zeta) / tau_init), one per
            (seed, tau_init, noise) variant (Keyformer).
    """

    attn: Array
    last: Array
    obs: Array
    gumbel: Array


@struct.dataclass
class Prefilled:
    """Output of ``prefill``: last-position logits [B, V], the full cache, the stats."""

    logits: Array
    cache: KVCache
    stats: PrefillStats


def _prefill(params, tokens, mask, *, cfg, variants, obs_rows):
    b, t = tokens.shape
    cache = init_cache(cfg, b, t)
    pos = positions_from_mask(mask)
    out = apply(params, cfg, tokens, positions=pos, cache=cache, return_attn=True,
                last_logits_only=True)
    qv = mask.astype(jnp.float32)[:, None, :, None]  # [B, 1, T, 1] valid query rows
    w = min(obs_rows, t)
    probs = jnp.stack(out.attn)  # [L, B, H, T, S0]
    base_keys = [jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(s), 1), 0)
                 for s, _, _ in variants]

    def layer_stats(args):
        # one layer at a time (lax.map): compiled once, one layer's temporaries live
        p, li = args  # p: [B, H, T, S0]
        attn = (p * qv).sum(axis=2)
        last = p[:, :, -1, :]
        o = p[:, :, -w:, :] * qv[:, :, -w:, :]
        obs = o.reshape(b, cfg.n_kv_heads, cfg.q_per_kv, w, t).sum(axis=2)
        per_var = []
        for (_, tau, noise), k0 in zip(variants, base_keys, strict=True):
            keys = jnp.broadcast_to(jax.random.fold_in(k0, li), (b,) + k0.shape)
            g = P.gumbel_softmax(p[None], jnp.full((b,), tau, jnp.float32),
                                 jnp.full((b,), noise), keys)[0]
            per_var.append((g * qv).sum(axis=2))
        gum = jnp.stack(per_var) if per_var else jnp.zeros((0, b, cfg.n_heads, t))
        return attn, last, obs, gum

    attn, last, obs, gum = jax.lax.map(layer_stats, (probs, jnp.arange(cfg.n_layers)))
    stats = PrefillStats(attn=attn, last=last, obs=obs, gumbel=jnp.swapaxes(gum, 0, 1))
    return Prefilled(logits=out.logits[:, -1], cache=out.cache, stats=stats)


_prefill_jit = jax.jit(_prefill, static_argnames=("cfg", "variants", "obs_rows"))


def prefill(
    params: Params,
    cfg: ModelConfig,
    tokens: Array,
    mask: Array,
    *,
    variants: Sequence[tuple[int, float, bool]] = (),
    obs_rows: int = 64,
) -> Prefilled:
    """Full-attention prefill of left-padded prompts, with every policy's statistics.

    Args:
        params, cfg: the model.
        tokens: [B, T] left-padded prompt ids; mask: [B, T] True on real tokens.
        variants: Keyformer prompt-score variants (seed, tau_init, noise).
        obs_rows: W, the most SnapKV observation rows any row will use.

    Returns:
        Prefilled (compiled once per (B, T, variants)).
    """
    if tokens.ndim != 2 or tokens.shape != mask.shape:
        raise ValueError(f"prefill: tokens {tokens.shape} and mask {mask.shape} must both be "
                         f"[batch, time]")
    variants = tuple((int(s), float(t), bool(n)) for s, t, n in variants)
    return _prefill_jit(params, jnp.asarray(tokens), jnp.asarray(mask), cfg=cfg,
                        variants=variants, obs_rows=int(obs_rows))


def _take_slots(x: Array, idx: Array) -> Array:
    """x [L, B, K, S0, Dh], idx [L, B, K, S] -> [L, B, K, S, Dh]."""
    return jnp.take_along_axis(x, idx[..., None], axis=3)


def _rowgather(x: Array, src: Array, axis: int) -> Array:
    return jnp.take(x, src, axis=axis)


@functools.partial(jax.jit, static_argnames=("capacity", "n_kv"))
def _compress(pre: Prefilled, src, pp, *, capacity, n_kv):
    c = pre.cache
    k = _rowgather(c.k, src, 1)
    v = _rowgather(c.v, src, 1)
    pos = _rowgather(c.pos, src, 1)
    plen = c.next_pos[src]
    st = pre.stats
    attn = P.pool_heads(_rowgather(st.attn, src, 1), n_kv, pp.layer_pool)
    last = P.pool_heads(_rowgather(st.last, src, 1), n_kv, pp.layer_pool)
    snap = P.snap_scores(_rowgather(st.obs, src, 1), pp)
    if st.gumbel.shape[0]:
        g = st.gumbel[pp.seed_idx, :, src]  # [R, L, H, S0]
        gum = P.pool_heads(jnp.swapaxes(g, 0, 1), n_kv, pp.layer_pool)
    else:
        gum = jnp.zeros_like(attn)
    inc = P._rows(pp.inc_kind, 4)
    is_snap = P._rows((pp.prio_kind == P.PRIO_FROZEN) & (pp.inc_kind == P.INC_NONE), 4)
    score = jnp.where(inc == P.INC_ATTN, attn, 0.0)
    score = jnp.where(inc == P.INC_GUMBEL, gum, score)
    score = jnp.where(inc == P.INC_TOVA, last, score)
    score = jnp.where(is_snap, snap, score)
    rand = jax.vmap(lambda kk: jax.random.uniform(kk, score.shape[:1] + score.shape[2:]))(
        P.row_keys(pp, jnp.int32(0), 2))
    rand = jnp.moveaxis(rand, 0, 1)
    prio = P.priority(score, pos, plen - 1, pp, rand, use_cap=False)
    idx, valid = P.select(prio, pos, pp.cap - 1, capacity)
    new_pos = jnp.where(valid, jnp.take_along_axis(pos, idx, axis=-1), -1)
    new_score = jnp.where(valid, jnp.take_along_axis(score, idx, axis=-1), 0.0)
    cache = KVCache(k=_take_slots(k, idx), v=_take_slots(v, idx), pos=new_pos,
                    next_pos=plen, cursor=jnp.zeros((), jnp.int32))
    free = P.choose_slot(P.priority(new_score, new_pos, plen - 1, pp), new_pos)
    return PolicyState(cache=cache, score=new_score, free_slot=free, prompt_len=plen,
                       step=jnp.zeros((), jnp.int32))


def compress(pre: Prefilled, src: Array, pp: P.PolicyParams, capacity: int) -> PolicyState:
    """Derives fixed-budget caches from a full prefill.

    Row r of the result is prompt ``src[r]`` compressed by row r of ``pp``: the
    ``C_r - 1`` highest-priority prompt tokens are kept per (layer, KV head) and
    the last usable slot is left free for the first generated token.

    Args:
        pre: from ``prefill``.
        src: [R] prompt index of each output row.
        pp: [R] PolicyParams (``resolve_rows``).
        capacity: static S of the output cache; every row's C must be <= S.

    Returns:
        PolicyState with S slots per (layer, row, KV head).
    """
    cap_max = int(jnp.max(pp.cap))
    if cap_max > capacity:
        raise ValueError(f"compress: a row's budget C={cap_max} exceeds the cache capacity "
                         f"{capacity}; allocate capacity >= max C")
    n_kv = pre.cache.k.shape[2]
    return _compress(pre, jnp.asarray(src, jnp.int32), pp, capacity=int(capacity), n_kv=n_kv)
