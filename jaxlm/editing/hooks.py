"""Forward-pass helpers built on ``jaxlm.core.apply``'s ``intervene`` hook.

- ``pad_batch``: right-padded token batches with positions (pads at -1).
- ``capture``: an activation of one (site, layer) for a batch, [B, T, X]
  (runs only the blocks up to that layer).
- ``run_from``: runs blocks ``start..L-1`` from a given residual stream
  (the input of block ``start``), so optimisations that only change layer
  ``start`` onwards never recompute the frozen prefix. It feeds ``h_in`` by
  replacing the "embed" site and reads the last block's "resid_post".
- ``tail_state`` / ``run_tail``: the same with the frozen prefix of every row
  (everything before the subject's last token) prefilled once into a KV cache,
  so each optimisation step runs only a few tail tokens.
- ``final_logprobs_at``: log-probs at chosen positions from a final residual.

These use only the public ``apply``/``unembed``; ``run_from`` would be a natural
addition to ``jaxlm.core`` (a ``start_layer``/``inputs_embeds`` argument).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxlm.core import ModelConfig, apply, init_cache, layers
from jaxlm.core.transformer import block, embed, unembed

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
    store = {}

    def iv(s, l, act):
        if s == site and l == layer:
            store["a"] = act
        return act

    apply(params, cfg, tokens, positions=positions, last_logits_only=True, intervene=iv)
    return store["a"]


def capture(
    params: Params, cfg: ModelConfig, tokens: Array, positions: Array, *, layer: int, site: str
) -> Array:
    """The activation at ``site`` of block ``layer`` ([B, T, X]); "embed" uses layer -1."""
    if site == "embed":
        layer = -1
    if not -1 <= layer < cfg.n_layers:
        raise ValueError(f"layer {layer} is out of range for a {cfg.n_layers}-layer model")
    sub = truncate(params, max(layer + 1, 1))
    return _capture(sub, jnp.asarray(tokens), jnp.asarray(positions), cfg=cfg, layer=layer,
                    site=site)


def block_input(
    params: Params, cfg: ModelConfig, tokens: Array, positions: Array, start: int
) -> Array:
    """The residual stream entering block ``start`` ([B, T, D])."""
    if start == 0:
        return capture(params, cfg, tokens, positions, layer=-1, site="embed")
    return capture(params, cfg, tokens, positions, layer=start - 1, site="resid_post")


def suffix_params(params: Params, start: int) -> Params:
    """Params with blocks ``start..L-1`` only (embeddings and head kept)."""
    return {**params, "layers": list(params["layers"][start:])}


def run_from(
    sub: Params,
    cfg: ModelConfig,
    start: int,
    h_in: Array,
    tokens: Array,
    positions: Array,
    extra: Callable[[str, int, Array], Array] | None = None,
) -> Array:
    """Runs the blocks in ``sub`` (= ``suffix_params(params, start)``) on ``h_in``.

    Traceable (call it inside your own jitted function). ``extra(site, layer, act)``
    sees true layer indices (``start + i``).

    Returns:
        The last block's residual output [B, T, D] (before the final norm).
    """
    n = len(sub["layers"])
    if n == 0:
        raise ValueError("run_from: no blocks to run (start == n_layers)")
    store = {}

    def iv(site, layer, act):
        if site == "embed":
            return h_in.astype(act.dtype)
        if extra is not None:
            act = extra(site, layer + start, act)
        if site == "resid_post" and layer == n - 1:
            store["h"] = act
        return act

    apply(sub, cfg, tokens, positions=positions, last_logits_only=True, intervene=iv)
    return store["h"]


def final_logprobs_at(params: Params, cfg: ModelConfig, h: Array, idx: Array) -> Array:
    """Log-softmax of the LM head at positions ``idx`` [B, M] of ``h`` [B, T, D] -> [B, M, V]."""
    rows = jnp.arange(h.shape[0])[:, None]
    sel = h[rows, idx]  # [B, M, D]
    return jax.nn.log_softmax(unembed(params, cfg, sel), axis=-1)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _last_logprobs(params, tokens, positions, last, *, cfg):
    store = {}
    n = len(params["layers"])

    def iv(site, layer, act):
        if site == "resid_post" and layer == n - 1:
            store["h"] = act
        return act

    apply(params, cfg, tokens, positions=positions, last_logits_only=True, intervene=iv)
    return final_logprobs_at(params, cfg, store["h"], last[:, None])[:, 0]


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


def stack_layers(layer_list: Sequence[Params]) -> Params:
    """Stacks per-block param dicts along a new leading axis (for ``lax.scan``)."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *layer_list)


_STACK_CACHE: list = []  # [(layers list, start, stacked blocks start..L-1)], a few entries


def stacked_from(params: Params, start: int = 0) -> Params:
    """``stack_layers(params["layers"][start:])``, cached for the last params seen.

    Single edits all start from the same params object, so the ~0.5 GB copy is made once.
    The cache holds a reference to the layer list, so an identity match is exact (a
    new list, as every edit returns, misses).
    """
    layers_list = params["layers"]
    for lst, st, stacked in _STACK_CACHE:
        if lst is layers_list and st == start:
            return stacked
    stacked = stack_layers(layers_list[start:])
    _STACK_CACHE[:] = [e for e in _STACK_CACHE if e[0] is layers_list][-2:]
    _STACK_CACHE.append((layers_list, start, stacked))
    return stacked


