import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.core import MODELS, apply, init
from jaxlm.interpret import tracing


@pytest.fixture(scope="module")
def model():
    cfg = MODELS.get("smollm2-135m_test")
    return cfg, init(jax.random.PRNGKey(0), cfg)


def _p(params, cfg, toks, y):
    lg = apply(params, cfg, jnp.asarray(toks)[None]).logits[0, -1]
    return float(jax.nn.softmax(lg)[y])


def test_restoring_every_position_restores_clean_output(model):
    cfg, params = model
    site = "resid_post"
    toks = np.array([5, 17, 33, 2, 90, 41])
    y = 7
    logits, acts = tracing.run_with_cache(params, cfg, toks, (site,))
    p_clean = float(jax.nn.softmax(logits[0, -1])[y])
    t = len(toks)
    eps = 0.5 * jax.random.normal(jax.random.PRNGKey(1), (3, t, cfg.d_model))
    # restore all positions at all layers (every site), or at one layer (resid_post only)
    masks = [np.ones((cfg.n_layers, t), bool)]
    for layer in range(cfg.n_layers):  # any single layer, all positions
        m = np.zeros((cfg.n_layers, t), bool)
        m[layer] = True
        masks.append(m)
    probs = tracing.restore_sweep(params, jnp.broadcast_to(toks, (3, t)), eps, acts[site][:, 0],
                                  jnp.asarray(np.stack(masks)), y, cfg=cfg, site=site)
    np.testing.assert_allclose(np.asarray(probs), p_clean, rtol=1e-5)
    # nothing restored: noise must actually change the output (the test can fail)
    none = tracing.restore_sweep(params, jnp.broadcast_to(toks, (3, t)), eps, acts[site][:, 0],
                                 jnp.zeros((1, cfg.n_layers, t), bool), y, cfg=cfg, site=site)
    assert abs(float(none[0]) - p_clean) > 1e-6


@pytest.mark.parametrize("site,window", [("resid_post", 1), ("mlp_out", 2), ("attn_out", 1)])
def test_causal_trace_analytic_cells(model, site, window):
    cfg, params = model
    toks = np.array([11, 12, 13, 14, 15, 16, 17])
    y = 3
    res = tracing.causal_trace(params, cfg, toks, (2, 4), y, n_samples=4, site=site,
                               window=window, key=jax.random.PRNGKey(2), noise=1.0)
    assert res.probs.shape == (cfg.n_layers, len(toks))
    assert res.p_clean == pytest.approx(_p(params, cfg, toks, y), rel=1e-5)
    # positions before the subject are unaffected by the noise: restoring them is a no-op
    np.testing.assert_allclose(res.probs[:, :2], res.p_corrupt, rtol=1e-5)
    if site == "resid_post":  # the last layer's last position determines the output
        assert res.probs[-1, -1] == pytest.approx(res.p_clean, rel=1e-5)
    assert abs(res.p_corrupt - res.p_clean) > 1e-6


def test_activation_patching_and_validation(model):
    cfg, params = model
    clean = np.array([4, 8, 15, 16, 23])
    corrupt = np.array([4, 8, 99, 16, 23])
    res = tracing.activation_patching(params, cfg, clean, corrupt, 42)
    assert res.probs[:, :2] == pytest.approx(res.p_corrupt, rel=1e-5)
    assert res.probs[-1, -1] == pytest.approx(res.p_clean, rel=1e-5)
    assert abs(res.p_corrupt - res.p_clean) > 1e-7
    with pytest.raises(ValueError, match="subject_span"):
        tracing.causal_trace(params, cfg, clean, (3, 9), 1, key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="equal length"):
        tracing.activation_patching(params, cfg, clean, corrupt[:4], 1)


def test_window_masks():
    m = tracing.layer_window_masks(5, 3, 3).reshape(5, 3, 5, 3)
    assert m[0, 1, :, 1].tolist() == [True, True, True, False, False]
    assert m[2, 0, :, 0].tolist() == [False, True, True, True, False]
    assert m[4, 2, :, 2].tolist() == [False, False, False, True, True]
    assert m.sum() == 3 * (3 + 3 + 3 + 3 + 2)
