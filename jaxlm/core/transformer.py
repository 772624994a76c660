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
evicting KV cache. With ``segment_ids`` a query of segment s > 0 additionally sees
only keys of segment s or of the shared segment 0 (packed rows: a prompt in
segment 0 followed by candidates 1, 2, ...; or documents 1, 2, ... with nothing
shared); positions restart or continue per segment as the caller chooses.

The forward is composable: ``embed`` -> ``run_blocks`` (any layer range, Python loop
or ``lax.scan``, KV cache, segments, attention bias, ``capture`` of activations as
outputs, ``intervene`` hooks) -> ``unembed`` (optionally only at chosen slots);
``apply`` is those three. Every weight product goes through ``dense`` (the one
matmul, where ``cfg.matmul_dtype`` sets the precision policy). ``stack_layers`` /
``unstack_layers`` convert between the list-of-layers layout and one stacked dict
with a leading layer axis (what ``scan`` runs on); whoever owns the params keeps
the stacked copy (there is no module-level cache).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from jaxlm.core import layers
from jaxlm.core import params as params_lib
from jaxlm.core.cache import KVCache
from jaxlm.core.config import ModelConfig
from jaxlm.quant.formats import QuantWeight, take_rows

Array = jax.Array
Params = dict[str, Any]
# intervene(site, layer, activation) -> activation; sites: "embed", "attn_out",
# "mlp_hidden", "mlp_out", "resid_post". Used by interpretability and editing.
# Under ``run_blocks(scan=True)`` ``layer`` is a traced int32 scalar.
Intervene = Callable[[str, int, Array], Array]
# Sites ``run_blocks(capture=...)`` can return (per layer): the block input, the
# attention output (after W_o), the MLP hidden (after the nonlinearity), the MLP
# output, the block output, and the attention probabilities [B, H, T, S].
SITES = ("resid_pre", "attn_out", "mlp_hidden", "mlp_out", "resid_post", "attn_probs")

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


# --------------------------------------------------------------------------- matmul
dense = layers.dense  # the one weight product (precision policy: ``cfg.matmul_dtype``)
dense_many = layers.dense_many  # products of one input (q/k/v, gate/up): one kernel call when quantized


def cast_params(params: Params, cfg: ModelConfig) -> Params:
    """Params with every matrix (ndim >= 2) stored in ``cfg.matmul_dtype`` (vectors and
    norms float32), so ``dense`` does not cast them on every call. Identity when the
    policy is off."""
    if cfg.matmul_dtype is None:
        return params
    mm = jnp.dtype(cfg.matmul_dtype)
    return jax.tree.map(
        lambda x: jnp.asarray(x).astype(mm) if jnp.ndim(x) >= 2 else jnp.asarray(x, jnp.float32),
        params)


# --------------------------------------------------------------------------- stacking
def stack_layers(params: Params) -> Params:
    """Params whose ``layers`` list becomes one dict of arrays with a leading layer axis
    (what ``run_blocks(scan=True)`` runs without restacking). Idempotent."""
    lay = params["layers"]
    if isinstance(lay, dict):
        return params
    return {**params, "layers": jax.tree.map(lambda *xs: jnp.stack(xs), *lay)}


def unstack_layers(params: Params) -> Params:
    """Inverse of ``stack_layers``: ``layers`` back to a list of per-layer dicts."""
    lay = params["layers"]
    if not isinstance(lay, dict):
        return params
    n = jax.tree.leaves(lay)[0].shape[0]
    return {**params, "layers": [jax.tree.map(lambda x, i=i: x[i], lay) for i in range(n)]}


def layer_params(params: Params, i: int) -> Params:
    """Block ``i``'s params (a per-layer dict) from a listed or stacked ``layers``."""
    lay = params["layers"]
    if isinstance(lay, dict):
        return jax.tree.map(lambda a: a[i], lay)
    return lay[i]


def num_layers(params: Params) -> int:
    lay = params["layers"]
    return jax.tree.leaves(lay)[0].shape[0] if isinstance(lay, dict) else len(lay)


