"""The one bootstrap_ci: against a direct numpy resampling, and its shared users."""

from __future__ import annotations

import numpy as np
import pytest

from jaxlm.context import metrics as context_metrics
from jaxlm.llm import helpers
from jaxlm.utils.stats import bootstrap_ci


def test_bootstrap_ci_matches_direct_resampling_and_covers_the_mean():
    x = np.random.default_rng(5).normal(2.0, 1.0, size=200)
    m, lo, hi = bootstrap_ci(x, n_boot=500, alpha=0.1, seed=3)
    idx = np.random.default_rng(3).integers(0, 200, (500, 200))
    means = np.sort(x[idx].mean(1))
    assert m == pytest.approx(x.mean(), rel=1e-12)
    assert lo == pytest.approx(np.quantile(means, 0.05), rel=1e-12)
    assert hi == pytest.approx(np.quantile(means, 0.95), rel=1e-12)
    assert lo < m < hi and hi - lo < 0.5  # ~ 2 * 1.645 / sqrt(200) = 0.23
    assert all(np.isnan(bootstrap_ci([])))
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci(x, alpha=1.5)


def test_one_implementation():
    assert helpers.bootstrap_ci is bootstrap_ci
    assert context_metrics.bootstrap_ci is bootstrap_ci
