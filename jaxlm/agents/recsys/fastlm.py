"""A scoring-only forward pass for packed candidate rows, faster on CPU than ``core.apply``.

``RecScorer`` (``scoring.py``) packs a user's prompt and all candidate titles into one row
and reads log-probs only where candidate tokens are predicted. This module is the forward
pass behind its ``engine="fast"``. It computes the same function as ``jaxlm.core.apply`` with
the same additive-bias masking (checked to 1e-4 against ``jaxlm.core.generate.score`` in the
tests) and differs only in how the work is laid out:

* **Layers in a ``lax.scan``** over stacked per-layer params: one compiled layer body, so a
  new row shape compiles in seconds.
* **Block-causal attention.** Queries are processed in static chunks of ``chunk`` slots; a
  chunk attends only to the shared-prefix keys and to the row's keys up to the chunk's end.
  In a packed row every key a query may see lies at a slot <= its own (the prompt precedes
  the candidates, and a candidate sees the prompt and its own earlier tokens), so nothing
  visible is cut, and about half of the dense [T, T] score matrix (the part above the
  diagonal) is never computed. The visibility mask is built per chunk from positions and
  segment ids instead of a materialised [G, H, T, S] float bias.
* **LM head only at scored slots.** Hidden states are gathered at the slots that predict a
  candidate token before the final norm and the vocabulary projection (prompt slots never
  reach the LM head).
* **Optional bfloat16 matmuls** (``mm_dtype``): weights and matmul inputs in bf16 with
  float32 accumulation; the residual stream, norms, RoPE, attention scores/softmax and the
  log-softmax stay float32. On this CPU (AVX512-BF16) bf16 matmuls run ~2x faster than f32.

Supported: RoPE / learned / no positions, RMS or LayerNorm, SwiGLU or GELU MLPs, sequential
or parallel (GPT-J) blocks, biases, tied or untied heads. ALiBi models are not supported
(``supports(cfg)`` is False; ``RecScorer`` then uses the ``core.apply`` engine).

Candidate for ``jaxlm.core`` / ``jaxlm.llm``: a general "packed scoring forward" with
block-causal chunks would speed up ``LocalBackend.score_many`` too.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.core import layers
from jaxlm.core.config import ModelConfig

NEG = -1e30  # masked scores (finite: fully masked pad rows stay NaN-free)


def supports(cfg: ModelConfig) -> bool:
    """Whether the fast forward implements this architecture."""
    return cfg.pos in ("rope", "learned", "none")


def prepare_params(params: Any, cfg: ModelConfig, mm_dtype: str = "float32") -> dict:
    """Stacks per-layer params along a leading layer axis; matrices cast to ``mm_dtype``.

    Returns:
        {"embed" f32 [V, D] (lookup), "head" mm [V, D] or [D, V] (untied), "head_bias"?,
         "pos_embed"?, "final_norm", "layers": {name: [L, ...]}}.
    """
    if not supports(cfg):
        raise ValueError(f"fastlm: positions {cfg.pos!r} are not supported; use "
                         "RecScorer(engine='core')")
    mm = jnp.dtype(mm_dtype)

    def cast(x):
        x = jnp.asarray(x)
        return x.astype(mm) if x.ndim >= 2 else x.astype(jnp.float32)

    stacked = jax.tree.map(lambda *xs: jnp.stack([cast(x) for x in xs]), *params["layers"])
    out = {"embed": jnp.asarray(params["embed"], jnp.float32),
           "final_norm": jax.tree.map(lambda x: jnp.asarray(x, jnp.float32),
                                      params["final_norm"]),
           "layers": stacked}
    out["head"] = (jnp.asarray(params["embed"]).astype(mm) if cfg.tie_embeddings
                   else jnp.asarray(params["lm_head"]).astype(mm))
    if "lm_head_bias" in params:
        out["head_bias"] = jnp.asarray(params["lm_head_bias"], jnp.float32)
    if "pos_embed" in params:
        out["pos_embed"] = jnp.asarray(params["pos_embed"], jnp.float32)
    return out


def _mm(x, w, spec):
    """einsum with inputs in w's dtype and float32 accumulation/output."""
    return jnp.einsum(spec, x.astype(w.dtype), w, preferred_element_type=jnp.float32)


