"""Editing's forward-pass helpers, all on ``jaxlm.core``'s composable forward
(``embed`` -> ``run_blocks`` -> ``unembed``).

- ``pad_batch``: right-padded token batches with positions (pads at -1).
- ``capture``: an activation of one (site, layer) for a batch, [B, T, X]
  (runs only the blocks up to that layer; ``run_blocks(capture=...)``).
- ``tail_state`` / ``tail_params`` / ``run_tail``: the frozen prefix of every row
  (everything before the subject's last token) prefilled once into a KV cache, so each
  optimisation step runs only a few tail tokens through blocks ``start..L-1``.
- ``final_logprobs_at``: log-probs at chosen positions from a final residual.

Layer stacking is core's ``stack_layers``; whoever owns the params owns the stacked
copy: pass params with stacked layers and every step reads them in place (a listed
``layers`` is stacked once per ``tail_params`` call; there is no module-level cache).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxlm.core import KVCache, ModelConfig, init_cache
from jaxlm.core.transformer import (embed, layer_params, num_layers, run_blocks, stack_layers,
                                    unembed)

Array = jax.Array
Params = dict[str, Any]


def bucket_len(n: int, multiple: int = 8) -> int:
    return max(multiple, -(-n // multiple) * multiple)


def pad_batch(
    seqs: Sequence[Sequence[int]], *, multiple: int = 8, rows: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-pads token lists.

    Args:
        seqs: token-id lists (non-empty).
        multiple: pad the length to a multiple of this (fewer recompilations).
        rows: pad the batch to this many rows (dummy rows are one token at position 0).

    Returns:
        (tokens [B, T] int32, positions [B, T] int32 with -1 at pads, lengths [B]).
    """
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ValueError("pad_batch: every sequence needs at least one token")
    b = len(seqs) if rows is None else max(rows, len(seqs))
    t = bucket_len(max(len(s) for s in seqs), multiple)
    toks = np.zeros((b, t), np.int32)
    pos = np.full((b, t), -1, np.int32)
    lens = np.ones((b,), np.int32)
    for i, s in enumerate(seqs):
        toks[i, : len(s)] = s
        pos[i, : len(s)] = np.arange(len(s))
        lens[i] = len(s)
    pos[len(seqs) :, 0] = 0
    return toks, pos, lens


def truncate(params: Params, n_layers: int) -> Params:
    """Params with only the first ``n_layers`` blocks (shallow copy)."""
    return {**params, "layers": list(params["layers"][:n_layers])}


@functools.partial(jax.jit, static_argnames=("cfg", "layer", "site"))
def _capture(params, tokens, positions, *, cfg, layer, site):
    x = embed(params, cfg, tokens, positions)
    if site == "embed":
        return x
    out = run_blocks(params, cfg, x, positions=positions, layers=range(layer + 1),
                     capture=((site,), (layer,)))
    return out.captured[site][0]


def capture(
    params: Params, cfg: ModelConfig, tokens: Array, positions: Array, *, layer: int, site: str
) -> Array:
    """The activation at ``site`` of block ``layer`` ([B, T, X]); "embed" uses layer -1."""
    if site == "embed":
        layer = -1
    if not -1 <= layer < cfg.n_layers:
        raise ValueError(f"layer {layer} is out of range for a {cfg.n_layers}-layer model")
    return _capture(params, jnp.asarray(tokens), jnp.asarray(positions), cfg=cfg, layer=layer,
                    site=site)


def final_logprobs_at(params: Params, cfg: ModelConfig, h: Array, idx: Array) -> Array:
    """Log-softmax of the LM head at positions ``idx`` [B, M] of ``h`` [B, T, D] -> [B, M, V]."""
    return jax.nn.log_softmax(unembed(params, cfg, h, at=idx), axis=-1)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _last_logprobs(params, tokens, positions, last, *, cfg):
    x = embed(params, cfg, tokens, positions)
    h = run_blocks(params, cfg, x, positions=positions).x
    return final_logprobs_at(params, cfg, h, last[:, None])[:, 0]


def next_token_logprobs(
    params: Params, cfg: ModelConfig, prompts: Sequence[Sequence[int]], *, batch: int = 16
) -> np.ndarray:
    """Log-probs of the next token after each prompt: [N, V] float32 numpy."""
    out = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i : i + batch]
        # fixed row count and a coarse length bucket: one compilation serves every call
        toks, pos, lens = pad_batch(chunk, rows=batch, multiple=16)
        lp = _last_logprobs(params, jnp.asarray(toks), jnp.asarray(pos),
                            jnp.asarray(lens - 1), cfg=cfg)
        out.append(np.asarray(lp[: len(chunk)]))
    return np.concatenate(out, axis=0)


