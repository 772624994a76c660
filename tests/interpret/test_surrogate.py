import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.core import MODELS, apply, init
from jaxlm.interpret import surrogate as S
from jaxlm.interpret.attribution import readout


def _game(m, seed):
    """A non-additive toy game: linear part + pairwise and triple interactions."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=m)
    pairs = rng.normal(size=(m, m)) * np.triu(np.ones((m, m)), 1)
    tri = rng.normal(size=3)
    c = rng.normal()

    def v(z):
        z = np.asarray(z, np.float64)
        return (c + z @ a + np.einsum("ni,ij,nj->n", z, pairs, z)
                + tri[0] * np.prod(z[:, :3], axis=1) + tri[1] * np.prod(z, axis=1))

    return v


def _brute_shapley(v, m):
    """Independent reference: average marginal contribution over all orderings (m <= 7)."""
    phi = np.zeros(m)
    perms = list(itertools.permutations(range(m)))
    for p in perms:
        z = np.zeros((m + 1, m), bool)
        for k, i in enumerate(p):
            z[k + 1:, i] = True
        vals = v(z)
        for k, i in enumerate(p):
            phi[i] += vals[k + 1] - vals[k]
    return phi / len(perms)


@pytest.mark.parametrize("m,seed", [(2, 0), (5, 1), (7, 2)])
def test_exact_shapley_matches_permutation_average(m, seed):
    v = _game(m, seed)
    np.testing.assert_allclose(S.exact_shapley(v, m), _brute_shapley(v, m), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("m,seed", [(3, 3), (6, 4), (10, 5)])
def test_kernel_shap_enumerated_is_exact_on_interacting_game(m, seed):
    v = _game(m, seed)
    res = S.kernel_shap_fn(v, m, n_samples=2**m)
    assert res.exact and res.n_evals == 2**m
    ref = S.exact_shapley(v, m)
    np.testing.assert_allclose(res.values, ref, rtol=1e-8, atol=1e-8 * np.abs(ref).max())
    full, empty = v(np.ones((1, m), bool))[0], v(np.zeros((1, m), bool))[0]
    assert abs(res.values.sum() - (full - empty)) < 1e-9 * max(1.0, abs(full - empty))


def test_kernel_shap_sampled_additive_exact_and_interacting_close():
    m = 12
    rng = np.random.default_rng(7)
    a, c = rng.normal(size=m), rng.normal()
    res = S.kernel_shap_fn(lambda z: c + np.asarray(z, float) @ a, m, n_samples=60)
    assert not res.exact
    np.testing.assert_allclose(res.values, a, rtol=1e-8, atol=1e-8)  # additive: any sample
    v = _game(m, 8)
    ref = S.exact_shapley(v, m)
    est = S.kernel_shap_fn(v, m, n_samples=2000, rng=np.random.default_rng(1)).values
    err = np.abs(est - ref).max() / np.abs(ref).max()
    assert err < 0.15, (err, est, ref)
    np.testing.assert_allclose(est.sum(), ref.sum(), rtol=1e-8)  # efficiency is a constraint


def test_paired_sampling_and_kernel_weights():
    z = S.sample_shap_coalitions(6, 40, np.random.default_rng(0))
    assert z.shape == (40, 6)
    np.testing.assert_array_equal(z[:20], ~z[20:])
    assert (z.sum(1) > 0).all() and (z.sum(1) < 6).all()
    w = S.shapley_kernel(4, np.array([1, 2, 3]))
    np.testing.assert_allclose(w, [3 / (4 * 1 * 3), 3 / (6 * 2 * 2), 3 / (4 * 3 * 1)])
    with pytest.raises(ValueError, match="sizes must be in 1..3"):
        S.shapley_kernel(4, np.array([0]))


def test_lime_recovers_additive_coefficients():
    m = 9
    rng = np.random.default_rng(11)
    a, c = rng.normal(size=m), rng.normal()
    res = S.lime_fn(lambda z: c + np.asarray(z, float) @ a, m, n_samples=200, ridge=1e-10)
    np.testing.assert_allclose(res.values, a, rtol=1e-6, atol=1e-6)
    assert abs(res.base - c) < 1e-6
    # the default ridge shrinks only slightly
    res = S.lime_fn(lambda z: c + np.asarray(z, float) @ a, m, n_samples=200)
    np.testing.assert_allclose(res.values, a, rtol=0.05, atol=0.05)
    with pytest.raises(ValueError, match="sigma > 0"):
        S.lime_fn(lambda z: z.sum(1), 3, sigma=0.0)


@pytest.fixture(scope="module")
def tiny():
    cfg = MODELS.get("smollm2-135m_test")
    return cfg, init(jax.random.PRNGKey(5), cfg)


def _direct(params, cfg, toks, target):
    lg = apply(params, cfg, jnp.asarray(toks, jnp.int32)[None]).logits[0, -1]
    return float(readout(lg, target, "logprob"))


def test_batched_filler_values_equal_per_coalition(tiny):
    cfg, params = tiny
    toks = np.array([7, 31, 90, 12, 55, 3, 200])
    target, filler = 17, 9
    rng = np.random.default_rng(0)
    on = rng.random((11, len(toks))) < 0.6
    got = S.masked_values(params, cfg, toks, on, target_id=target, filler_id=filler, batch=4)
    ref = np.array([_direct(params, cfg, np.where(r, toks, filler), target) for r in on])
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_attention_deletion_equals_running_without_the_tokens(tiny):
    cfg, params = tiny
    toks = np.array([7, 31, 90, 12, 55, 3, 200])
    target = 17
    on = np.array([[1, 0, 1, 1, 0, 1, 1], [1, 1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0, 1]], bool)
    got = S.masked_values(params, cfg, toks, on, target_id=target, mask="attention", batch=8)
    ref = []
    for r in on:
        pos = np.nonzero(r)[0]  # the kept tokens alone, at their original positions
        lg = apply(params, cfg, jnp.asarray(toks[pos])[None],
                   positions=jnp.asarray(pos, jnp.int32)[None]).logits[0, -1]
        ref.append(float(readout(lg, target, "logprob")))
    ref = np.array(ref)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    assert abs(got[0] - got[1]) > 1e-4  # deletion changes the output


def test_model_kernel_shap_exact_and_efficient(tiny):
    cfg, params = tiny
    toks = np.array([7, 31, 90, 12, 55, 3])
    keep = np.zeros(6, bool)
    keep[0] = True
    scores, res = S.kernel_shap(params, cfg, toks, 17, n_samples=64, keep_mask=keep,
                                filler_id=9)
    assert res.exact and scores[0] == 0.0
    value, free = S.token_value_fn(params, cfg, toks, 17, keep_mask=keep, filler_id=9)
    ref = S.exact_shapley(value, len(free))
    np.testing.assert_allclose(scores[1:], ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
    assert abs(scores.sum() - (res.full - res.base)) < 1e-4 * max(1.0, abs(res.full - res.base))
    ls, lres = S.lime(params, cfg, toks, 17, n_samples=64, keep_mask=keep, filler_id=9)
    assert ls[0] == 0.0 and np.isfinite(ls).all() and lres.n_evals == 65


def test_bad_inputs(tiny):
    cfg, params = tiny
    with pytest.raises(ValueError, match=r"on must be \[N, T=3\]"):
        S.masked_values(params, cfg, [1, 2, 3], np.ones((2, 4), bool), target_id=1)
    with pytest.raises(ValueError, match="at least one unmasked token"):
        S.masked_values(params, cfg, [1, 2, 3], np.zeros((1, 3), bool), target_id=1,
                        mask="attention")
    with pytest.raises(ValueError, match="keep_mask holds every token"):
        S.kernel_shap(params, cfg, [1, 2], 1, keep_mask=[True, True])
    assert math.isclose(S.kernel_shap_fn(lambda z: z[:, 0] * 2.0 + 1, 1).values[0], 2.0)