def _bias(p, name, y):
    return y + p[name] if name in p else y


def _attention(p, cfg, h, qpos, segq, rope, pre_k, pre_v, pre_pos, chunk, attn_dtype):
    """Block-causal attention of one layer.

    Args:
        h: [G, T, D] normed input (f32). qpos, segq: [G, T] positions / segment ids.
        pre_k, pre_v: [Gp, P, K, Dh] prefix keys/values (Gp in {1, G}); pre_pos [Gp, P].

    Returns:
        (out [G, T, D], k [G, T, K, Dh], v [G, T, K, Dh]).
    """
    g_, t, _ = h.shape
    nk, qg, hd = cfg.n_kv_heads, cfg.q_per_kv, cfg.head_dim
    q = _bias(p, "bq", _mm(h, p["wq"], "btd,dhe->bthe"))
    k = _bias(p, "bk", _mm(h, p["wk"], "btd,dke->btke"))
    v = _bias(p, "bv", _mm(h, p["wv"], "btd,dke->btke"))
    if rope is not None:
        q = layers.apply_rope(cfg, q, *rope)
        k = layers.apply_rope(cfg, k, *rope)
    q = q * (1.0 / math.sqrt(hd))
    npre = pre_k.shape[1]
    if npre:
        pk = jnp.broadcast_to(pre_k, (g_,) + pre_k.shape[1:])
        pv = jnp.broadcast_to(pre_v, (g_,) + pre_v.shape[1:])
        ppos = jnp.broadcast_to(pre_pos, (g_, npre))
    outs = []
    for lo in range(0, t, chunk):
        hi = min(lo + chunk, t)
        qc = q[:, lo:hi].reshape(g_, hi - lo, nk, qg, hd)
        kk, vv = k[:, :hi], v[:, :hi]
        kpos, kseg = qpos[:, :hi], segq[:, :hi]
        qp, qs = qpos[:, lo:hi, None], segq[:, lo:hi, None]  # [G, C, 1]
        ok = (kpos[:, None, :] >= 0) & (kpos[:, None, :] <= qp) & (
            (kseg[:, None, :] == 0) | (kseg[:, None, :] == qs))  # [G, C, S]
        if npre:
            kk = jnp.concatenate([pk, kk], axis=1)
            vv = jnp.concatenate([pv, vv], axis=1)
            okp = (ppos[:, None, :] >= 0) & (ppos[:, None, :] <= qp)
            ok = jnp.concatenate([okp, ok], axis=-1)
        s = jnp.einsum("bckgd,bskd->bkgcs", qc.astype(attn_dtype), kk.astype(attn_dtype),
                       preferred_element_type=jnp.float32)  # [G, K, g, C, S]
        s = jnp.where(ok[:, None, None], s, NEG)
        pr = jax.nn.softmax(s, axis=-1)
        o = jnp.einsum("bkgcs,bskd->bckgd", pr.astype(attn_dtype), vv.astype(attn_dtype),
                       preferred_element_type=jnp.float32)
        outs.append(o.reshape(g_, hi - lo, -1, hd))
    o = jnp.concatenate(outs, axis=1) if len(outs) > 1 else outs[0]  # [G, T, H, Dh]
    return _bias(p, "bo", _mm(o, p["wo"], "bthe,hed->btd")), k, v


def _mlp(p, cfg, x):
    up = _bias(p, "b_up", _mm(x, p["w_up"], "btd,df->btf"))
    if cfg.mlp == "swiglu":
        h = jax.nn.silu(_bias(p, "b_gate", _mm(x, p["w_gate"], "btd,df->btf"))) * up
    else:
        h = jax.nn.gelu(up, approximate=True)
    return _bias(p, "b_down", _mm(h, p["w_down"], "btf,fd->btd"))


