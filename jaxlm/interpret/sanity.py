"""Sanity checks for attributions: cascading model-parameter randomization.

Adebayo et al. (NeurIPS 2018), a check the explainability survey (Zhao et al. 2024)
recommends: an attribution that explains the *trained model* must change when the
model's parameters are replaced by random ones. The cascading version re-initializes
the model from the top down (the output head first, then the last block, the one
below it, ...) and, after each stage, compares the attributions of the partly
randomized model with the trained model's by Spearman rank correlation. A method
whose correlation stays near 1 while the model is destroyed explains the input, not
the model.

Randomized parameters come from the model's own initializer (``jaxlm.core.init``
with a fresh key), so every stage is a model of the same shape and scale. With tied
embeddings there is no separate head: the first stage is the last block (the
embedding table is also the input and is never randomized here).

    stages = cascading_randomization(params, cfg, lambda p: gradient_x_input(
        p, cfg, tokens, target), jax.random.PRNGKey(1))
    # stages[0] is the trained model (rho = 1); stages[-1] has every block randomized
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import numpy as np

from jaxlm.core import ModelConfig, init


def rank(x) -> np.ndarray:
    """Ranks 1..n of a 1-D array, ties given their average rank (float64)."""
    x = np.asarray(x, np.float64)
    if x.ndim != 1:
        raise ValueError(f"rank: x must be 1-D, got shape {x.shape}")
    order = np.argsort(x, kind="stable")
    xs = x[order]
    ranks = np.empty(len(x))
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i: j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a, b) -> float:
    """Spearman rank correlation of two score vectors of the same length (>= 2).

    NaN when one of them is constant (the correlation is undefined).
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"spearman needs two 1-D arrays of the same length >= 2, got "
                         f"shapes {a.shape} and {b.shape}")
    ra, rb = rank(a) - (len(a) + 1) / 2, rank(b) - (len(b) + 1) / 2
    den = np.sqrt(np.sum(ra * ra) * np.sum(rb * rb))
    return float(np.sum(ra * rb) / den) if den > 0 else float("nan")


def stage_names(params, cfg: ModelConfig) -> list[str]:
    """The cascade, top down: "head" (untied models only), then "block L-1" .. "block 0"."""
    head = ["head"] if "lm_head" in params else []
    return head + [f"block {i}" for i in reversed(range(cfg.n_layers))]


def randomize_top(params, fresh, cfg: ModelConfig, n_stages: int):
    """``params`` with the top ``n_stages`` stages (see :func:`stage_names`) taken from
    ``fresh`` (a freshly initialized model of the same config). Other leaves are the
    trained ones (shared, not copied)."""
    names = stage_names(params, cfg)
    if not 0 <= n_stages <= len(names):
        raise ValueError(f"n_stages must be in 0..{len(names)}, got {n_stages}")
    out = dict(params)
    layers = list(params["layers"])
    for name in names[:n_stages]:
        if name == "head":
            out["lm_head"] = fresh["lm_head"]
            if "lm_head_bias" in params:
                out["lm_head_bias"] = fresh["lm_head_bias"]
            out["final_norm"] = fresh["final_norm"]
        else:
            i = int(name.split()[1])
            layers[i] = fresh["layers"][i]
    out["layers"] = layers
    return out


@dataclasses.dataclass
class RandomizationStage:
    """One stage of the cascade.

    Attributes:
        stage: the last stage randomized ("trained" for none).
        n_randomized: how many stages are randomized (cumulative, from the top).
        spearman: rank correlation with the trained model's scores (of |scores| when
            ``absolute``).
        scores: the attributions at this stage.
    """

    stage: str
    n_randomized: int
    spearman: float
    scores: np.ndarray


def cascading_randomization(
    params,
    cfg: ModelConfig,
    attribute: Callable[[object], np.ndarray],
    key: jax.Array,
    *,
    absolute: bool = True,
    stages: int | None = None,
    points=None,
    exclude=None,
) -> list[RandomizationStage]:
    """Attributions of the trained model vs the model randomized from the top down.

    Args:
        params, cfg: the trained model.
        attribute: ``attribute(params) -> scores [T]`` (e.g. a ``functools.partial`` of
            ``attribution.gradient_x_input`` with the prompt and target bound).
        key: PRNG key of the re-initialization.
        absolute: correlate |scores| (the usual choice: sign flips count as agreement).
        stages: randomize only the top ``stages`` stages (default: all).
        points: evaluate only after these numbers of randomized stages (each in
            1..stages; default every stage); the cascade itself is unchanged.
        exclude: optional [T] bool, positions left out of the correlation: those a method
            scores 0 by construction (a held attention-sink token) would otherwise tie at
            the bottom of both rankings and inflate the correlation.

    Returns:
        ``[trained, top 1 randomized, top 2, ...]`` (or the ``points``); the first has
        spearman 1.
    """
    names = stage_names(params, cfg)
    n = len(names) if stages is None else stages
    if not 1 <= n <= len(names):
        raise ValueError(f"stages must be in 1..{len(names)}, got {stages}")
    ks = list(range(1, n + 1)) if points is None else sorted(set(int(k) for k in points))
    if not ks or ks[0] < 1 or ks[-1] > n:
        raise ValueError(f"points must lie in 1..{n}, got {points}")
    fresh = init(key, cfg)

    def prep(s):
        s = np.asarray(s, np.float64)
        if exclude is not None:
            ex = np.asarray(exclude, bool)
            if ex.shape != s.shape:
                raise ValueError(f"exclude must be [T]={s.shape}, got shape {ex.shape}")
            s = s[~ex]
        return np.abs(s) if absolute else s

    base = np.asarray(attribute(params))
    out = [RandomizationStage("trained", 0, 1.0, base)]
    for k in ks:
        s = np.asarray(attribute(randomize_top(params, fresh, cfg, k)))
        out.append(RandomizationStage(names[k - 1], k, spearman(prep(base), prep(s)), s))
    return out