# --------------------------------------------------------------------------- attention
def _write_cache(kc, vc, layer, k, v, cursor, slots):
    """Writes T new keys/values of one layer into the stacked buffers, in place.

    kc, vc: [L, B, K, S, Dh]; k, v: [B, T, K, Dh]. slots None: append at ``cursor``;
    else [B, K, T] slot per token and head. Writing into the stacked buffers (rather
    than slicing a layer out and stacking again) lets XLA update the donated cache
    without copying it. Slot positions are written once for all layers
    (``_write_pos``), so no layer's write waits on another's read.
    """
    kt = jnp.swapaxes(k, 1, 2)[None]  # [1, B, K, T, Dh]
    vt = jnp.swapaxes(v, 1, 2)[None]
    if slots is None:
        kc = jax.lax.dynamic_update_slice(kc, kt.astype(kc.dtype), (layer, 0, 0, cursor, 0))
        vc = jax.lax.dynamic_update_slice(vc, vt.astype(vc.dtype), (layer, 0, 0, cursor, 0))
        return kc, vc
    b, _, nk, _ = k.shape
    bi = jnp.arange(b)[:, None, None]
    ki = jnp.arange(nk)[None, :, None]
    kc = kc.at[layer, bi, ki, slots].set(kt[0].astype(kc.dtype))
    vc = vc.at[layer, bi, ki, slots].set(vt[0].astype(vc.dtype))
    return kc, vc


def _write_pos(pc, rng: range, q_pos, cursor, write_slots):
    """Slot positions of the T new tokens, written for every layer in ``rng`` at once.

    pc: [L, B, K, S]; q_pos: [B, T]; write_slots None (append at ``cursor``),
    [B, K, T] (every layer) or [L, B, K, T].
    """
    lr = len(rng)
    b, t = q_pos.shape
    nk = pc.shape[2]
    new_pos = jnp.broadcast_to(q_pos[None, :, None, :], (lr, b, nk, t)).astype(jnp.int32)
    if write_slots is None:
        return jax.lax.dynamic_update_slice(pc, new_pos, (rng.start, 0, 0, cursor))
    sl = (write_slots[rng.start:rng.stop] if write_slots.ndim == 4
          else jnp.broadcast_to(write_slots[None], (lr, b, nk, t)))
    li = jnp.arange(rng.start, rng.stop)[:, None, None, None]
    bi = jnp.arange(b)[None, :, None, None]
    ki = jnp.arange(nk)[None, None, :, None]
    return pc.at[li, bi, ki, sl].set(new_pos)


def _bdot(cfg, a: Array, b: Array, contract: int) -> Array:
    """Batched product over the leading (B, K) axes of a [B, K, M, X] and b [B, K, S, Dh],
    contracting a's last axis with b's axis ``contract`` (2 or 3), under ``cfg.attn_dtype``.

    A ``dot_general`` whose output keeps the (B, K, M, .) order needs no transpose of the
    cache rows on CPU (an einsum ending in another order makes XLA copy them first).
    """
    dims = (((3,), (contract,)), ((0, 1), (0, 1)))
    if cfg.attn_dtype is None:
        return jax.lax.dot_general(a, b.astype(a.dtype), dims)
    dt = jnp.dtype(cfg.attn_dtype)
    return jax.lax.dot_general(a.astype(dt), b.astype(dt), dims,
                               preferred_element_type=jnp.float32)


def _qk(cfg, qg, keys):
    """Scores [B, K, G, T, S] (float32) of queries qg [B, T, K, G, Dh] against keys
    [B, K, S, Dh]."""
    b, t, nk, g, hd = qg.shape
    qm = jnp.transpose(qg, (0, 2, 3, 1, 4)).reshape(b, nk, g * t, hd)  # a bitcast at T = 1
    sc = _bdot(cfg, qm, keys.astype(cfg.cdtype), 3)  # [B, K, G*T, S]
    return sc.reshape(b, nk, g, t, -1).astype(jnp.float32)


def _pv(cfg, probs, vals):
    """Outputs [B, T, K, G, Dh] of probs [B, K, G, T, S] over values [B, K, S, Dh]."""
    b, nk, g, t, s = probs.shape
    ct = cfg.cdtype
    out = _bdot(cfg, probs.astype(ct).reshape(b, nk, g * t, s), vals.astype(ct), 2)
    return jnp.transpose(out.reshape(b, nk, g, t, -1), (0, 3, 1, 2, 4)).astype(ct)


