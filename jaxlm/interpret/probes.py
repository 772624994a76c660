"""Linear probes (L2 logistic regression solved by Newton's method) and neuron statistics.

``fit_logistic`` minimises sum_i logloss(y_i, sigmoid(w . z_i + b)) + l2/2 ||w||^2 on
standardised features z (bias unpenalised), i.e. scikit-learn's
``LogisticRegression(C=1/l2)`` on ``StandardScaler`` output. Newton steps on the
(F+1)-dimensional problem converge in ~10-20 iterations and vmap over layers, so a
probe per layer trains in one call (``fit_logistic_layers``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxlm.core import ModelConfig

Array = jax.Array


@struct.dataclass
class LogisticProbe:
    """w [..., F], b [...], feature mean/std [..., F] used to standardise inputs."""

    w: Array
    b: Array
    mu: Array
    sd: Array


def _fit(x, y, weight, l2, n_iter):
    # x [N, F], y [N] in {0, 1}, weight [N] sample weights (0 = ignore)
    wsum = jnp.maximum(jnp.sum(weight), 1.0)
    mu = jnp.sum(x * weight[:, None], 0) / wsum
    sd = jnp.sqrt(jnp.sum(jnp.square(x - mu) * weight[:, None], 0) / wsum) + 1e-6
    z = (x - mu) / sd
    za = jnp.concatenate([z, jnp.ones((z.shape[0], 1), z.dtype)], axis=1)  # [N, F+1]
    f1 = za.shape[1]
    reg = l2 * jnp.concatenate([jnp.ones((f1 - 1,)), jnp.zeros((1,))])

    def step(theta, _):
        p = jax.nn.sigmoid(za @ theta)
        g = za.T @ (weight * (p - y)) + reg * theta
        h = (za * (weight * p * (1 - p))[:, None]).T @ za + jnp.diag(reg + 1e-8)
        return theta - jnp.linalg.solve(h, g), None

    theta, _ = jax.lax.scan(step, jnp.zeros((f1,), x.dtype), None, length=n_iter)
    return LogisticProbe(theta[:-1], theta[-1], mu, sd)


@functools.partial(jax.jit, static_argnames=("n_iter",))
def _fit_jit(x, y, weight, l2, n_iter):
    return _fit(x, y, weight, l2, n_iter)


@functools.partial(jax.jit, static_argnames=("n_iter",))
def _fit_layers_jit(x, y, weight, l2, n_iter):
    return jax.vmap(lambda xl: _fit(xl, y, weight, l2, n_iter))(x)


def _validate(x, y, feature_axes: int):
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y, jnp.float32)
    if x.ndim != feature_axes or y.ndim != 1 or x.shape[-2] != y.shape[0]:
        raise ValueError(
            f"features {x.shape} must have {feature_axes} axes ending in [N, F] with labels [N]; "
            f"got labels {y.shape}"
        )
    if not bool(jnp.all((y == 0) | (y == 1))):
        raise ValueError("labels must be 0 or 1")
    return x, y


def fit_logistic(x, y, *, l2: float = 1.0, n_iter: int = 20, weight=None) -> LogisticProbe:
    """L2 logistic regression probe on features x [N, F] with labels y [N] in {0, 1}."""
    x, y = _validate(x, y, 2)
    w = jnp.ones_like(y) if weight is None else jnp.asarray(weight, jnp.float32)
    return _fit_jit(x, y, w, jnp.float32(l2), n_iter)


def fit_logistic_layers(x, y, *, l2: float = 1.0, n_iter: int = 20, weight=None) -> LogisticProbe:
    """One probe per layer: x [L, N, F], y [N] -> LogisticProbe with a leading L axis."""
    x, y = _validate(x, y, 3)
    w = jnp.ones_like(y) if weight is None else jnp.asarray(weight, jnp.float32)
    return _fit_layers_jit(x, y, w, jnp.float32(l2), n_iter)


def predict_logit(probe: LogisticProbe, x) -> Array:
    """Decision values: x [..., N, F] (matching the probe's leading axes) -> [..., N]."""
    z = (jnp.asarray(x, jnp.float32) - probe.mu[..., None, :]) / probe.sd[..., None, :]
    return jnp.einsum("...nf,...f->...n", z, probe.w) + probe.b[..., None]


def predict_proba(probe: LogisticProbe, x) -> Array:
    """P(y = 1): x [..., N, F] -> [..., N]."""
    return jax.nn.sigmoid(predict_logit(probe, x))


def accuracy(scores, y, threshold: float = 0.0) -> np.ndarray:
    """Accuracy of ``scores > threshold`` against y along the last axis."""
    s = np.asarray(scores)
    return np.mean((s > threshold) == (np.asarray(y)[None] > 0.5 if s.ndim > 1 else
                                       np.asarray(y) > 0.5), axis=-1)


def auroc(scores, y) -> float:
    """Area under the ROC curve (Mann-Whitney U with tie correction) for 1-D scores."""
    from scipy.stats import rankdata

    s, y = np.asarray(scores, np.float64), np.asarray(y) > 0.5
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = rankdata(s)
    return float((r[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


# --------------------------------------------------------------------------- neurons
@functools.partial(jax.jit, static_argnames=("cfg", "site"))
def _site_acts(params, tokens, *, cfg, site):
    from jaxlm.core import apply

    store = {}

    def hook(s, layer, act):
        if s == site:
            store[layer] = act
        return act

    apply(params, cfg, tokens, intervene=hook)
    return jnp.stack([store[i] for i in sorted(store)])  # [L, B, T, F]


def neuron_stats(params, cfg: ModelConfig, tokens, mask=None, *, site: str = "mlp_hidden",
                 top_k: int = 5) -> dict[str, np.ndarray]:
    """Activation statistics per neuron over a batch of prompts.

    Args:
        params, cfg: the model.
        tokens: [B, T] ids; mask: optional [B, T] bool of positions to include.
        site: an intervention site with per-layer activations ("mlp_hidden" = the MLP's
            F-wide hidden layer, the usual "neurons").
        top_k: how many top-activating (batch, position) pairs to return per neuron.

    Returns:
        {"mean", "std", "frac_positive", "max"}: [L, F]; "top_index": [L, F, k]
        flat indices into B * T of the k largest activations.
    """
    tokens = jnp.asarray(tokens, jnp.int32)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [B, T], got {tokens.shape}")
    acts = _site_acts(params, tokens, cfg=cfg, site=site)
    n_l, b, t, f = acts.shape
    flat = acts.reshape(n_l, b * t, f).astype(jnp.float32)
    m = jnp.ones((b * t,), bool) if mask is None else jnp.asarray(mask, bool).reshape(-1)
    cnt = jnp.maximum(jnp.sum(m), 1)
    mean = jnp.sum(jnp.where(m[None, :, None], flat, 0), 1) / cnt
    var = jnp.sum(jnp.where(m[None, :, None], jnp.square(flat - mean[:, None]), 0), 1) / cnt
    masked = jnp.where(m[None, :, None], flat, -jnp.inf)
    top = jax.lax.top_k(jnp.swapaxes(masked, 1, 2), min(top_k, b * t))[1]
    return {
        "mean": np.asarray(mean),
        "std": np.asarray(jnp.sqrt(var)),
        "frac_positive": np.asarray(jnp.sum((flat > 0) & m[None, :, None], 1) / cnt),
        "max": np.asarray(jnp.max(masked, 1)),
        "top_index": np.asarray(top),
    }
