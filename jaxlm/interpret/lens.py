"""The logit lens: decode every layer's residual stream with the final norm and LM head."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.core import ModelConfig, apply
from jaxlm.core.transformer import unembed


@functools.partial(jax.jit, static_argnames=("cfg",))
def _lens(params, tokens, *, cfg):
    out = apply(params, cfg, tokens, return_hidden=True)
    h = jnp.stack([x[:, -1] for x in out.hidden])  # [L+1, B, D]
    logits = unembed(params, cfg, h)  # [L+1, B, V]
    return jax.nn.log_softmax(logits, axis=-1), out.logits[:, -1]


def logit_lens(params, cfg: ModelConfig, tokens) -> np.ndarray:
    """Next-token log-probabilities read from every layer at the last position.

    Row 0 decodes the embeddings, row l the output of block l; the last row equals
    the model's own output distribution. (Tied models use softmax(E . norm(h)).)

    Args:
        params, cfg: the model.
        tokens: [T] prompt ids.

    Returns:
        log-probs [L + 1, V] (numpy).
    """
    tokens = jnp.asarray(tokens, jnp.int32)
    if tokens.ndim != 1 or tokens.shape[0] == 0:
        raise ValueError(f"tokens must be a non-empty [T] id sequence, got {tokens.shape}")
    lp, _ = _lens(params, tokens[None], cfg=cfg)
    return np.asarray(lp[:, 0])
