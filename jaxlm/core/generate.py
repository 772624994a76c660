"""Batched generation and scoring, compiled once per (batch, prompt bucket, max length).

The whole decode loop is one ``lax.while_loop`` inside ``jax.jit`` (no Python
per token, no host syncs); the KV cache is the loop carry and is updated in
place. ``stream`` is the token-by-token variant (one jitted decode step per
call, cache donated) used by the chat entrypoint to print as it goes.

Prompts of different lengths are left-padded; pads get position -1 and are
never attended to, so every sequence sees exactly its own prompt.

Logits processors (constrained decoding, per-row biases) plug into the loop
through the ``LogitsProcessor`` protocol below; the processor is a traced
argument, so a new processor with the same array shapes reuses the compiled loop.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxlm.core.cache import KVCache, init_cache
from jaxlm.core.config import ModelConfig
from jaxlm.core.transformer import Params, apply, positions_from_mask

Array = jax.Array
MASKED = -1e9  # additive key bias of a masked prompt slot


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to pick the next token.

    Attributes:
        temperature: 0 means greedy (argmax).
        top_k: keep the k most likely tokens (0 = off).
        top_p: nucleus sampling mass (1.0 = off).
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@struct.dataclass
class GenerateOutput:
    """Generated tokens [B, max_new] (pad after stop), lengths [B] (stop token excluded),
    and the final cache."""

    tokens: Array
    lengths: Array
    cache: KVCache


class LogitsProcessor(Protocol):
    """What ``generate(..., processor=...)`` calls inside the jitted decode loop.

    A processor is a pytree (a ``flax.struct.dataclass``: arrays are traced leaves,
    Python-level settings are ``struct.field(pytree_node=False)`` and part of the
    compile key). It is passed to the loop as a traced argument, so a new processor
    with the same array shapes and static fields does not recompile. Rows are
    independent; every state leaf has the batch as its leading axis.

    Per step, with ``state`` starting at ``init(B)``:
        logits = apply(state, logits)     # [B, V] -> [B, V], e.g. -inf on disallowed ids
        token  = sample(logits)           # greedy, temperature, top-k, top-p all see it
        state  = advance(state, token)    # [B] int32; rows already stopped are not advanced
        stop  |= finished(state)          # bool [B]: the row stops after this token

    A token that makes ``finished`` True is kept in the output (unlike a stop
    token, which is dropped); if ``finished(init(B))`` is already True that row
    generates nothing. If ``apply`` leaves a row with no finite logit the sampled
    token is undefined (greedy picks id 0): the processor must always allow
    something (e.g. a stop token).
    """

    def init(self, batch: int) -> Any: ...

    def apply(self, state: Any, logits: Array) -> Array: ...

    def advance(self, state: Any, tokens: Array) -> Any: ...

    def finished(self, state: Any) -> Array: ...


@struct.dataclass
class LogitBias:
    """Per-row additive bias [B, V] on the logits (``-inf`` forbids a token); never finishes.

    The state is unused (a per-row zero), so the same bias applies at every step.
    """

    bias: Array

    def init(self, batch: int) -> Array:
        if batch != self.bias.shape[0]:
            raise ValueError(
                f"LogitBias: bias has {self.bias.shape[0]} rows but the batch has {batch}; "
                "give one bias row per prompt."
            )
        return jnp.zeros((batch,), jnp.int32)

    def apply(self, state: Array, logits: Array) -> Array:
        return logits + self.bias.astype(logits.dtype)

    def advance(self, state: Array, tokens: Array) -> Array:
        return state

    def finished(self, state: Array) -> Array:
        return jnp.zeros(state.shape, bool)


def select_rows(keep: Array, old: Any, new: Any) -> Any:
    """Per-row select over a state pytree: ``old`` where ``keep`` [B] is True."""

    def sel(o, n):
        return jnp.where(keep.reshape(keep.shape + (1,) * (n.ndim - 1)), o, n)

    return jax.tree.map(sel, old, new)


def sample_logits(logits: Array, key: Array, sampling: SamplingConfig) -> Array:
    """Samples token ids [B] from logits [B, V] per ``sampling`` (explicit PRNG key)."""
    if sampling.temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / sampling.temperature
    if sampling.top_k > 0:
        kth = jax.lax.top_k(logits, sampling.top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if sampling.top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        cum = jnp.cumsum(probs, axis=-1)
        # keep the smallest prefix whose mass reaches top_p (always at least one token)
        cutoff_idx = jnp.sum(cum - probs < sampling.top_p, axis=-1, keepdims=True) - 1
        cutoff = jnp.take_along_axis(sorted_logits, cutoff_idx, axis=-1)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def pad_prompts(
    prompts: Sequence[Sequence[int]], pad_id: int, bucket: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads token lists to a common length rounded up to ``bucket``.

    Returns:
        (tokens [B, T] int32, mask [B, T] bool with True on real tokens).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    t = max(len(p) for p in prompts)
    t = -(-t // bucket) * bucket
    toks = np.full((len(prompts), t), pad_id, np.int32)
    mask = np.zeros((len(prompts), t), bool)
    for i, p in enumerate(prompts):
        toks[i, t - len(p):] = p
        mask[i, t - len(p):] = True
    return toks, mask


def prefill(params: Params, cfg: ModelConfig, tokens: Array, mask: Array, cache: KVCache,
            positions: Array | None = None, attn_bias: Array | None = None):
    """Runs the (left-padded) prompt through the model into ``cache``.

    ``positions`` default: consecutive over ``mask`` (pads -1); ``attn_bias``: additive
    per-slot key bias [B, 1, 1, S] over the whole cache.

    Returns:
        (last-position logits [B, V], updated cache).
    """
    pos = positions_from_mask(mask, cache.next_pos) if positions is None else positions
    out = apply(params, cfg, tokens, positions=pos, cache=cache, last_logits_only=True,
                attn_bias=attn_bias)
    return out.logits[:, -1], out.cache


def decode_step(params: Params, cfg: ModelConfig, token: Array, cache: KVCache,
                attn_bias: Array | None = None):
    """One token per sequence: token [B] -> (logits [B, V], cache)."""
    out = apply(params, cfg, token[:, None], cache=cache, attn_bias=attn_bias)
    return out.logits[:, 0], out.cache


def _generate_impl(params, tokens, mask, key, processor=None, positions=None, key_mask=None, *, cfg,
              max_new_tokens, sampling, stop_ids, pad_id):
    b, t = tokens.shape
    cache = init_cache(cfg, b, t + max_new_tokens)
    bias = None
    if key_mask is not None:  # additive bias on prompt keys, seen by every later token
        bias = jnp.concatenate([key_mask, jnp.zeros((b, max_new_tokens), key_mask.dtype)], 1)
        bias = bias[:, None, None, :]
    logits, cache = prefill(params, cfg, tokens, mask, cache, positions, bias)
    stops = jnp.asarray(stop_ids if stop_ids else (-1,), jnp.int32)

    def pick(logits, step):
        return sample_logits(logits, jax.random.fold_in(key, step), sampling)

    if processor is None:
        first = pick(logits, 0)
        out = jnp.full((b, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(first)
        done = jnp.isin(first, stops)
        lengths = jnp.where(done, 0, 1).astype(jnp.int32)
        pstate = None
    else:
        pstate = processor.init(b)
        done0 = processor.finished(pstate)
        first = pick(processor.apply(pstate, logits), 0)
        first = jnp.where(done0, pad_id, first)
        out = jnp.full((b, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(first)
        stop = jnp.isin(first, stops)
        pstate = select_rows(done0 | stop, pstate, processor.advance(pstate, first))
        lengths = jnp.where(done0 | stop, 0, 1).astype(jnp.int32)
        done = done0 | stop | processor.finished(pstate)

    def cond(state):
        step, _, _, done, _, _, _ = state
        return (step < max_new_tokens) & ~jnp.all(done)

    def body(state):
        step, cache, last, done, out, lengths, pstate = state
        logits, cache = decode_step(params, cfg, last, cache, bias)
        if processor is not None:
            logits = processor.apply(pstate, logits)
        nxt = pick(logits, step)
        nxt = jnp.where(done, pad_id, nxt)
        out = jax.lax.dynamic_update_slice(out, nxt[:, None], (0, step))
        stop = jnp.isin(nxt, stops)
        lengths = lengths + jnp.where(done | stop, 0, 1)
        if processor is not None:
            pstate = select_rows(done | stop, pstate, processor.advance(pstate, nxt))
            stop = stop | processor.finished(pstate)
        return step + 1, cache, nxt, done | stop, out, lengths, pstate

    state = (jnp.int32(1), cache, first, done, out, lengths, pstate)
    _, cache, _, _, out, lengths, _ = jax.lax.while_loop(cond, body, state)
    out = jnp.where(jnp.arange(max_new_tokens)[None] < lengths[:, None], out, pad_id)
    return GenerateOutput(tokens=out, lengths=lengths, cache=cache)


def check_fits(cfg: ModelConfig, prompt_len: int, max_new_tokens: int) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    total = prompt_len + max_new_tokens
    if cfg.pos == "learned" and total > cfg.max_seq_len:
        raise ValueError(
            f"prompt ({prompt_len} tokens) + max_new_tokens ({max_new_tokens}) = {total} exceeds "
            f"the model's {cfg.max_seq_len} learned positions; shorten the prompt or generate less."
        )
    if total > cfg.max_seq_len:
        raise ValueError(
            f"prompt ({prompt_len} tokens) + max_new_tokens ({max_new_tokens}) = {total} exceeds "
            f"the model context of {cfg.max_seq_len}; shorten the prompt or lower max_new_tokens."
        )


def generate(
    params: Params,
    cfg: ModelConfig,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    key: Array | None = None,
    sampling: SamplingConfig = SamplingConfig(),
    stop_ids: Sequence[int] = (),
    pad_id: int = 0,
    bucket: int = 16,
    processor: LogitsProcessor | None = None,
    positions: Sequence[Sequence[int]] | None = None,
    key_mask: Sequence[Sequence[bool]] | None = None,
) -> GenerateOutput:
    """Generates up to ``max_new_tokens`` for each prompt (token-id lists).

    Compiled once per (batch, padded prompt length, max_new_tokens, sampling) and,
    with a ``processor`` (see ``LogitsProcessor``), per processor structure: its
    arrays are traced, so new values of the same shapes reuse the compiled loop.

    ``positions`` (per prompt, one int per token; -1 = never attended) replaces the
    default 0, 1, ...; generated tokens continue after each row's largest position.
    ``key_mask`` (per prompt, one bool per token, False = hidden; or one float, an
    additive attention bias) removes prompt keys from the view of every later token,
    generated ones included.

    Returns:
        GenerateOutput with tokens [B, max_new_tokens] and lengths [B].
    """
    toks, mask = pad_prompts(prompts, pad_id, bucket)
    check_fits(cfg, toks.shape[1], max_new_tokens)
    key = jax.random.PRNGKey(0) if key is None else key
    pos = km = None
    t = toks.shape[1]
    for name, rows in (("positions", positions), ("key_mask", key_mask)):
        if rows is not None and (len(rows) != len(prompts) or any(
                len(r) != len(p) for r, p in zip(rows, prompts))):
            raise ValueError(f"generate: {name} needs one entry per prompt token")
    if positions is not None:
        pos = np.full((len(prompts), t), -1, np.int32)
        for i, r in enumerate(positions):
            pos[i, t - len(r):] = r
        pos = jnp.asarray(pos)
    if key_mask is not None:
        km = np.zeros((len(prompts), t), np.float32)
        for i, r in enumerate(key_mask):
            r = np.asarray(r)
            km[i, t - len(r):] = np.where(r, 0.0, MASKED) if r.dtype == bool else r
        km = jnp.asarray(km)
    run = _generate_modes[library_fusion(params, cfg, int(toks.shape[0]))]
    return run(
        params, jnp.asarray(toks), jnp.asarray(mask), key, processor, pos, km, cfg=cfg,
        max_new_tokens=max_new_tokens, sampling=sampling,
        stop_ids=tuple(int(s) for s in stop_ids), pad_id=int(pad_id),
    )


# ------------------------------------------------------------------ XLA:CPU compile policy
# XLA:CPU hands dots (and element-wise/reduce chains) to a library (YNNPACK, "ynn_fusion").
# That is what makes float prefill fast (SmolLM2 f32, 1024 tokens: 716 tok/s with it, 570
# without; bf16 1493 vs 618), but each library call has a fixed cost: in a batch-1 decode
# step whose weight products run in the quantized kernel (jaxlm.quant), the 60 tiny attention
# products (q.k, p.v per layer) are all that is left for it, and profiled they took 7.3 of
# ~24 ms (60 calls); without it XLA's own loops run them and the q4_1 decode loop went from
# 13.1 to 9.0 ms per token (quiet 2-core CPU, jax 0.12; experiments/smollm2/decode_ab.py).
# So batch-1 programs whose weight products go to the kernel compile without it. At larger
# batches the attention products grow with the batch while the library's fixed cost does not,
# and XLA's own dot loops become the slow part (batch 16, q4_1, 256-slot cache: without the
# library 68.6 ms per step, with it for dots only (LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT) 55.1,
# with all of it 62.3, quietest of 3 rounds each, session 11; batch 4: 33.5 vs 34.3 ms, equal
# within noise; batch 1: 11.3 vs 12.6 vs 14.6 ms). So kernel programs above batch 4 hand only
# their dots to the library; float models keep all of it.
# ``JAXLM_XLA_LIBRARY_FUSION=on|dots|off`` overrides the choice (benchmarks, A/B).
LIBRARY_FUSION_MODES = ("all", "dots", "none")
LIBRARY_FUSION_OPTIONS = {
    "all": None,
    "dots": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"},
    "none": {"xla_cpu_experimental_ynn_fusion_type": ""},
}
LIBRARY_FUSION_ENV = "JAXLM_XLA_LIBRARY_FUSION"
DOTS_FUSION_MIN_BATCH = 5  # kernel programs at this batch and above: library fusion for dots


def library_fusion(params: Params, cfg: ModelConfig, batch: int = 1) -> str:
    """How the decode programs of ``params`` at this batch use XLA:CPU's library fusion.

    "all" (the default compile options) off CPU, where the option does not exist. On CPU:
    "none" at batches below
    ``DOTS_FUSION_MIN_BATCH`` and "dots" (dot products only) from there when weight products
    run in the quantized kernel (``QuantWeight`` leaves, kernel built, ``cfg.quant_impl`` not
    "xla"); "all" otherwise. ``$JAXLM_XLA_LIBRARY_FUSION`` (on/dots/off/auto) overrides."""
    if jax.default_backend() != "cpu":
        return "all"
    force = os.environ.get(LIBRARY_FUSION_ENV, "auto").lower()
    if force not in ("auto", "on", "dots", "off"):
        raise ValueError(f"${LIBRARY_FUSION_ENV}={force!r}: use on, dots, off or auto")
    if force != "auto":
        return {"on": "all", "dots": "dots", "off": "none"}[force]
    from jaxlm.quant.formats import QuantWeight
    from jaxlm.quant.kernel import kernel_available

    if cfg.quant_impl == "xla" or not kernel_available():
        return "all"
    leaves = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, QuantWeight))
    if not any(isinstance(x, QuantWeight) for x in leaves):
        return "all"
    return "dots" if batch >= DOTS_FUSION_MIN_BATCH else "none"


_GEN_STATIC = ("cfg", "max_new_tokens", "sampling", "stop_ids", "pad_id")
_generate_modes = {m: jax.jit(_generate_impl, static_argnames=_GEN_STATIC, compiler_options=LIBRARY_FUSION_OPTIONS[m])
                   for m in LIBRARY_FUSION_MODES}
_generate = _generate_modes["all"]  # float models' program
_prefill_jit = jax.jit(prefill, static_argnames=("cfg",), donate_argnames=("cache",))
_decode_jits = {m: jax.jit(decode_step, static_argnames=("cfg",), donate_argnames=("cache",),
                           compiler_options=LIBRARY_FUSION_OPTIONS[m])
                for m in LIBRARY_FUSION_MODES}
_sample_jit = jax.jit(sample_logits, static_argnames=("sampling",))


def _decode_jit(params, cfg, token, cache, attn_bias=None):
    """The jitted ``decode_step`` (cache donated) under the compile policy above."""
    return _decode_jits[library_fusion(params, cfg, int(token.shape[0]))](params, cfg, token, cache, attn_bias)


def stream(
    params: Params,
    cfg: ModelConfig,
    prompt: Sequence[int],
    *,
    max_new_tokens: int,
    key: Array | None = None,
    sampling: SamplingConfig = SamplingConfig(),
    stop_ids: Sequence[int] = (),
) -> Iterator[int]:
    """Yields generated token ids one at a time for a single prompt."""
    toks, mask = pad_prompts([prompt], 0, 16)
    check_fits(cfg, toks.shape[1], max_new_tokens)
    key = jax.random.PRNGKey(0) if key is None else key
    cache = init_cache(cfg, 1, toks.shape[1] + max_new_tokens)
    logits, cache = _prefill_jit(params, cfg, jnp.asarray(toks), jnp.asarray(mask), cache)
    for step in range(max_new_tokens):
        tok = _sample_jit(logits, jax.random.fold_in(key, step), sampling)
        t = int(tok[0])
        if t in stop_ids:
            return
        yield t
        if step + 1 < max_new_tokens:
            logits, cache = _decode_jit(params, cfg, tok, cache)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _score(params, tokens, positions, targets, tmask, *, cfg):
    logits = apply(params, cfg, tokens, positions=positions).logits
    logp = jax.nn.log_softmax(logits, axis=-1)
    tok_lp = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return jnp.where(tmask, tok_lp, 0.0)


def score(
    params: Params,
    cfg: ModelConfig,
    prompt: Sequence[int],
    continuations: Sequence[Sequence[int]],
    *,
    bucket: int = 16,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Log-probability of each continuation given the prompt.

    Returns:
        (total log-prob per continuation [C], per-token log-probs per continuation).
    """
    if not prompt:
        raise ValueError("score: the prompt needs at least one token")
    if not continuations or any(len(c) == 0 for c in continuations):
        raise ValueError("score: every continuation needs at least one token")
    seqs = [list(prompt) + list(c) for c in continuations]
    t = -(-max(len(s) for s in seqs) // bucket) * bucket
    check_fits(cfg, t, 1) if t >= cfg.max_seq_len else None
    n = len(seqs)
    toks = np.zeros((n, t), np.int32)
    pos = np.full((n, t), -1, np.int32)
    targets = np.zeros((n, t), np.int32)
    tmask = np.zeros((n, t), bool)
    for i, s in enumerate(seqs):
        toks[i, : len(s)] = s
        pos[i, : len(s)] = np.arange(len(s))
        # logits at position j predict token j+1
        start = len(prompt) - 1
        targets[i, start : len(s) - 1] = s[start + 1 :]
        tmask[i, start : len(s) - 1] = True
    lp = np.asarray(_score(params, toks, pos, targets, tmask, cfg=cfg))
    per_tok = [lp[i, len(prompt) - 1 : len(seqs[i]) - 1] for i in range(n)]
    return lp.sum(axis=1), per_tok
