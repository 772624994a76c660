"""The packed scorer: log-probs of candidate tokens, many candidates per row, one call.

Layout (built on the host by ``jaxlm.llm.packing``): a row is ``[prompt][cand 1][cand 2]
...[pad]``; ``segment_ids`` 0 on prompt tokens, c + 1 on candidate c, -1 on pads; each
candidate's positions continue the prompt; ``pred[g, n]`` is the slot whose logits
predict scored token n and ``tgt[g, n]`` its id. Segments keep candidates apart (see
``run_blocks``), so one forward pass scores every candidate given the full prompt.

* ``score_tokens`` is the pure function (any cache / write slots / scan / chunk); the
  LM head runs only at the ``pred`` slots, and only their log-probs come back.
* ``score_packed`` jits it, optionally after a shared prompt prefix kept in a
  ``KVCache`` (``prefill_prefix``; batch 1 or G, capacity P): the row tokens are
  appended after the P cached slots, so the prefix is encoded once for every row.
* ``bucket_len`` is the one length-bucketing rule for compiled shapes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxlm.core.cache import KVCache, init_cache
from jaxlm.core.config import ModelConfig
from jaxlm.core.transformer import Params, embed, run_blocks, unembed

Array = jax.Array


def bucket_len(n: int, minimum: int = 8, *, multiple: int | None = None) -> int:
    """Padded size for ``n`` so that few shapes get compiled.

    ``multiple`` None: powers of two from ``minimum`` up to 256, then multiples of 256.
    Otherwise: ``n`` rounded up to a multiple of ``multiple`` (at least ``minimum``).
    """
    if n <= 0:
        raise ValueError(f"bucket_len: n must be > 0, got {n}")
    if multiple is not None:
        return max(minimum, -(-n // multiple) * multiple)
    b = minimum
    while b < n and b < 256:
        b *= 2
    return b if b >= n else -(-n // 256) * 256


def score_tokens(
    params: Params,
    cfg: ModelConfig,
    tokens: Array,
    positions: Array,
    segment_ids: Array,
    pred: Array,
    targets: Array,
    *,
    cache: KVCache | None = None,
    write_slots: Array | None = None,
    scan: bool = False,
    chunk: int | None = None,
) -> tuple[Array, KVCache | None]:
    """Log-probs [G, N] (float32) of ``targets`` predicted at slots ``pred`` [G, N].

    Args:
        tokens, positions, segment_ids: [G, T] packed rows (positions -1 on pads).
        pred, targets: [G, N] slot predicting each scored token and its id.
        cache, write_slots: a KV cache the rows are written into and attend over
            (e.g. a cached prompt prefix); slots not written now count as segment 0.
        scan, chunk: see ``run_blocks`` (``chunk`` needs the rows appended after the
            cached slots, i.e. no ``write_slots``).

    Returns:
        (log-probs [G, N], updated cache or None).
    """
    x = embed(params, cfg, tokens, positions)
    out = run_blocks(params, cfg, x, positions=positions, segment_ids=segment_ids, cache=cache,
                     write_slots=write_slots, scan=scan, chunk=chunk)
    lp = jax.nn.log_softmax(unembed(params, cfg, out.x, at=pred), axis=-1)
    return jnp.take_along_axis(lp, targets[..., None], axis=-1)[..., 0], out.cache


@functools.partial(jax.jit, static_argnames=("cfg", "scan"))
def prefill_prefix(params: Params, tokens: Array, *, cfg: ModelConfig,
                   scan: bool = False) -> KVCache:
    """KV cache of ``tokens`` [Gp, P] at positions 0..P-1 (capacity exactly P)."""
    g, p = tokens.shape
    pos = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (g, p))
    x = embed(params, cfg, tokens, pos)
    return run_blocks(params, cfg, x, positions=pos, cache=init_cache(cfg, g, p),
                      scan=scan).cache


def _extend(prefix: KVCache, cfg: ModelConfig, g: int, t: int) -> KVCache:
    """The prefix cache broadcast to ``g`` rows with ``t`` empty slots appended."""
    p = prefix.capacity
    pad = ((0, 0), (0, 0), (0, 0), (0, t), (0, 0))  # k/v [L, B, K, S, Dh]: slots on axis 3
    shape = (cfg.n_layers, g, prefix.k.shape[2], p + t, prefix.k.shape[4])
    k = jnp.broadcast_to(jnp.pad(prefix.k, pad), shape)
    v = jnp.broadcast_to(jnp.pad(prefix.v, pad), shape)
    kp = jnp.pad(prefix.pos, ((0, 0), (0, 0), (0, 0), (0, t)), constant_values=-1)
    kp = jnp.broadcast_to(kp, (cfg.n_layers, g) + kp.shape[2:])
    return KVCache(k=k, v=v, pos=kp, next_pos=jnp.full((g,), p, jnp.int32),
                   cursor=jnp.asarray(p, jnp.int32))


@functools.partial(jax.jit, static_argnames=("cfg", "scan", "chunk"))
def score_packed(params: Params, tokens: Array, positions: Array, segment_ids: Array,
                 pred: Array, targets: Array, prefix: KVCache | None = None, *,
                 cfg: ModelConfig, scan: bool = False, chunk: int | None = None) -> Array:
    """Jitted ``score_tokens`` for packed rows, optionally after a cached shared ``prefix``
    (``prefill_prefix``; its P slots hold positions 0..P-1, the rows continue at P).

    Returns:
        [G, N] float32 log-probs of ``targets``.
    """
    cache = None
    if prefix is not None:
        cache = _extend(prefix, cfg, tokens.shape[0], tokens.shape[1])
    lp, _ = score_tokens(params, cfg, tokens, positions, segment_ids, pred, targets,
                         cache=cache, scan=scan, chunk=chunk)
    return lp