def _rope(cfg: ModelConfig, positions: Array):
    return layers.rope_angles(cfg, jnp.maximum(positions, 0)) if cfg.pos == "rope" else None


def scan_blocks(
    stacked: Params,
    cfg: ModelConfig,
    x: Array,
    positions: Array,
    kv: tuple[Array, Array, Array] | None = None,
    cursor: Array | None = None,
) -> tuple[Array, tuple[Array, Array, Array] | None, Array]:
    """Runs stacked blocks with ``lax.scan`` (one compiled block instead of L unrolled ones).

    Args:
        stacked: ``stack_layers`` of the blocks to run.
        x: [B, T, D] residual entering the first of them.
        positions: [B, T] (-1 = padding).
        kv: optional (k [n, B, S, K, Dh], v, pos [n, B, K, S]) cache of these blocks.
        cursor: append slot for the new keys when ``kv`` is given.

    Returns:
        (output residual [B, T, D], updated kv or None, per-block outputs [n, B, T, D]).
    """
    rope = _rope(cfg, positions)

    def body(h, inp):
        lp, kvi = inp
        kvarg = None if kvi is None else (kvi[0][None], kvi[1][None], kvi[2][None], 0)
        h, new_kv, _ = block(lp, cfg, h, positions, rope, layer=0, kv=kvarg, cursor=cursor)
        new_kv = None if new_kv is None else tuple(a[0] for a in new_kv)
        return h, (new_kv, h)

    x, (new_kv, hs) = jax.lax.scan(body, x, (stacked, kv))
    return x, new_kv, hs


@struct.dataclass
class TailState:
    """A batch split at a per-row cut: the frozen prefix lives in a KV cache.

    Everything before ``cut`` (per row) is computed once; an optimisation that
    only perturbs positions >= cut at block ``start`` or later then runs just the
    tail tokens through blocks ``start..L-1`` against the cached prefix.

    Attributes:
        kv: (k [L-start, B, S, K, Dh], v, pos [L-start, B, K, S]): the prefix keys
            of blocks start..L-1 (slots at or after the cut emptied).
        cursor: [] first free slot (the tail is appended there).
        h_in: [B, Tt, D] residual entering block ``start`` at the tail positions.
        tokens, positions: [B, Tt] tail tokens and their true positions (-1 pads).
    """

    kv: tuple[Array, Array, Array]
    cursor: Array
    h_in: Array
    tokens: Array
    positions: Array


@functools.partial(jax.jit, static_argnames=("cfg", "start", "tail_len"))
def _tail_state(stacked, params, tokens, positions, cut, *, cfg, start, tail_len):
    b, t = tokens.shape
    c = init_cache(cfg, b, t + tail_len)
    x0 = embed(params, cfg, tokens, positions)
    _, (k, v, pos), hs = scan_blocks(stacked, cfg, x0, positions, (c.k, c.v, c.pos),
                                     jnp.asarray(0, jnp.int32))
    h_in = x0 if start == 0 else hs[start - 1]
    # forget slots at or after the cut: the tail is re-run (and re-written) later
    pos = jnp.where(pos >= cut[None, :, None, None], -1, pos)
    j = jnp.arange(tail_len)[None, :]
    idx = jnp.clip(cut[:, None] + j, 0, t - 1)  # [B, Tt]
    rows = jnp.arange(b)[:, None]
    tail_pos = jnp.where(cut[:, None] + j < t, positions[rows, idx], -1)
    return TailState(kv=(k[start:], v[start:], pos[start:]), cursor=jnp.asarray(t, jnp.int32),
                     h_in=h_in[rows, idx], tokens=tokens[rows, idx], positions=tail_pos)


def tail_state(
    params: Params, cfg: ModelConfig, tokens, positions, cut, *, start: int, tail_len: int,
    stacked: Params | None = None,
) -> TailState:
    """Splits right-padded rows at ``cut`` [B] and prefills the prefix (see ``TailState``)."""
    stacked = stack_layers(params["layers"]) if stacked is None else stacked
    return _tail_state(stacked, params, jnp.asarray(tokens), jnp.asarray(positions),
                       jnp.asarray(cut), cfg=cfg, start=start, tail_len=tail_len)


def run_tail(
    first: Params,
    rest: Params | None,
    cfg: ModelConfig,
    start: int,
    st: TailState,
    extra: Callable[[str, int, Array], Array] | None = None,
) -> Array:
    """Runs the tail through block ``start`` (params ``first``, hooked by ``extra``) and then
    the stacked blocks ``rest`` (start+1..L-1, or None); traceable.

    Returns:
        The last block's residual output at the tail positions [B, Tt, D].
    """
    rope = _rope(cfg, st.positions)
    k, v, pos = st.kv
    x, _, _ = block(first, cfg, st.h_in, st.positions, rope, layer=start,
                    kv=(k, v, pos, 0), cursor=st.cursor, intervene=extra)
    if rest is not None:
        x, _, _ = scan_blocks(rest, cfg, x, st.positions, (k[1:], v[1:], pos[1:]), st.cursor)
    return x


def as_jax(params: Params) -> Params:
    """Params as device arrays (do this once; jitted helpers take params as arguments)."""
    return jax.tree.map(jnp.asarray, params)