def _trunk(sp, cfg, toks, pos, seg, pre_k, pre_v, pre_pos, chunk, attn_dtype="float32"):
    """Residual stream after all layers [G, T, D] and per-layer keys/values."""
    x = sp["embed"][toks]
    if cfg.pos == "learned":
        x = x + sp["pos_embed"][jnp.clip(pos, 0, cfg.max_seq_len - 1)]
    rope = layers.rope_angles(cfg, jnp.maximum(pos, 0)) if cfg.pos == "rope" else None

    def body(x, xs):
        lp, pk, pv = xs
        h = layers.norm(lp["attn_norm"], cfg, x)
        a, k, v = _attention(lp["attn"], cfg, h, pos, seg, rope, pk, pv, pre_pos, chunk,
                             jnp.dtype(attn_dtype))
        if cfg.parallel_block:
            x = x + a + _mlp(lp["mlp"], cfg, h)
        else:
            x = x + a
            x = x + _mlp(lp["mlp"], cfg, layers.norm(lp["mlp_norm"], cfg, x))
        return x, (k, v)

    return jax.lax.scan(body, x, (sp["layers"], pre_k, pre_v))


@functools.partial(jax.jit, static_argnames=("cfg", "chunk", "attn_dtype"))
def prefill(sp, toks, pos, pre_k, pre_v, pre_pos, *, cfg: ModelConfig, chunk: int = 128,
            attn_dtype: str = "float32"):
    """Keys/values of a causal prefix (optionally after an earlier prefix).

    Args:
        toks, pos: [G, T] tokens and positions (-1 pad).
        pre_k, pre_v: [L, Gp, P, K, Dh] an earlier prefix (P may be 0); pre_pos [Gp, P].

    Returns:
        (k, v) [L, G, T, K, Dh] post-RoPE, at ``pos``.
    """
    seg = jnp.where(pos >= 0, 0, -1)
    _, (k, v) = _trunk(sp, cfg, toks, pos, seg, pre_k, pre_v, pre_pos, chunk, attn_dtype)
    return k, v


@functools.partial(jax.jit, static_argnames=("cfg", "chunk", "attn_dtype"))
def score_rows(sp, toks, pos, seg, pred, tgt, pre_k, pre_v, pre_pos, *, cfg: ModelConfig,
               chunk: int = 128, attn_dtype: str = "float32"):
    """Log-probs of packed candidate tokens (layout of ``jaxlm.llm.packing``).

    Args:
        sp: ``prepare_params`` output.
        toks, pos, seg: [G, T] row tokens, positions (-1 pad), segment ids (0 prompt,
            c + 1 candidate c, -1 pad).
        pred, tgt: [G, N] slot predicting each scored token, its id.
        pre_k, pre_v: [L, Gp, P, K, Dh] cached prefix (P may be 0); pre_pos [Gp, P].

    Returns:
        [G, N] float32 log-probs.
    """
    x, _ = _trunk(sp, cfg, toks, pos, seg, pre_k, pre_v, pre_pos, chunk, attn_dtype)
    h = jnp.take_along_axis(x, pred[..., None], axis=1)  # [G, N, D]: scored slots only
    h = layers.norm(sp["final_norm"], cfg, h)
    if cfg.tie_embeddings:
        logits = _mm(h, sp["head"], "bnd,vd->bnv")
    else:
        logits = _mm(h, sp["head"], "bnd,dv->bnv")
    if "head_bias" in sp:
        logits = logits + sp["head_bias"]
    lp = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(lp, tgt[..., None], axis=-1)[..., 0]


def empty_prefix(cfg: ModelConfig) -> tuple[np.ndarray, ...]:
    """A zero-length prefix (k, v [L, 1, 0, K, Dh], pos [1, 0])."""
    kv = np.zeros((cfg.n_layers, 1, 0, cfg.n_kv_heads, cfg.head_dim), np.float32)
    return kv, kv, np.zeros((1, 0), np.int32)