def _attend(cfg, q, keys, vals, q_pos, k_pos, q_seg, k_seg, attn_bias, prescaled=False):
    """Softmax attention of q [B, T, H, Dh] over keys/vals [B, K, S, Dh].

    k_pos [B, K, S]; q_seg [B, T] / k_seg [B, S] or None; attn_bias broadcastable to
    [B, H, T, S] or None. Returns (out [B, T, H, Dh], probs [B, K, G, T, S]).
    """
    ct = cfg.cdtype
    b, t = q.shape[:2]
    nk, g, hd = cfg.n_kv_heads, cfg.q_per_kv, cfg.head_dim
    qg = q.reshape(b, t, nk, g, hd)
    scores = _qk(cfg, qg, keys)
    if not prescaled:
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
    if q_seg is not None:
        ks = k_seg[:, None, None, None, :]
        allowed = allowed & ((ks == 0) | (ks == q_seg[:, None, None, :, None]))
    scores = jnp.where(allowed, scores, NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1)
    out = _pv(cfg, probs, vals)
    return out.reshape(b, t, cfg.n_heads, hd).astype(ct), probs


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
    segments: tuple[Array, Array] | None = None,
    chunk: int | None = None,
) -> tuple[Array, tuple[Array, Array, Array] | None, Array | None]:
    """Multi-head / grouped-query / multi-query attention.

    Args:
        p: this layer's attention params.
        x: [B, T, D] normed input.
        q_pos: [B, T] positions of the queries (-1 = padding).
        rope: (cos, sin) from ``layers.rope_angles`` or None.
        kv: (k [L,B,K,S,Dh], v [L,B,K,S,Dh], pos [L,B,K,S], layer index) of the
            whole stacked cache (pos already holding the new tokens' positions, see
            ``_write_pos``), or None to attend within ``x`` only.
        cursor, slots: where to write the new keys (see ``_write_cache``).
        attn_bias: additive bias broadcastable to [B, H, T, S] (S = T without cache).
        segments: (query segment ids [B, T], key segment ids [B, S]) or None.
        chunk: block-causal evaluation: queries in chunks of ``chunk``; chunk [lo, hi)
            sees only the first S - T + hi slots. Valid when every key a query may see
            sits at a slot <= the query's own (no cache, or new tokens appended); about
            half of the score matrix is then never computed. Probs are not returned.

    Returns:
        (output [B, T, D], updated (k, v, pos) stacks or None, probs [B, H, T, S] or None).
    """
    b, t, _ = x.shape
    nk = cfg.n_kv_heads
    q, k, v = dense_many(x, (p["wq"], p["wk"], p["wv"]),
                         ("btd,dhe->bthe", "btd,dke->btke", "btd,dke->btke"), cfg)
    ct = cfg.cdtype
    if "bq" in p:
        q, k, v = q + p["bq"].astype(ct), k + p["bk"].astype(ct), v + p["bv"].astype(ct)
    if rope is not None:
        q = layers.apply_rope(cfg, q, *rope)
        k = layers.apply_rope(cfg, k, *rope)
    if kv is None:
        keys, vals = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)  # [B, K, S=T, Dh]
        k_pos = jnp.broadcast_to(q_pos[:, None, :], (b, nk, t))  # [B, K, S=T]
        new_kv = None
    else:
        kc, vc, pc, li = kv
        kc, vc = _write_cache(kc, vc, li, k, v, cursor, slots)
        # read this layer's keys from the written buffers: without the barrier XLA fuses
        # the layer slice with the write (reading the old buffer next to the in-place
        # update), and then copies the whole cache to keep the old one alive
        kc, vc = jax.lax.optimization_barrier((kc, vc))
        new_kv = (kc, vc, pc)
        keys, vals, k_pos = kc[li], vc[li], pc[li]
    q_seg, k_seg = segments if segments is not None else (None, None)
    s = keys.shape[2]
    if chunk is None or chunk >= t:
        out, probs = _attend(cfg, q, keys, vals, q_pos, k_pos, q_seg, k_seg, attn_bias)
        probs = probs.reshape(b, cfg.n_heads, t, s)
    else:
        bias = (None if attn_bias is None
                else jnp.broadcast_to(attn_bias, (b, cfg.n_heads, t, s)))
        outs = []
        q = q * (1.0 / math.sqrt(cfg.head_dim))  # scale [T, H, Dh] once, not [H, T, S]
        for lo in range(0, t, chunk):
            hi = min(lo + chunk, t)
            lim = s - t + hi
            outs.append(_attend(
                cfg, q[:, lo:hi], keys[:, :, :lim], vals[:, :, :lim], q_pos[:, lo:hi],
                k_pos[..., :lim], None if q_seg is None else q_seg[:, lo:hi],
                None if k_seg is None else k_seg[:, :lim],
                None if bias is None else bias[:, :, lo:hi, :lim], prescaled=True)[0])
        out, probs = jnp.concatenate(outs, axis=1), None
    y = dense(out, p["wo"], "bthe,hed->btd", cfg)
    if "bo" in p:
        y = y + p["bo"].astype(ct)
    return y, new_kv, probs


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


