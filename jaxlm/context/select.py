"""Context selection through the attention mask, batched forward passes, masked generation.

Dropping a context position means adding -1e9 to its key column for every query
(``key_bias``), in every layer: later tokens, generated ones included, cannot
attend to it, while the text itself stays in place. Two position policies:

* "keep" (default): every token keeps its original position, so kept tokens after
  a dropped span see a gap in positions.
* "compress": dropped tokens get position -1 (never attended, like padding) and the
  kept tokens are renumbered consecutively; this is exactly deleting the text.

Features for truth detection are the per-layer attention outputs captured at the
substrate's "attn_out" site (after the output projection W_o; TACS uses the
concatenated heads before W_o, a linear image of the same vector: for a square,
invertible W_o a linear probe sees the same information).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.core import ModelConfig, apply
from jaxlm.core.generate import generate

Array = jax.Array
DROP = -1e9
POSITION_MODES = ("keep", "compress")


def left_pad(seqs: Sequence[Sequence[int]], length: int, pad_id: int = 0):
    """Left-pads id lists to ``length``: (tokens [B, T], positions [B, T] (-1 on pads), pad [B])."""
    if any(len(s) > length for s in seqs):
        raise ValueError(f"a prompt is longer than the padded length {length}")
    b = len(seqs)
    toks = np.full((b, length), pad_id, np.int32)
    pos = np.full((b, length), -1, np.int32)
    pads = np.zeros(b, np.int32)
    for i, s in enumerate(seqs):
        n = len(s)
        pads[i] = length - n
        toks[i, length - n :] = s
        pos[i, length - n :] = np.arange(n)
    return toks, pos, pads


def key_bias(drop: np.ndarray) -> np.ndarray:
    """Additive bias [B, 1, 1, T] that removes the keys where ``drop`` [B, T] is True."""
    return np.where(np.asarray(drop, bool), DROP, 0.0).astype(np.float32)[:, None, None, :]


def compress_positions(positions: np.ndarray, drop: np.ndarray) -> np.ndarray:
    """Positions with dropped tokens set to -1 and the rest renumbered 0, 1, ... [B, T]."""
    positions = np.asarray(positions)
    keep = (positions >= 0) & ~np.asarray(drop, bool)
    return np.where(keep, np.cumsum(keep, axis=-1) - 1, -1).astype(np.int32)


def masked_inputs(positions: np.ndarray, drop: np.ndarray, mode: str = "keep"):
    """(positions, attn_bias) implementing ``drop`` [B, T] under a position policy."""
    if mode not in POSITION_MODES:
        raise ValueError(f"position mode must be one of {POSITION_MODES}, got {mode!r}")
    if mode == "compress":
        return compress_positions(positions, drop), None
    return np.asarray(positions, np.int32), key_bias(drop)


@functools.partial(jax.jit, static_argnames=("cfg", "capture"))
def _forward(params, tokens, positions, bias, *, cfg, capture):
    store = {}

    def hook(site, layer, act):
        if site == "attn_out":
            store[layer] = act
        return act

    out = apply(params, cfg, tokens, positions=positions, attn_bias=bias,
                intervene=hook if capture else None, last_logits_only=True)
    feats = jnp.stack([store[i] for i in sorted(store)]) if capture else None
    return out.logits[:, -1], feats


def forward(params, cfg: ModelConfig, tokens, positions, bias=None, *, capture: bool = False):
    """Last-position logits [B, V] and, with ``capture``, attn_out features [L, B, T, D]."""
    tokens = jnp.asarray(tokens, jnp.int32)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [B, T], got {tokens.shape}")
    return _forward(params, tokens, jnp.asarray(positions, jnp.int32),
                    None if bias is None else jnp.asarray(bias), cfg=cfg, capture=capture)


def masked_greedy(params, cfg: ModelConfig, ids: Sequence[int], drop: Sequence[bool], *,
                  max_new_tokens: int = 8, mode: str = "keep",
                  stop_ids: Sequence[int] = ()) -> list[int]:
    """Greedy continuation of one prompt whose ``drop`` positions are masked out.

    Runs ``jaxlm.core.generate.generate`` with the prompt's positions and, in "keep"
    mode, a key mask over the dropped prompt slots (generated tokens are never masked),
    so generated tokens cannot see dropped context either.

    Returns:
        generated ids (stop token excluded).
    """
    ids = np.asarray(ids, np.int32)
    drop = np.asarray(drop, bool)
    if drop.shape != ids.shape:
        raise ValueError(f"drop mask {drop.shape} must match the prompt {ids.shape}")
    pos, _ = masked_inputs(np.arange(len(ids))[None], drop[None], mode)
    out = generate(params, cfg, [ids.tolist()], max_new_tokens=max_new_tokens,
                   stop_ids=tuple(stop_ids), positions=[pos[0].tolist()],
                   key_mask=[(~drop).tolist()] if mode == "keep" else None)
    return np.asarray(out.tokens[0, : int(out.lengths[0])]).tolist()
