"""Test references shared by several modules: full forwards without a cache.

Step-by-step greedy references call a full forward once per generated token, each one a
token longer. Run eagerly (or jitted per length) every step recompiles the model; here a
row is right-padded to a fixed length and compiled once. Causal attention makes the two
identical: the pads after position ``t`` cannot reach position ``t``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.core import apply

PAD_T = 32  # the padded length of every reference forward (one compile per model)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _padded_logits(params, cfg, tokens, positions, key_bias):
    bias = None if key_bias is None else key_bias[None, None, None, :]
    return apply(params, cfg, tokens[None], positions=positions[None], attn_bias=bias).logits[0]


def full_recompute_logits(params, cfg, seq, positions=None, keep=None):
    """Logits [len(seq), V] of one full forward (no cache) over the token list ``seq``.

    Args:
        positions: the positions of ``seq`` (default 0, 1, ...).
        keep: optional key mask over ``seq`` (False: no query attends to that key; an
            additive -1e9 bias, as ``generate``'s ``key_mask``).
    """
    n = len(seq)
    if not 0 < n <= PAD_T:
        raise ValueError(f"full_recompute_logits: 1..{PAD_T} tokens, got {n}")
    pos = list(range(n)) if positions is None else [int(p) for p in positions]
    toks = np.zeros(PAD_T, np.int32)
    toks[:n] = seq
    ps = np.concatenate([pos, pos[-1] + 1 + np.arange(PAD_T - n)]).astype(np.int32)
    bias = None if keep is None else jnp.asarray(np.where(
        np.asarray(list(keep) + [True] * (PAD_T - n)), 0.0, -1e9).astype(np.float32))
    return _padded_logits(params, cfg, jnp.asarray(toks), jnp.asarray(ps), bias)[:n]


def greedy_by_full_recompute(params, cfg, prompt, n, positions=None):
    """``n`` greedy tokens after ``prompt``, each from a full forward over all before it."""
    seq = list(prompt)
    pos = None if positions is None else list(positions)
    for _ in range(n):
        seq.append(int(jnp.argmax(full_recompute_logits(params, cfg, seq, pos)[-1])))
        if pos is not None:
            pos.append(pos[-1] + 1)
    return seq[len(prompt):]
