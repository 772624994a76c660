"""Cascading model-parameter randomization (jaxlm.interpret.sanity) on a tiny model."""

import functools

import jax
import numpy as np
import pytest
from scipy import stats

from jaxlm.core import MODELS, init
from jaxlm.interpret import sanity
from jaxlm.interpret.attribution import gradient_x_input, occlusion


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(5):
        a = rng.integers(0, 5, 12).astype(float)  # ties
        b = a + rng.normal(size=12)
        assert sanity.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic,
                                                      rel=1e-12)
    x = rng.normal(size=9)
    assert sanity.spearman(x, -x) == pytest.approx(-1.0)
    assert np.isnan(sanity.spearman(x, np.ones(9)))
    with pytest.raises(ValueError, match="same length"):
        sanity.spearman(x, x[:3])


@pytest.fixture(scope="module")
def tiny():
    cfg = MODELS.get("gptj-tiny_test")
    return cfg, init(jax.random.PRNGKey(3), cfg)


def test_randomize_top_replaces_only_the_top(tiny):
    cfg, params = tiny
    fresh = init(jax.random.PRNGKey(11), cfg)
    names = sanity.stage_names(params, cfg)
    assert names[0] == "head" and names[-1] == "block 0"
    p = sanity.randomize_top(params, fresh, cfg, 2)  # head and the last block
    assert p["lm_head"] is fresh["lm_head"]
    assert p["layers"][-1] is fresh["layers"][-1]
    for i in range(cfg.n_layers - 1):
        assert p["layers"][i] is params["layers"][i]
    assert p["embed"] is params["embed"]
    assert params["layers"][-1] is not fresh["layers"][-1]  # the input is not mutated
    with pytest.raises(ValueError, match="n_stages"):
        sanity.randomize_top(params, fresh, cfg, len(names) + 1)


@pytest.mark.parametrize("method", ["gxi", "occlusion"])
def test_randomization_changes_attributions(tiny, method):
    cfg, params = tiny
    tokens = jax.random.randint(jax.random.PRNGKey(5), (10,), 1, cfg.vocab_size)
    target = 7
    if method == "gxi":
        attr = functools.partial(gradient_x_input, cfg=cfg, tokens=tokens, target_id=target)
    else:
        attr = functools.partial(occlusion, cfg=cfg, tokens=tokens, target_id=target,
                                 filler_id=0)
    res = sanity.cascading_randomization(params, cfg, attr, jax.random.PRNGKey(11))
    assert [r.n_randomized for r in res] == list(range(cfg.n_layers + 2))
    assert res[0].spearman == 1.0
    np.testing.assert_allclose(res[0].scores, attr(params), rtol=1e-5, atol=1e-7)
    rhos = np.array([r.spearman for r in res[1:]])
    assert np.all(np.isfinite(rhos)) and np.all(rhos <= 1.0 + 1e-12)
    assert rhos[-1] < 0.9  # the fully randomized model's attributions are not the trained ones
    assert not np.allclose(res[-1].scores, res[0].scores, rtol=1e-3)


def test_points_evaluate_a_subset_of_the_same_cascade(tiny):
    cfg, params = tiny
    tokens = jax.random.randint(jax.random.PRNGKey(6), (8,), 1, cfg.vocab_size)
    attr = functools.partial(gradient_x_input, cfg=cfg, tokens=tokens, target_id=3)
    full = sanity.cascading_randomization(params, cfg, attr, jax.random.PRNGKey(2))
    sub = sanity.cascading_randomization(params, cfg, attr, jax.random.PRNGKey(2), points=[3, 1])
    assert [r.n_randomized for r in sub] == [0, 1, 3]
    for r in sub:
        np.testing.assert_allclose(r.scores, full[r.n_randomized].scores, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="points"):
        sanity.cascading_randomization(params, cfg, attr, jax.random.PRNGKey(2), points=[9])


def test_exclude_drops_positions_from_the_correlation(tiny):
    cfg, params = tiny
    toks = np.array([3, 9, 27, 81, 5, 44])
    calls = []

    def attribute(p):  # position 0 scored 0 by construction (a held token)
        s = np.asarray(gradient_x_input(p, cfg, toks, 10), np.float64)
        s[0] = 0.0
        calls.append(s)
        return s

    key = jax.random.PRNGKey(7)
    ex = np.zeros(6, bool)
    ex[0] = True
    full = sanity.cascading_randomization(params, cfg, attribute, key, points=[2])
    cut = sanity.cascading_randomization(params, cfg, attribute, key, points=[2], exclude=ex)
    a, b = np.abs(calls[0]), np.abs(calls[1])
    assert full[1].spearman == pytest.approx(sanity.spearman(a, b))
    assert cut[1].spearman == pytest.approx(sanity.spearman(a[1:], b[1:]))
    assert cut[1].spearman != pytest.approx(full[1].spearman)  # the tie at 0 counted before
    with pytest.raises(ValueError, match="exclude must be"):
        sanity.cascading_randomization(params, cfg, attribute, key, points=[1],
                                       exclude=np.zeros(3, bool))
