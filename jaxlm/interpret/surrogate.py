"""Perturbation surrogates over tokens: KernelSHAP and LIME, coalitions evaluated in batches.

A coalition ``z`` in {0, 1}^M switches the M *free* tokens of a prompt on or off (positions
in ``keep_mask``, e.g. the attention-sink first token, are always on). The value
``v(z)`` is the model's readout (see ``attribution.readout``) on the prompt with the
switched-off tokens masked:

* ``mask="filler"`` (default): each switched-off token is replaced by ``filler_id``
  (positions stay fixed; the same erasure as occlusion and the ERASER metrics);
* ``mask="attention"``: each switched-off token is deleted through an additive attention
  bias that hides its key from every query (``jaxlm.core.apply(attn_bias=...)``); the
  kept tokens keep their positions, so the last position's output equals that of the
  model run on the kept tokens alone (tested).

Every batch of coalitions is one call of one jitted function around ``jaxlm.core.apply``
(``masked_values``); batches have a fixed size, so a prompt compiles once.

Estimators (generic cores over ``value(masks [N, M] bool) -> [N]``, checked on toy
functions against brute-force Shapley values):

* KernelSHAP (Lundberg & Lee 2017): the Shapley values are the solution of the weighted
  least-squares fit ``v(z) ~ phi_0 + z . phi`` with the Shapley kernel
  ``pi(z) = (M - 1) / (C(M, |z|) |z| (M - |z|))`` over coalitions ``0 < |z| < M``, under
  the constraints ``phi_0 = v(0)`` and ``sum phi = v(1) - v(0)`` (efficiency). With a
  budget of at least ``2^M - 2`` evaluations every coalition is enumerated and the result
  is exact; otherwise coalition sizes are sampled with probability proportional to the
  kernel's mass ``(M - 1) / (s (M - s))``, the members uniformly, and each sample is paired
  with its complement (paired sampling), all with unit weight.
* LIME (Ribeiro et al. 2016): a weighted ridge regression ``v(z) ~ b + z . w`` (intercept
  not penalized) over random coalitions (the number of removed tokens uniform in 1..M,
  as LIME's text explainer does, plus the full input), with the exponential kernel
  ``exp(-D^2 / sigma^2)`` on ``D = 1 - |z| / M``, the fraction of tokens removed.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.core import ModelConfig, apply
from jaxlm.interpret.attribution import KINDS, readout

Value = Callable[[np.ndarray], np.ndarray]  # masks [N, M] bool -> v [N]
MaskMode = Literal["filler", "attention"]
_HIDDEN = -1e9  # additive key bias of a deleted token (as core.generate's masked prompt slots)


# --------------------------------------------------------------------------- generic cores
def all_coalitions(m: int) -> np.ndarray:
    """Every coalition of ``m`` players as a [2^m, m] bool array (row k = bits of k)."""
    if not 0 < m <= 20:
        raise ValueError(f"all_coalitions: m must be in 1..20, got {m}")
    k = np.arange(2**m)[:, None]
    return (k >> np.arange(m)[None]) & 1 == 1


def exact_shapley(value: Value, m: int) -> np.ndarray:
    """Shapley values by enumeration: phi_i = sum_S |S|!(m-|S|-1)!/m! [v(S+i) - v(S)].

    Evaluates all 2^m coalitions in one ``value`` call; ``m <= 16``. Float64.
    """
    if not 0 < m <= 16:
        raise ValueError(f"exact_shapley: m must be in 1..16 (2^m evaluations), got {m}")
    z = all_coalitions(m)
    v = np.asarray(value(z), np.float64)
    idx = z @ (1 << np.arange(m))
    vals = np.empty(2**m)
    vals[idx] = v
    sizes = z.sum(1)
    phi = np.zeros(m)
    for i in range(m):
        without = ~z[:, i]
        s = sizes[without]
        w = np.array([math.factorial(k) * math.factorial(m - k - 1) for k in s]) / math.factorial(m)
        with_i = idx[without] | (1 << i)
        phi[i] = np.sum(w * (vals[with_i] - vals[idx[without]]))
    return phi


def shapley_kernel(m: int, size) -> np.ndarray:
    """The Shapley kernel weight (m - 1) / (C(m, s) s (m - s)) for coalition sizes 0 < s < m."""
    s = np.asarray(size)
    if np.any((s <= 0) | (s >= m)):
        raise ValueError(f"shapley_kernel: sizes must be in 1..{m - 1} (empty and full coalitions "
                         "enter as constraints), got {s}")
    return (m - 1) / (np.array([math.comb(m, int(k)) for k in s.ravel()]).reshape(s.shape)
                      * s * (m - s))


@dataclasses.dataclass(frozen=True)
class SurrogateResult:
    """Per-token attributions from a surrogate over coalitions.

    Attributes:
        values: [M] attributions of the free tokens (Shapley values or LIME coefficients).
        base: v(empty coalition) (KernelSHAP) or the fitted intercept (LIME).
        full: v(all tokens on).
        n_evals: model evaluations used (including the empty and full coalitions).
        exact: True when every coalition was enumerated (KernelSHAP only).
    """

    values: np.ndarray
    base: float
    full: float
    n_evals: int
    exact: bool = False


def sample_shap_coalitions(m: int, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """``n_samples`` (rounded up to even) coalitions in complementary pairs, sizes drawn from
    the Shapley kernel's mass per size, members uniform: [n, m] bool."""
    sizes = np.arange(1, m)
    p = (m - 1) / (sizes * (m - sizes))
    p = p / p.sum()
    half = (n_samples + 1) // 2
    s = rng.choice(sizes, size=half, p=p)
    z = np.zeros((half, m), bool)
    for r, k in enumerate(s):
        z[r, rng.choice(m, size=k, replace=False)] = True
    return np.concatenate([z, ~z])