def segment_positions(segment_ids: Array) -> Array:
    """Positions restarting at 0 in every segment (documents packed into one row);
    segment ids < 0 (padding) get -1. segment_ids [B, T] -> [B, T] int32."""
    seg = jnp.asarray(segment_ids)
    t = seg.shape[-1]
    idx = jnp.arange(t, dtype=jnp.int32)
    start = jnp.concatenate([jnp.ones_like(seg[..., :1], bool), seg[..., 1:] != seg[..., :-1]], -1)
    first = jax.lax.cummax(jnp.where(start, idx, 0), axis=seg.ndim - 1)
    return jnp.where(seg >= 0, idx - first, -1).astype(jnp.int32)


def embed(params: Params, cfg: ModelConfig, tokens: Array, positions: Array) -> Array:
    """Token (and learned position) embeddings [B, T, D] in the compute dtype."""
    if isinstance(params["embed"], QuantWeight):  # rows looked up without dequantizing all
        x = take_rows(params["embed"], tokens, cfg.cdtype)
    else:
        x = params["embed"].astype(cfg.cdtype)[tokens]
    if cfg.pos == "learned":
        pe = params["pos_embed"].astype(cfg.cdtype)
        x = x + pe[jnp.clip(positions, 0, cfg.max_seq_len - 1)]
    return x


def unembed(params: Params, cfg: ModelConfig, x: Array, at: Array | None = None) -> Array:
    """Final norm + LM head; float32 logits.

    Args:
        x: [..., D] residual stream (usually [B, T, D]).
        at: optional [B, N] slot indices into T: only those slots reach the norm and
            the vocabulary projection (-> [B, N, V]).
    """
    if at is not None:
        x = jnp.take_along_axis(x, at[..., None], axis=1)
    x = layers.norm(params["final_norm"], cfg, x)
    if cfg.tie_embeddings:
        logits = dense(x, params["embed"], "...d,vd->...v", cfg)
        if isinstance(params["embed"], QuantWeight) and cfg.quant_impl != "xla":
            logits = _refine_top_logits(x, params["embed"], logits)
    else:
        logits = dense(x, params["lm_head"], "...d,dv->...v", cfg)
        if "lm_head_bias" in params:
            logits = logits + params["lm_head_bias"].astype(cfg.cdtype)
    return logits.astype(jnp.float32)


REFINE_TOP = 16


def _refine_top_logits(x: Array, w: QuantWeight, logits: Array, k: int = REFINE_TOP) -> Array:
    """Recomputes the ``k`` largest logits exactly (float32 activations against the
    dequantized rows of a quantized tied head).

    The CPU kernel rounds activations to int8 blocks, which moves logits by ~0.5% of
    their scale: enough to swap two near-tied candidates (SmolLM2 Q4_1 answering the
    capital-of-France prompt starts "The" vs "L" 0.08 apart). Only the candidates that
    greedy, top-k and most of top-p's mass look at are refined; the rest stay approximate.
    Done only for decode-sized inputs (<= 16 rows), where the kernel runs.
    """
    v = logits.shape[-1]
    rows = logits.reshape(-1, v)
    if rows.shape[0] > 16 or k >= v:
        return logits
    top = jax.lax.top_k(rows, k)[1]  # [N, k]
    exact = jnp.einsum("nd,nkd->nk", x.reshape(-1, x.shape[-1]).astype(jnp.float32),
                       take_rows(w, top, jnp.float32))
    rows = rows.at[jnp.arange(rows.shape[0])[:, None], top].set(exact.astype(rows.dtype))
    return rows.reshape(logits.shape)


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
    segments=None,
    chunk: int | None = None,
):
    """One Transformer block (sequential pre-norm, or GPT-J parallel).

    Returns:
        (x [B, T, D], updated cache stacks or None, attention probs or None).
    """
    h = layers.norm(lp["attn_norm"], cfg, x)
    a, new_kv, probs = attention(lp["attn"], cfg, h, q_pos, rope, kv, cursor, slots, attn_bias,
                                 segments, chunk)
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


