"""Generation with per-step eviction: one compiled ``lax.scan`` per cache shape.

Each decode step (``policy_step``):

1. ``jaxlm.core.apply`` writes the new token's keys/values into ``free_slot``
   (``write_slots`` [L, B, K, 1], a scatter into the stacked cache, in place) and
   attends over all S slots, returning the attention probabilities.
2. The policy folds this step's attention into the per-slot scores.
3. The next slot to overwrite is the lowest-priority slot outside the protected
   window and sinks (``policy.choose_slot``); the cache shape never changes.

The policy is a pytree of per-row arrays (``PolicyParams``), so the compiled
loop is shared by every policy and budget that fits the same cache capacity;
it compiles once per (batch, capacity, steps).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxlm.core.config import ModelConfig
from jaxlm.core.generate import check_fits, pad_prompts, select_rows
from jaxlm.core.transformer import Params, apply
from jaxlm.kvcache import policy as P
from jaxlm.kvcache.cache import PolicyState, compress, prefill

Array = jax.Array


def policy_step(params: Params, cfg: ModelConfig, state: PolicyState, tok: Array,
                pp: P.PolicyParams) -> tuple[Array, PolicyState]:
    """One decode step with scoring and eviction: token [B] -> (logits [B, V], state)."""
    cache = state.cache
    cur = cache.next_pos  # [B] position of ``tok``
    out = apply(params, cfg, tok[:, None], cache=cache, write_slots=state.free_slot[..., None],
                return_attn=True)
    probs = jnp.stack([a[:, :, 0, :] for a in out.attn])  # [L, B, H, S]
    step = state.step + 1
    s = cache.capacity
    written = jnp.arange(s, dtype=jnp.int32) == state.free_slot[..., None]  # [L, B, K, S]
    inc = P.increments(probs, pp, cfg.n_kv_heads, step)
    score = P.observe(state.score, written, inc, pp)
    pos = out.cache.pos

    def draw():
        r = jax.vmap(lambda k: jax.random.uniform(k, pos.shape[:1] + pos.shape[2:]))(
            P.row_keys(pp, step, 2))
        return jnp.moveaxis(r, 0, 1)

    rand = jax.lax.cond(jnp.any(pp.prio_kind == P.PRIO_RANDOM), draw,
                        lambda: jnp.zeros(pos.shape, jnp.float32))
    prio = P.priority(score, pos, cur, pp, rand)
    free = P.choose_slot(prio, pos)
    new = PolicyState(cache=out.cache, score=score, free_slot=free,
                      prompt_len=state.prompt_len, step=step)
    return out.logits[:, 0], new


@struct.dataclass
class DecodeOutput:
    """tokens [B, T] (token 0 from the prefill logits), logits [B, T, V] or None, state;
    finished [B, T]: the row's processor had finished after this token (all False without
    a processor)."""

    tokens: Array
    logits: Array | None
    state: PolicyState
    finished: Array


@functools.partial(jax.jit, static_argnames=("cfg", "return_logits"), donate_argnames=("state",))
def _decode(params, state, first_logits, pp, forced, use_forced, processor, *, cfg,
            return_logits):
    t = forced.shape[1]
    b = first_logits.shape[0]
    # a LogitsProcessor (core.generate's protocol: e.g. a grammar) masks each row's logits
    # until the row finishes; after that the row runs free and its tokens are cut by lengths
    if processor is None:
        ps, done = None, jnp.zeros((b,), bool)
        first = jnp.argmax(first_logits, axis=-1).astype(jnp.int32)
    else:
        ps = processor.init(b)
        first = jnp.argmax(processor.apply(ps, first_logits), axis=-1).astype(jnp.int32)
        ps = processor.advance(ps, first)
        done = processor.finished(ps)
    fin0 = done
    inp0 = jnp.where(use_forced, forced[:, 0], first)

    def body(carry, i):
        state, tok, ps, done = carry
        logits, state = policy_step(params, cfg, state, tok, pp)
        if processor is None:
            gen = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        else:
            masked = jnp.where(done[:, None], logits, processor.apply(ps, logits))
            gen = jnp.argmax(masked, axis=-1).astype(jnp.int32)
            ps = select_rows(done, ps, processor.advance(ps, gen))
            done = done | processor.finished(ps)
        nxt = jnp.where(use_forced, forced[:, jnp.minimum(i + 1, t - 1)], gen)
        ys = (gen, logits if return_logits else None, done)
        return (state, nxt, ps, done), ys

    (state, _, _, _), (gens, logits, fins) = jax.lax.scan(
        body, (state, inp0, ps, done), jnp.arange(t - 1))
    tokens = jnp.concatenate([first[:, None], gens.T], axis=1)
    finished = jnp.concatenate([fin0[:, None], fins.T], axis=1)
    if return_logits:
        logits = jnp.concatenate([first_logits[:, None], jnp.swapaxes(logits, 0, 1)], axis=1)
    return DecodeOutput(tokens=tokens, logits=logits, state=state, finished=finished)


def decode(
    params: Params,
    cfg: ModelConfig,
    state: PolicyState,
    first_logits: Array,
    pp: P.PolicyParams,
    max_new_tokens: int,
    *,
    forced: Array | None = None,
    use_forced: Array | None = None,
    return_logits: bool = False,
    processor: Any = None,
) -> DecodeOutput:
    """Greedy decoding (or teacher forcing) of ``max_new_tokens`` with eviction.

    Args:
        params, cfg: the model.
        state: from ``compress`` (donated: do not reuse it).
        first_logits: [B, V] prefill logits (token 0 is their argmax).
        pp: per-row PolicyParams.
        max_new_tokens: T, tokens per row (the loop runs T - 1 decode steps).
        forced: [B, T] teacher-forcing tokens; rows with ``use_forced`` [B] feed
            these instead of their own argmax (their ``tokens`` are then the
            per-step argmax predictions, for top-1 agreement).
        return_logits: also return the [B, T, V] logits of every step (unmasked).
        processor: optional ``jaxlm.core.generate.LogitsProcessor`` (e.g. a
            ``jaxlm.structured`` grammar): masks each row's logits and advances its state
            until ``finished``; not with ``forced``.

    Returns:
        DecodeOutput.
    """
    b = first_logits.shape[0]
    if max_new_tokens < 1:
        raise ValueError(f"decode: max_new_tokens must be >= 1, got {max_new_tokens}")
    if processor is not None and forced is not None:
        raise ValueError("decode: a processor constrains the model's own tokens; it cannot be "
                         "combined with teacher forcing (forced=...)")
    if forced is None:
        forced = jnp.zeros((b, max_new_tokens), jnp.int32)
        use_forced = jnp.zeros((b,), bool)
    if forced.shape != (b, max_new_tokens):
        raise ValueError(f"decode: forced must be [{b}, {max_new_tokens}], got {forced.shape}")
    if use_forced is None:
        use_forced = jnp.ones((b,), bool)
    return _decode(params, state, first_logits, pp, jnp.asarray(forced, jnp.int32),
                   jnp.asarray(use_forced, bool), processor, cfg=cfg,
                   return_logits=return_logits)


@struct.dataclass
class KVGenerateOutput:
    """tokens [B, T]; lengths [B] (up to the first stop id); capacities [B] (C per row);
    logits [B, T, V] when requested; the final PolicyState."""

    tokens: Array
    lengths: Array
    capacities: Array
    logits: Array | None
    state: PolicyState


def generate(
    params: Params,
    cfg: ModelConfig,
    prompts: Sequence[Sequence[int]],
    policies: P.Policy | Sequence[P.Policy],
    *,
    max_new_tokens: int,
    stop_ids: Sequence[int] = (),
    pad_id: int = 0,
    bucket: int = 16,
    capacity: int | None = None,
    forced: np.ndarray | None = None,
    return_logits: bool = False,
    obs_rows: int = 64,
    processor: Any = None,
) -> KVGenerateOutput:
    """Greedy generation with a fixed-budget, per-row evicting KV cache.

    Args:
        params, cfg: the model.
        prompts: token-id lists (left-padded to a multiple of ``bucket``).
        policies: one Policy for all rows or one per row.
        max_new_tokens: T.
        stop_ids: ``lengths`` count tokens before the first stop id (decoding
            itself always runs T steps so every row has the same shape).
        capacity: static cache slots S (default: the largest row budget). Pass a
            fixed value to reuse one compiled loop across budgets.
        forced: optional [B, T] teacher-forcing tokens (all rows forced).
        return_logits: return per-step logits.
        obs_rows: SnapKV observation rows computed at prefill.
        processor: optional per-row ``LogitsProcessor`` (core.generate's protocol), e.g.
            ``jaxlm.structured.api.processor_for(constraint, B, tokenizer, V)``: logits are
            masked inside the compiled loop; ``lengths`` end after the token that finishes
            the row (or before a stop id, whichever comes first).

    Returns:
        KVGenerateOutput.
    """
    if isinstance(policies, P.Policy):
        policies = [policies] * len(prompts)
    if len(policies) != len(prompts):
        raise ValueError(f"generate: {len(policies)} policies for {len(prompts)} prompts")
    toks, mask = pad_prompts(prompts, pad_id, bucket)
    check_fits(cfg, toks.shape[1], max_new_tokens)
    variants = P.keyformer_variants(policies)
    pp = P.resolve_rows(policies, [len(p) for p in prompts], max_new_tokens, variants)
    caps = np.asarray(pp.cap)
    s = int(caps.max()) if capacity is None else int(capacity)
    if caps.max() > s:
        raise ValueError(f"generate: a row's budget C={caps.max()} exceeds the cache capacity "
                         f"{s}; pass capacity >= {caps.max()} or lower the budget")
    pre = prefill(params, cfg, toks, mask, variants=variants, obs_rows=obs_rows)
    state = compress(pre, np.arange(len(prompts)), pp, s)
    out = decode(params, cfg, state, pre.logits, pp, max_new_tokens,
                 forced=None if forced is None else jnp.asarray(forced),
                 return_logits=return_logits, processor=processor)
    toks_np = np.asarray(out.tokens)
    fin_np = np.asarray(out.finished)
    lengths = np.full((len(prompts),), max_new_tokens, np.int32)
    for i, row in enumerate(toks_np):
        hit = np.flatnonzero(np.isin(row, list(stop_ids))) if stop_ids else np.zeros(0, int)
        done = np.flatnonzero(fin_np[i])
        ends = ([int(hit[0])] if hit.size else []) + ([int(done[0]) + 1] if done.size else [])
        if ends:
            lengths[i] = min(ends)
    return KVGenerateOutput(tokens=out.tokens, lengths=jnp.asarray(lengths),
                            capacities=jnp.asarray(caps), logits=out.logits, state=out.state)