def kernel_shap_fn(value: Value, m: int, *, n_samples: int = 256,
                   rng: np.random.Generator | None = None) -> SurrogateResult:
    """KernelSHAP over ``m`` players (see module doc).

    Args:
        value: ``masks [N, m] bool -> [N]``, called once with every coalition (plus the
            empty and full ones).
        m: number of players (free tokens).
        n_samples: coalition budget besides empty and full; at least ``2^m - 2`` means exact
            enumeration.
        rng: numpy Generator for the sampled case (default: seed 0).

    Returns:
        SurrogateResult; ``sum(values) == full - base`` up to float64 rounding.
    """
    if m < 1:
        raise ValueError(f"kernel_shap: need at least one free token, got m={m}")
    if n_samples < 2 and m > 1:
        raise ValueError(f"kernel_shap: n_samples must be >= 2, got {n_samples}")
    ends = np.stack([np.zeros(m, bool), np.ones(m, bool)])
    if m == 1:
        v = np.asarray(value(ends), np.float64)
        return SurrogateResult(np.array([v[1] - v[0]]), float(v[0]), float(v[1]), 2, True)
    exact = n_samples >= 2**m - 2
    if exact:
        z = all_coalitions(m)
        z = z[(z.sum(1) > 0) & (z.sum(1) < m)]
        w = shapley_kernel(m, z.sum(1))
    else:
        z = sample_shap_coalitions(m, n_samples, rng or np.random.default_rng(0))
        w = np.ones(len(z))
    v = np.asarray(value(np.concatenate([ends, z])), np.float64)
    v0, v1, vz = v[0], v[1], v[2:]
    zf = z.astype(np.float64)
    # KKT system of min sum w (vz - v0 - z.phi)^2 s.t. sum(phi) = v1 - v0
    a = np.zeros((m + 1, m + 1))
    a[:m, :m] = zf.T @ (w[:, None] * zf)
    a[:m, m] = a[m, :m] = 1.0
    b = np.concatenate([zf.T @ (w * (vz - v0)), [v1 - v0]])
    sol = np.linalg.lstsq(a, b, rcond=None)[0]
    return SurrogateResult(sol[:m], float(v0), float(v1), len(v), exact)