@struct.dataclass
class TailState:
    """A batch split at a per-row cut: the frozen prefix lives in a KV cache.

    Everything before ``cut`` (per row) is computed once; an optimisation that
    only perturbs positions >= cut at block ``start`` or later then runs just the
    tail tokens through blocks ``start..L-1`` against the cached prefix.

    Attributes:
        cache: KVCache of all L blocks (``run_tail`` uses blocks start..L-1) holding the
            prefix keys (slots at or after the cut emptied); ``cursor`` is the first free
            slot (the tail is appended there).
        h_in: [B, Tt, D] residual entering block ``start`` at the tail positions.
        tokens, positions: [B, Tt] tail tokens and their true positions (-1 pads).
    """

    cache: KVCache
    h_in: Array
    tokens: Array
    positions: Array


@functools.partial(jax.jit, static_argnames=("cfg", "start", "tail_len"))
def _tail_state(params, tokens, positions, cut, *, cfg, start, tail_len):
    b, t = tokens.shape
    x0 = embed(params, cfg, tokens, positions)
    # one scanned prefill (a listed ``layers`` is stacked inside this call, transiently)
    out = run_blocks(params, cfg, x0, positions=positions, scan=True,
                     cache=init_cache(cfg, b, t + tail_len),
                     capture=(("resid_pre",), (start,)))
    c = out.cache
    h_in = out.captured["resid_pre"][0]
    # forget slots at or after the cut: the tail is re-run (and re-written) later
    pos = jnp.where(c.pos >= cut[None, :, None, None], -1, c.pos)
    cache = KVCache(k=c.k, v=c.v, pos=pos, next_pos=cut, cursor=jnp.asarray(t, jnp.int32))
    j = jnp.arange(tail_len)[None, :]
    idx = jnp.clip(cut[:, None] + j, 0, t - 1)  # [B, Tt]
    rows = jnp.arange(b)[:, None]
    tail_pos = jnp.where(cut[:, None] + j < t, positions[rows, idx], -1)
    return TailState(cache=cache, h_in=h_in[rows, idx], tokens=tokens[rows, idx],
                     positions=tail_pos)


def tail_state(
    params: Params, cfg: ModelConfig, tokens, positions, cut, *, start: int, tail_len: int
) -> TailState:
    """Splits right-padded rows at ``cut`` [B] and prefills the prefix (see ``TailState``).

    ``params`` may hold its layers listed or stacked (``core.stack_layers``); stacked
    ones are read in place (a list is stacked inside the call, a transient copy)."""
    if not 0 <= start < cfg.n_layers:
        raise ValueError(f"tail_state: start {start} out of range for {cfg.n_layers} layers")
    return _tail_state(params, jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(cut),
                       cfg=cfg, start=start, tail_len=tail_len)


def tail_params(params: Params, start: int) -> Params:
    """What ``run_tail`` runs: {"first": block ``start`` (a per-layer dict), "rest": the
    stacked layers (``core.stack_layers``; ``run_tail`` reads blocks start+1..L-1 of it in
    place), "head": everything but the layers (embeddings, final norm, LM head)}.

    Pass params whose layers are already stacked to share the caller's stack (no copy);
    a listed ``layers`` is stacked here (a copy: make it once per edit and pass it to
    every step; nothing is cached here).
    """
    stacked = stack_layers(params)
    return {
        "first": layer_params(params, start),
        "rest": stacked["layers"],
        "head": {k: v for k, v in params.items() if k != "layers"},
    }


def run_tail(
    first: Params,
    rest: Params,
    cfg: ModelConfig,
    start: int,
    st: TailState,
    extra: Callable[[str, int, Array], Array] | None = None,
    capture: Sequence[str] = (),
) -> Array | tuple[Array, dict[str, Array]]:
    """Runs the tail through block ``start`` (params ``first``, intervened on by ``extra``,
    which sees the true layer index) and then blocks start+1..L-1 of the stacked layers
    ``rest`` in a ``lax.scan`` (read in place); traceable.

    Args:
        capture: sites of block ``start`` to return (``run_blocks``' capture; an
            activation that ``extra`` changes is returned as changed).

    Returns:
        The last block's residual output at the tail positions [B, Tt, D]; with
        ``capture``, also {site: [B, Tt, X]} of block ``start``.
    """
    c = st.cache
    n = num_layers({"layers": rest})
    hook = None if extra is None else (lambda s, li, a: extra(s, li + start, a))
    # both calls append at the same cursor (each writes its own layers of the cache)
    out = run_blocks({"layers": [first]}, cfg, st.h_in, positions=st.positions,
                     cache=c.replace(k=c.k[start:start + 1], v=c.v[start:start + 1],
                                     pos=c.pos[start:start + 1]), intervene=hook,
                     capture=(tuple(capture), (0,)) if capture else None)
    x = out.x
    if start + 1 < n:
        x = run_blocks({"layers": rest}, cfg, x, positions=st.positions, scan=True,
                       layers=range(start + 1, n), cache=c).x
    if capture:
        return x, {s: a[0] for s, a in out.captured.items()}
    return x


def as_jax(params: Params) -> Params:
    """Params as device arrays (do this once; jitted helpers take params as arguments)."""
    return jax.tree.map(jnp.asarray, params)
