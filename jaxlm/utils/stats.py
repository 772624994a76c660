"""Small statistics shared by the evaluations."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bootstrap_ci(values: Sequence[float] | np.ndarray, n_boot: int = 2000, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap CI of the mean over the first axis.

    ``n_boot`` resamples (with replacement, ``numpy.random.default_rng(seed)``) of the
    ``len(values)`` items; low/high are the ``alpha / 2`` and ``1 - alpha / 2`` quantiles
    of the resampled means. Empty ``values`` give NaNs.
    """
    if n_boot < 1 or not 0.0 < alpha < 1.0:
        raise ValueError(f"bootstrap_ci: need n_boot >= 1 and 0 < alpha < 1, got n_boot={n_boot}, "
                         f"alpha={alpha}")
    x = np.asarray(values, np.float64)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), (n_boot, len(x)))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(x.mean()), float(lo), float(hi)