def lime_fn(value: Value, m: int, *, n_samples: int = 256, sigma: float = 0.25,
            ridge: float = 1e-2, rng: np.random.Generator | None = None) -> SurrogateResult:
    """LIME over ``m`` players (see module doc).

    Args:
        value: ``masks [N, m] bool -> [N]``.
        m: number of players (free tokens).
        n_samples: random coalitions (besides the full input).
        sigma: kernel width on D = fraction of tokens removed.
        ridge: L2 penalty on the coefficients (not the intercept).
        rng: numpy Generator (default: seed 0).

    Returns:
        SurrogateResult with the coefficients and the intercept as ``base``.
    """
    if m < 1 or n_samples < 1:
        raise ValueError(f"lime: need m >= 1 free tokens and n_samples >= 1, got m={m}, "
                         f"n_samples={n_samples}")
    if sigma <= 0 or ridge < 0:
        raise ValueError(f"lime: need sigma > 0 and ridge >= 0, got sigma={sigma}, ridge={ridge}")
    rng = rng or np.random.default_rng(0)
    removed = rng.integers(1, m + 1, size=n_samples)
    z = np.ones((n_samples + 1, m), bool)
    for r, k in enumerate(removed):
        z[r + 1, rng.choice(m, size=k, replace=False)] = False
    v = np.asarray(value(z), np.float64)
    d = 1.0 - z.sum(1) / m
    w = np.exp(-(d**2) / sigma**2)
    x = np.concatenate([np.ones((len(z), 1)), z.astype(np.float64)], axis=1)
    pen = np.full(m + 1, ridge)
    pen[0] = 0.0
    beta = np.linalg.lstsq(x.T @ (w[:, None] * x) + np.diag(pen), x.T @ (w * v), rcond=None)[0]
    return SurrogateResult(beta[1:], float(beta[0]), float(v[0]), len(v), False)


# --------------------------------------------------------------------------- the model
@functools.partial(jax.jit, static_argnames=("cfg", "kind", "mode"))
def _masked_readout(params, tokens, on, filler_id, target_id, foil_id, *, cfg, kind, mode):
    if mode == "filler":
        toks = jnp.where(on, tokens[None], filler_id)
        out = apply(params, cfg, toks, last_logits_only=True)
    else:
        toks = jnp.broadcast_to(tokens[None], on.shape)
        bias = jnp.where(on, 0.0, _HIDDEN).astype(jnp.float32)[:, None, None, :]
        out = apply(params, cfg, toks, attn_bias=bias, last_logits_only=True)
    return readout(out.logits[:, -1], target_id, kind, foil_id)