@struct.dataclass
class BlocksOutput:
    """What ``run_blocks`` returns.

    Attributes:
        x: [B, T, D] residual stream after the last block run.
        cache: the updated KVCache when one was passed, else None.
        captured: {site: [Lc, B, T, ...]} activations of the captured layers (in the
            order asked), or None without ``capture``.
    """

    x: Array
    cache: KVCache | None = None
    captured: dict[str, Array] | None = None


def _layer_range(arg, n: int) -> range:
    if arg is None:
        return range(n)
    if isinstance(arg, (slice, range)):
        r = range(n)[arg] if isinstance(arg, slice) else arg
        if r.step == 1 and 0 <= r.start <= r.stop <= n and len(r):
            return r
    raise ValueError(f"run_blocks: layers must be a non-empty contiguous slice or range within "
                     f"the {n} layers, got {arg!r}")


def _key_segments(segment_ids, cache, write_slots, cursor):
    """Segment id of every cache slot: 0 (shared) except the slots written now."""
    b, t = segment_ids.shape
    s = cache.capacity
    kseg = jnp.zeros((b, s), jnp.int32)
    seg = segment_ids.astype(jnp.int32)
    if write_slots is None:
        return jax.lax.dynamic_update_slice(kseg, seg, (0, cursor))
    sl = write_slots[0] if write_slots.ndim == 4 else write_slots  # [B, K, T]
    return kseg.at[jnp.arange(b)[:, None], sl[:, 0]].set(seg)


