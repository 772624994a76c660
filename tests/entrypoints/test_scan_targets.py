"""bench_scan's summary and targets: the bandwidth/compute model is "the floor"; the plain
lax.scan on materialised a, b and the fused exp-sum are anchors, named as such (issue 21.7)."""

import numpy as np
import pytest

from experiments.mamba_nd import scan_bench as sb


def _measured(rng, floor_s):
    """Fake timings of one shape: every jaxlm variant slower than the model floor."""
    res = {}
    for k in list(sb.JAXLM_VARIANTS) + list(sb.SHARDED_VARIANTS):
        f = floor_s * rng.uniform(15, 40)
        res[k] = {"fwd_s": f, "fwdbwd_s": f * rng.uniform(2, 4),
                  "fwdbwd_bytes": int(rng.integers(1, 4) * 2**20)}
    res["jax_plain_scan"] = {"fwd_s": floor_s * 200, "fwdbwd_s": floor_s * 600}
    res["exp_sum_fused_BLDN"] = {"fwd_s": floor_s * 7}
    res["exp_over_BLDN"] = {"fwd_s": floor_s * 9}
    res["mambapy_pscan"] = {"fwd_s": floor_s * 800, "fwdbwd_s": floor_s * 2400}
    return res


def test_the_floor_is_the_model_floor_and_is_reported_not_met():
    rng = np.random.default_rng(0)
    floor = {"floor_s": 3.1e-4}
    res = _measured(rng, floor["floor_s"])
    summ = sb.summarize(2, 1024, 256, 16, res, floor)
    best = min(res[k]["fwd_s"] for k in list(sb.JAXLM_VARIANTS) + list(sb.SHARDED_VARIANTS))
    assert summ["best_fwd_s"]["seconds"] == best
    assert summ["floor_s"] == floor["floor_s"]
    assert summ["best_fwd_over_floor"] == pytest.approx(best / floor["floor_s"], rel=1e-6)
    assert summ["best_fwd_over_plain_lax_scan"] == pytest.approx(
        best / res["jax_plain_scan"]["fwd_s"], rel=1e-6)
    assert "plain_lax_scan_materialised_ab_fwd" in summ["anchors_s"]
    assert not any("issue" in k for k in summ)  # no anchor passed off as "the floor"
    tg = {t.name: t for t in sb.targets(summ, res)}
    floor_t = [t for n, t in tg.items() if n.startswith("the floor (")]
    assert len(floor_t) == 1 and floor_t[0].measured > 5 and not floor_t[0].met
    anchor = [t for n, t in tg.items() if n.startswith("vs plain lax.scan on materialised a,b")]
    assert len(anchor) == 2 and all(t.met for t in anchor)
    assert all(n.startswith(("the floor", "vs ", "chunked")) for n in tg)


def test_the_floor_target_is_met_when_within_5x():
    rng = np.random.default_rng(1)
    floor = {"floor_s": 1e-3}
    res = _measured(rng, floor["floor_s"])
    for k in sb.JAXLM_VARIANTS:
        res[k]["fwd_s"] = floor["floor_s"] * rng.uniform(2, 4)
    summ = sb.summarize(2, 1024, 256, 16, res, floor)
    t = next(t for t in sb.targets(summ, res) if t.name.startswith("the floor ("))
    assert t.met and t.measured == pytest.approx(summ["best_fwd_s"]["seconds"] / 1e-3, rel=1e-6)