def masked_values(params, cfg: ModelConfig, tokens, on, *, target_id: int, filler_id: int = 0,
                  mask: MaskMode = "filler", kind: str = "logprob", foil_id: int | None = None,
                  batch: int = 64) -> np.ndarray:
    """The readout for each row of ``on`` [N, T] bool (False = masked), ``batch`` rows per
    jitted call (the last batch padded with unmasked rows, so one compiled shape).

    Returns:
        [N] float32 values (numpy).
    """
    tokens = jnp.asarray(tokens, jnp.int32)
    on = np.asarray(on, bool)
    if on.ndim != 2 or on.shape[1] != tokens.shape[0]:
        raise ValueError(f"on must be [N, T={tokens.shape[0]}] bool, got shape {on.shape}")
    if mask not in ("filler", "attention"):
        raise ValueError(f"mask must be 'filler' or 'attention', got {mask!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if mask == "attention" and not on.any(axis=1).all():
        raise ValueError("mask='attention' needs at least one unmasked token per row (hold the "
                         "first token with keep_mask)")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    n = on.shape[0]
    pad = (-n) % batch
    rows = np.concatenate([on, np.ones((pad, on.shape[1]), bool)])
    out = []
    for s in range(0, len(rows), batch):
        out.append(_masked_readout(params, tokens, jnp.asarray(rows[s: s + batch]),
                                   int(filler_id), int(target_id),
                                   0 if foil_id is None else int(foil_id), cfg=cfg, kind=kind,
                                   mode=mask))
    return np.asarray(jnp.concatenate(out))[:n]


def _free(t: int, keep_mask) -> np.ndarray:
    if keep_mask is None:
        return np.arange(t)
    keep = np.asarray(keep_mask, bool)
    if keep.shape != (t,):
        raise ValueError(f"keep_mask must be [T={t}] bool, got shape {keep.shape}")
    free = np.nonzero(~keep)[0]
    if len(free) == 0:
        raise ValueError("keep_mask holds every token: nothing to attribute")
    return free


def token_value_fn(params, cfg: ModelConfig, tokens, target_id: int, *, keep_mask=None,
                   **kw) -> tuple[Value, np.ndarray]:
    """(value over the free tokens' coalitions, the free positions) for the surrogates."""
    t = int(np.asarray(tokens).shape[0])
    free = _free(t, keep_mask)

    def value(z):
        on = np.ones((len(z), t), bool)
        on[:, free] = z
        return masked_values(params, cfg, tokens, on, target_id=target_id, **kw)

    return value, free


def _scatter(res: SurrogateResult, free: np.ndarray, t: int) -> np.ndarray:
    s = np.zeros(t)
    s[free] = res.values
    return s


def kernel_shap(params, cfg: ModelConfig, tokens, target_id: int, *, n_samples: int = 256,
                keep_mask=None, filler_id: int = 0, mask: MaskMode = "filler",
                kind: str = "logprob", foil_id: int | None = None, seed: int = 0,
                batch: int = 64) -> tuple[np.ndarray, SurrogateResult]:
    """KernelSHAP token attributions of the next-token readout.

    Args:
        params, cfg: the model; tokens [T] the prompt; target_id the explained next token.
        n_samples: coalition budget (>= 2^M - 2 for M free tokens: exact Shapley values).
        keep_mask: [T] bool positions never masked (score 0).
        filler_id, mask: how a token is switched off (module doc).
        kind, foil_id: the readout.
        seed: sampling seed; batch: coalitions per jitted call.

    Returns:
        (scores [T], SurrogateResult over the free tokens).
    """
    value, free = token_value_fn(params, cfg, tokens, target_id, keep_mask=keep_mask,
                                 filler_id=filler_id, mask=mask, kind=kind, foil_id=foil_id,
                                 batch=batch)
    res = kernel_shap_fn(value, len(free), n_samples=n_samples,
                         rng=np.random.default_rng(seed))
    return _scatter(res, free, len(np.asarray(tokens))), res


def lime(params, cfg: ModelConfig, tokens, target_id: int, *, n_samples: int = 256,
         sigma: float = 0.25, ridge: float = 1e-2, keep_mask=None, filler_id: int = 0,
         mask: MaskMode = "filler", kind: str = "logprob", foil_id: int | None = None,
         seed: int = 0, batch: int = 64) -> tuple[np.ndarray, SurrogateResult]:
    """LIME token attributions (coefficients of the local linear surrogate); arguments as
    in :func:`kernel_shap` plus ``sigma`` and ``ridge`` (see :func:`lime_fn`)."""
    value, free = token_value_fn(params, cfg, tokens, target_id, keep_mask=keep_mask,
                                 filler_id=filler_id, mask=mask, kind=kind, foil_id=foil_id,
                                 batch=batch)
    res = lime_fn(value, len(free), n_samples=n_samples, sigma=sigma, ridge=ridge,
                  rng=np.random.default_rng(seed))
    return _scatter(res, free, len(np.asarray(tokens))), res