def run_blocks(
    params: Params,
    cfg: ModelConfig,
    x: Array,
    *,
    positions: Array,
    layers: slice | range | None = None,
    scan: bool = False,
    cache: KVCache | None = None,
    write_slots: Array | None = None,
    segment_ids: Array | None = None,
    attn_bias: Array | None = None,
    capture: tuple[Sequence[str], Sequence[int] | None] | None = None,
    intervene: Intervene | None = None,
    chunk: int | None = None,
    fetch: Callable[[Params], Params] | None = None,
    remat: bool = False,
) -> BlocksOutput:
    """Runs a contiguous range of Transformer blocks on the residual stream ``x``.

    Args:
        params: model params; ``params["layers"]`` a list (per layer) or a stacked dict
            (``stack_layers``). Only ``layers`` is read.
        x: [B, T, D] input of the first block run (``embed`` output or a stored stream).
        positions: [B, T] positions (-1 = padding, never attended).
        layers: which blocks (a slice/range of absolute layer indices; default all).
            Cache writes and hook/capture layer indices are absolute.
        scan: run the blocks in a ``lax.scan`` (one compiled block body). Stacks a
            list of layers inside the call (a copy): keep ``stack_layers(params)``
            around to avoid it (a stacked part, ``layers=range(i, j)``, is read in place).
            Hooks then see a traced layer index.
        cache, write_slots: KV cache to write the new keys into and attend over
            (slots: [B, K, T] or [L, B, K, T]; default append at ``cache.cursor``).
        segment_ids: [B, T] int; a query of segment s > 0 sees keys of segment s and of
            segment 0 (shared). Cached slots not written by this call count as 0.
        attn_bias: additive attention bias broadcastable to [B, H, T, S].
        capture: (sites, layers or None = every layer run) to return as outputs
            (``SITES``); "attn_probs" needs ``chunk=None``.
        intervene: ``f(site, layer, act) -> act`` applied inside the blocks.
        chunk: block-causal query chunks (see ``attention``).
        fetch: ``f(layer_params) -> layer_params`` applied to each block's params just
            before the block runs, e.g. ``jax.device_put`` from host memory to the device
            inside the scan (``jaxlm.offload.scan_offload``); its transpose moves the block
            gradients back. None (default) adds nothing to the program.
        remat: rematerialise each block in the backward pass (``jax.checkpoint`` of the
            block body), so only the residual stream between blocks is kept.

    Returns:
        BlocksOutput(x, cache, captured).
    """
    n = num_layers(params)
    rng = _layer_range(layers, n)
    sites = tuple(capture[0]) if capture else ()
    bad = set(sites) - set(SITES)
    if bad:
        raise ValueError(f"run_blocks: unknown capture sites {sorted(bad)}; use {SITES}")
    if "attn_probs" in sites and chunk is not None:
        raise ValueError("run_blocks: capturing 'attn_probs' needs chunk=None")
    cap_layers = (tuple(rng) if not capture or capture[1] is None
                  else tuple(int(i) for i in capture[1]))
    if any(i not in rng for i in cap_layers):
        raise ValueError(f"run_blocks: capture layers {cap_layers} outside the run {rng}")
    rope = (layers_rope(cfg, positions))
    segments = None
    if segment_ids is not None:
        kseg = (segment_ids if cache is None
                else _key_segments(segment_ids, cache, write_slots, cache.cursor))
        segments = (segment_ids, kseg)
    cursor = None if cache is None else cache.cursor
    kv0 = None if cache is None else (
        cache.k, cache.v, _write_pos(cache.pos, rng, positions, cursor, write_slots))

    def one(lp, li, x, kv, slots, cache_li=None):
        rec = {}
        if fetch is not None:
            lp = fetch(lp)

        def hook(site, layer, act):
            if intervene is not None:
                act = intervene(site, layer, act)
            if site in sites:
                rec[site] = act
            return act

        use_hook = intervene is not None or bool(sites)
        if "resid_pre" in sites:
            rec["resid_pre"] = x
        kvarg = None if kv is None else (*kv, li if cache_li is None else cache_li)
        x, new_kv, probs = block(lp, cfg, x, positions, rope, layer=li, kv=kvarg,
                                 cursor=cursor, slots=slots, attn_bias=attn_bias,
                                 intervene=hook if use_hook else None, segments=segments,
                                 chunk=chunk)
        if "attn_probs" in sites:
            rec["attn_probs"] = probs
        return x, new_kv, rec

    def slots_of(li):
        if write_slots is None:
            return None
        return write_slots[li] if write_slots.ndim == 4 else write_slots

    lay = params["layers"]
    captured = None
    if scan:
        stacked = lay if isinstance(lay, dict) else jax.tree.map(lambda *xs: jnp.stack(xs), *lay)
        whole = (rng.start, rng.stop) == (0, n)
        # A part of a stack is read one layer per iteration with a dynamic index (slicing
        # the sub-stack first would copy it on every call). With ``fetch`` (the stack may
        # live in host memory) the stack or its slice goes in as scanned inputs instead.
        index_in_body = not whole and fetch is None
        sub = (None if index_in_body else stacked if whole
               else jax.tree.map(lambda a: a[rng.start:rng.stop], stacked))
        idx = jnp.arange(rng.start, rng.stop, dtype=jnp.int32)

        # the cache goes through the scan one layer at a time (inputs -> outputs), so no
        # iteration carries or copies the whole stacked buffer
        kv_sub = None if kv0 is None else tuple(a[rng.start:rng.stop] for a in kv0)

        def body(x, xs):
            lp, li, kv_l = xs
            if lp is None:
                lp = jax.tree.map(
                    lambda a: jax.lax.dynamic_index_in_dim(a, li, 0, keepdims=False), stacked)
            slots = None if write_slots is None else (
                write_slots[li] if write_slots.ndim == 4 else write_slots)
            kv = None if kv_l is None else tuple(a[None] for a in kv_l)
            x, new_kv, rec = one(lp, li, x, kv, slots, cache_li=0)
            return x, (rec, None if new_kv is None else tuple(a[0] for a in new_kv))

        if remat:
            body = jax.checkpoint(body)
        elif index_in_body:
            # the backward pass re-reads each layer from the stack (and redoes the cheap
            # non-matmul ops) instead of saving every read layer, reshaped, as a residual:
            # that would copy the part of the stack on every call
            body = jax.checkpoint(body, policy=jax.checkpoint_policies.dots_saveable)
        x, (recs, kv_out) = jax.lax.scan(body, x, (sub, idx, kv_sub))
        kv = None
        if kv0 is not None:
            kv = tuple(a if whole else
                       jax.lax.dynamic_update_slice_in_dim(full, a, rng.start, axis=0)
                       for full, a in zip(kv0, kv_out))
        if sites:
            sel = jnp.asarray([i - rng.start for i in cap_layers], jnp.int32)
            captured = {site: jnp.take(recs[site], sel, axis=0) for site in sites}
    else:
        kv = kv0
        store: dict[str, list[Array]] = {site: [] for site in sites}
        for li in rng:
            lp = lay[li] if not isinstance(lay, dict) else jax.tree.map(lambda a, i=li: a[i], lay)
            x, kv_i, rec = (jax.checkpoint(one, static_argnums=(1,)) if remat else one)(
                lp, li, x, kv, slots_of(li))
            if cache is not None:
                kv = kv_i
            if li in cap_layers:
                for site in sites:
                    store[site].append(rec[site])
        if sites:
            order = [cap_layers.index(i) for i in sorted(cap_layers)]
            captured = {site: jnp.stack([store[site][order.index(j)] for j in range(len(order))])
                        for site in sites}
    new_cache = None
    if cache is not None:
        t = x.shape[1]
        new_cache = KVCache(
            k=kv[0], v=kv[1], pos=kv[2],
            next_pos=jnp.maximum(cache.next_pos, jnp.max(positions, axis=-1) + 1),
            cursor=cache.cursor + (t if write_slots is None else 0),
        )
    return BlocksOutput(x=x, cache=new_cache, captured=captured)


