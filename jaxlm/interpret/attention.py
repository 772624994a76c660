"""Attention-based explanations: raw attention maps, attention rollout, attention flow.

Rollout (Abnar & Zuidema 2020): average heads, mix in the residual as
A~ = (1 - r) A + r I (r = 0.5), renormalise rows, multiply layers
R = A~_L ... A~_1; row ``R[T-1]`` scores the input tokens for the last position.
Flow: the same layered graph read as a flow network with capacities A~; a token's
score is the max flow from its input node to the last position's output node.
Both are heuristics for pre-norm residual networks; they ignore values and MLPs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.core import ModelConfig, apply


@functools.partial(jax.jit, static_argnames=("cfg",))
def _attn(params, tokens, *, cfg):
    return jnp.stack(apply(params, cfg, tokens, return_attn=True).attn)  # [L, B, H, T, S]


def attention_maps(params, cfg: ModelConfig, tokens) -> np.ndarray:
    """Attention probabilities of one prompt: [T] -> [L, H, T, T] (numpy)."""
    tokens = jnp.asarray(tokens, jnp.int32)
    if tokens.ndim != 1 or tokens.shape[0] == 0:
        raise ValueError(f"tokens must be a non-empty [T] id sequence, got {tokens.shape}")
    return np.asarray(_attn(params, tokens[None], cfg=cfg)[:, 0])


def _mixed(attn: np.ndarray, residual: float) -> np.ndarray:
    attn = np.asarray(attn, np.float64)
    if attn.ndim == 4:  # [L, H, T, T] -> mean over heads
        attn = attn.mean(axis=1)
    if attn.ndim != 3 or attn.shape[1] != attn.shape[2]:
        raise ValueError(f"attn must be [L, H, T, T] or [L, T, T], got shape {attn.shape}")
    if not 0.0 <= residual <= 1.0:
        raise ValueError(f"residual must be in [0, 1], got {residual}")
    t = attn.shape[-1]
    a = (1.0 - residual) * attn + residual * np.eye(t)[None]
    return a / a.sum(axis=-1, keepdims=True)


def rollout(attn: np.ndarray, residual: float = 0.5) -> np.ndarray:
    """Attention rollout matrix R = A~_L ... A~_1: [L, (H,) T, T] -> [T, T].

    ``R[i, j]`` is how much output position i draws on input token j; rows sum to 1.
    """
    a = _mixed(attn, residual)
    r = np.eye(a.shape[-1])
    for layer in a:
        r = layer @ r
    return r


def flow(attn: np.ndarray, residual: float = 0.5, query: int = -1,
         scale: float = 1e6) -> np.ndarray:
    """Attention flow: max flow from each input token to output position ``query``.

    The graph has (L + 1) x T nodes; layer l's edge (l-1, j) -> (l, i) has capacity
    A~_l[i, j]. Capacities are scaled to integers (``scale``) for scipy's solver.

    Returns:
        scores [T] (0 for tokens after ``query``, which cannot reach it).
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_flow

    a = _mixed(attn, residual)
    n_layers, t, _ = a.shape
    q = query % t
    n = (n_layers + 1) * t + 1  # + a super-source
    src = n - 1
    rows, cols, caps = [], [], []
    for li in range(n_layers):
        for i in range(t):
            for j in range(i + 1):
                c = int(round(a[li, i, j] * scale))
                if c > 0:
                    rows.append(li * t + j)
                    cols.append((li + 1) * t + i)
                    caps.append(c)
    sink = n_layers * t + q
    scores = np.zeros(t)
    base = (np.array(rows), np.array(cols), np.array(caps))
    for j in range(q + 1):
        r = np.concatenate([base[0], [src]])
        c = np.concatenate([base[1], [j]])
        cap = np.concatenate([base[2], [int(scale) * 10]])
        g = csr_matrix((cap.astype(np.int32), (r, c)), shape=(n, n))
        scores[j] = maximum_flow(g, src, sink).flow_value / scale
    return scores
