import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.core import MODELS, apply, init
from jaxlm.interpret import attribution as A


def _linear(w, c=0.3):
    return lambda e: jnp.einsum("ntd,td->n", e, w) + c


def test_gradient_x_input_is_exact_contribution_of_linear_model():
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)
    e = jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)
    gxi = A.gradient_x_input_fn(_linear(w), e)
    np.testing.assert_allclose(np.asarray(gxi), (np.asarray(w) * np.asarray(e)).sum(-1), rtol=1e-5)
    sal = A.saliency_fn(_linear(w), e)
    np.testing.assert_allclose(np.asarray(sal), np.linalg.norm(np.asarray(w), axis=-1), rtol=1e-5)


@pytest.mark.parametrize("rule", ["gauss_legendre", "midpoint"])
def test_ig_exact_on_linear_and_quadratic(rule):
    rng = np.random.default_rng(1)
    w = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
    e = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
    res = A.integrated_gradients_fn(_linear(w), e, b, steps=8, rule=rule)
    np.testing.assert_allclose(res.scores, (np.asarray(w) * np.asarray(e - b)).sum(-1), rtol=1e-4)
    assert res.completeness_error < 1e-5
    # f = sum_t (a . e_t)^2 with zero baseline: IG_t = (a . e_t)^2 exactly
    a = jnp.asarray(rng.normal(size=(3,)), jnp.float32)

    def quad(x):
        return jnp.sum(jnp.square(x @ a), axis=-1)

    res = A.integrated_gradients_fn(quad, e, jnp.zeros_like(e), steps=16, rule=rule)
    tol = 1e-5 if rule == "gauss_legendre" else 1e-2
    np.testing.assert_allclose(res.scores, np.square(np.asarray(e) @ np.asarray(a)), rtol=tol)


@pytest.fixture(scope="module")
def tiny():
    cfg = MODELS.get("gptj-tiny_test")  # untied embeddings: d f / d E[tok] = grad at its position
    return cfg, init(jax.random.PRNGKey(3), cfg)


def test_model_gradients_match_param_gradient(tiny):
    cfg, params = tiny
    toks = np.array([3, 9, 27, 81, 5, 44])  # distinct ids
    y = 10

    def f(embed):
        p = dict(params, embed=embed)
        lg = apply(p, cfg, jnp.asarray(toks)[None]).logits[0, -1]
        return jax.nn.log_softmax(lg)[y]

    g = np.asarray(jax.grad(f)(params["embed"]))[toks]  # [T, D]
    emb = np.asarray(params["embed"])[toks]
    np.testing.assert_allclose(A.saliency(params, cfg, toks, y), np.linalg.norm(g, axis=-1),
                               rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(A.gradient_x_input(params, cfg, toks, y), (g * emb).sum(-1),
                               rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("preset,kind", [("smollm2-135m_test", "logprob"),
                                         ("gptj-tiny_test", "contrast"),
                                         ("cerebras-gpt-tiny_test", "logit")])
def test_ig_completeness_on_tiny_models(preset, kind):
    cfg = MODELS.get(preset)
    params = init(jax.random.PRNGKey(4), cfg)
    # larger weights so the function is clearly non-linear
    params = jax.tree.map(lambda x: x * 4.0 if x.ndim >= 2 else x, params)
    toks = np.array([7, 100, 31, 200, 64])
    res = A.integrated_gradients(params, cfg, toks, 12, steps=64, kind=kind, foil_id=13,
                                 baseline=1)
    assert abs(res.f_input - res.f_baseline) > 1e-3
    assert res.completeness_error < 0.01
    coarse = A.integrated_gradients(params, cfg, toks, 12, steps=2, rule="left", kind=kind,
                                    foil_id=13, baseline=1)
    assert not np.allclose(coarse.scores, res.scores, rtol=1e-3)


def test_occlusion_matches_manual_and_keep_mask(tiny):
    cfg, params = tiny
    toks = np.array([11, 22, 33, 44, 55])
    y, filler = 6, 0

    def lp(t):
        return float(jax.nn.log_softmax(apply(params, cfg, jnp.asarray(t)[None]).logits[0, -1])[y])

    ref = []
    for i in range(len(toks)):
        t = toks.copy()
        t[i] = filler
        ref.append(lp(toks) - lp(t))
    s = A.occlusion(params, cfg, toks, y, filler_id=filler)
    np.testing.assert_allclose(s, ref, rtol=1e-4, atol=1e-6)
    s2 = A.occlusion(params, cfg, toks, y, filler_id=filler,
                     keep_mask=np.array([1, 0, 0, 0, 0], bool))
    assert s2[0] == 0 and s2[1] == pytest.approx(ref[1], rel=1e-4, abs=1e-6)


def test_smoothgrad_and_validation(tiny):
    cfg, params = tiny
    toks = np.array([1, 2, 3, 4])
    sg = A.smoothgrad(params, cfg, toks, 5, jax.random.PRNGKey(0), n_samples=4, sigma=1e-6)
    np.testing.assert_allclose(sg, A.saliency(params, cfg, toks, 5), rtol=1e-3)
    with pytest.raises(ValueError, match="foil_id"):
        A.saliency(params, cfg, toks, 5, kind="contrast")
    with pytest.raises(ValueError, match="target_id"):
        A.saliency(params, cfg, toks, 10_000)
    with pytest.raises(ValueError, match="1-D"):
        A.saliency(params, cfg, toks[None], 5)