def layers_rope(cfg: ModelConfig, positions: Array):
    """RoPE (cos, sin) for ``positions`` (pads clamped to 0), or None for other schemes."""
    return layers.rope_angles(cfg, jnp.maximum(positions, 0)) if cfg.pos == "rope" else None


def apply(
    params: Params,
    cfg: ModelConfig,
    tokens: Array,
    *,
    positions: Array | None = None,
    cache: KVCache | None = None,
    write_slots: Array | None = None,
    attn_bias: Array | None = None,
    segment_ids: Array | None = None,
    return_hidden: bool = False,
    return_attn: bool = False,
    last_logits_only: bool = False,
    intervene: Intervene | None = None,
    scan: bool = False,
) -> ModelOutput:
    """Runs the model on ``tokens`` [B, T]: ``embed`` -> ``run_blocks`` -> ``unembed``.

    Args:
        params: from ``init`` or a weight loader (layers listed or stacked).
        cfg: the model config (static under jit).
        tokens: [B, T] int token ids.
        positions: [B, T] int positions (-1 marks padding). Default: consecutive,
            continuing from ``cache.next_pos``.
        cache: a KVCache to write the new keys/values into and attend over.
        write_slots: with a cache, [B, K, T] (same for all layers) or [L, B, K, T]
            slot indices to write; default appends at ``cache.cursor``.
        attn_bias: additive attention bias broadcastable to [B, H, T, S].
        segment_ids: [B, T] packed-row segments (see ``run_blocks``).
        return_hidden, return_attn: also return residual streams / attention probs.
        last_logits_only: compute logits for the last position only (prefill).
        intervene: optional activation hook ``f(site, layer, act) -> act``.
        scan: run the blocks in a ``lax.scan``.

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
    sites = (("resid_post",) if return_hidden else ()) + (("attn_probs",) if return_attn else ())
    out = run_blocks(params, cfg, x, positions=positions, scan=scan, cache=cache,
                     write_slots=write_slots, segment_ids=segment_ids, attn_bias=attn_bias,
                     capture=(sites, None) if sites else None, intervene=intervene)
    y = out.x[:, -1:] if last_logits_only else out.x
    logits = unembed(params, cfg, y)
    hidden = attn = None
    if return_hidden:
        rp = out.captured["resid_post"]
        hidden = (x,) + tuple(rp[i] for i in range(rp.shape[0]))
    if return_attn:
        ap = out.captured["attn_probs"]
        attn = tuple(ap[i] for i in range(ap.shape[0]))
    return ModelOutput(logits=logits, cache=out.cache, hidden=hidden, attn=attn)
