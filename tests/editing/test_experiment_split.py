"""The refresh-knowledge experiment's calibration split and its preset plumbing."""

from __future__ import annotations

import pytest

from experiments.knowledge_editing import experiment


@pytest.mark.parametrize("n,k", [(39, 6), (5, 2), (12, 11)])
def test_calibration_split_is_disjoint_and_spread(n, k):
    cases = list(range(n))
    calib, ev = experiment.calibration_split(cases, k)
    assert len(calib) == k and len(ev) == n - k
    assert not set(calib) & set(ev) and sorted(calib + ev) == cases
    assert ev == sorted(ev)  # evaluation keeps the (relation-mixed) order
    if k < n // 2:  # spread: not all calibration facts from one end of the list
        assert min(calib) < n // 2 <= max(calib)
    for bad in (0, n):
        with pytest.raises(ValueError, match="n_calib"):
            experiment.calibration_split(cases, bad)


def test_presets_and_overrides():
    q = experiment.EXPERIMENTS.get("smollm2_test", ["n_calib=3", "alpha_l2=2.5"])
    assert (q.n_calib, q.alpha_l2) == (3, 2.5)
    assert "alphaedit" in q.seq_methods and "alphaedit" in q.methods
    full = experiment.EXPERIMENTS.get("smollm2")
    assert max(full.seq_points) >= 10 and "alphaedit" in full.seq_methods
