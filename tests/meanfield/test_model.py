"""E0 tests for the model, objectives and closed forms (spec 4.3, E0 items 1-4)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.meanfield import dynamics as dy
from jaxlm.meanfield import model as mf


def _setup(key, d=6, k=3, n=16, bias=True, kind="t2", m=4096):
    kt, kp, kx = jax.random.split(jax.random.PRNGKey(key), 3)
    teacher = mf.make_teacher(kt, d, k, kind, 3.0, dtype=np.float64)
    cfg = mf.ModelConfig(d=d, k=k, n_particles=n, bias=bias)
    parts = mf.init_particles(kp, cfg, jnp.float64)
    x = jax.random.normal(kx, (m, d), jnp.float64)
    return teacher, parts, x


@pytest.mark.parametrize("n", [2, 16, 100])
def test_closed_form_reduces_to_zfb(n):
    rng = np.random.default_rng(n)
    d = 5
    q = np.linalg.qr(rng.standard_normal((d, d)))[0]
    lam = q @ np.diag(rng.uniform(0.3, 2.0, d)) @ q.T
    with jax.enable_x64(True):
        mom = {
            "s_hh": jnp.asarray(lam),
            "s_fh": jnp.asarray(lam),
            "s_ff": jnp.asarray(lam),
            "m": jnp.asarray(2 * lam @ lam + np.trace(lam) * lam),  # E||x||^2 x x^T, Gaussian
        }
        gamma, _ = mf.icl_closed_form_moments(mom, n)
        zfb = np.linalg.inv((1 + 1 / n) * lam + np.trace(lam) / n * np.eye(d))
        np.testing.assert_allclose(np.asarray(gamma), zfb, rtol=0, atol=1e-12)


def test_closed_form_is_minimum_and_limit():
    with jax.enable_x64(True):
        teacher, parts, x = _setup(1)
        h, f = mf.features(parts, x), teacher(x)
        mom = mf.icl_moments(h, f)
        gamma, r = mf.icl_closed_form_moments(mom, 16, noise_var=0.1)
        np.testing.assert_allclose(mf.icl_risk_moments(mom, gamma, 16, 0.1), r, rtol=1e-10)
        rng = np.random.default_rng(0)
        for _ in range(5):
            delta = 1e-2 * jnp.asarray(rng.standard_normal(gamma.shape)) * jnp.abs(gamma).max()
            assert mf.icl_risk_moments(mom, gamma + delta, 16, 0.1) > r
        # n = inf equals the two-timescale loss L(mu); large n approaches it
        _, r_inf = mf.icl_closed_form_moments(mom, np.inf)
        np.testing.assert_allclose(r_inf, mf.loss_two_timescale(parts, x, f), rtol=1e-9)
        _, r_big = mf.icl_closed_form_moments(mom, 1e9)
        np.testing.assert_allclose(r_big, r_inf, rtol=1e-6)


def test_closed_form_matches_monte_carlo():
    """R_n(Gamma) from the 1.6 formula equals the MC ICL risk of explicit prompts."""
    with jax.enable_x64(True):
        teacher, parts, _ = _setup(2, d=6, k=3, n=16, kind="t1")
        xb = jax.random.normal(jax.random.PRNGKey(5), (400_000, 6), jnp.float64)
        mom = mf.icl_moments(mf.features(parts, xb), teacher(xb))
        n = 8
        gamma, _ = mf.icl_closed_form_moments(mom, n)
        prompts = mf.sample_prompts(jax.random.PRNGKey(6), teacher, 40_000, n, 0.0, jnp.float64)
        for g in (gamma, 1.3 * gamma):
            xc, xq = prompts["x_ctx"], prompts["x_q"]
            hc = mf.features(parts, xc.reshape(-1, 6)).reshape(xc.shape[0], n, -1)
            err = prompts["y_q"] - mf.icl_predict(hc, prompts["y_ctx"], mf.features(parts, xq), g)
            sq = 0.5 * np.asarray(err) ** 2
            mc, se = sq.mean(), sq.std() / np.sqrt(sq.size)
            exact = float(mf.icl_risk_moments(mom, g, n))
            assert abs(mc - exact) < 4 * se + 2e-3 * exact, (mc, exact, se)
            np.testing.assert_allclose(mf.loss_prompts(parts, g, prompts), mc, rtol=1e-10)


def test_inner_gamma_descent_converges_to_gamma_mu():
    with jax.enable_x64(True):
        teacher, parts, x = _setup(3, bias=False, kind="t1")
        f = teacher(x)
        # identity L_TF(mu, Gamma_mu) = L(mu) on a random population
        g_rand = mf.gamma_mu(mf.features(parts, x))
        np.testing.assert_allclose(
            mf.loss_joint(parts, g_rand, x, f), mf.loss_two_timescale(parts, x, f), rtol=1e-10
        )
        assert mf.loss_joint(parts, 0.9 * g_rand, x, f) > mf.loss_joint(parts, g_rand, x, f)
        # a well-conditioned population: teacher neurons plus random ones with small a
        mixed = {
            "a": jnp.concatenate([teacher.particles["a"], 0.3 * parts["a"]]),
            "w": jnp.concatenate([teacher.particles["w"], parts["w"]]),
        }
        h = mf.features(mixed, x)
        g_mu = mf.gamma_mu(h)
        s_hh, s_fh, _ = mf.moments(h, f)
        curv = np.linalg.eigvalsh(np.asarray(s_fh.T @ s_fh)).max()
        curv *= np.linalg.eigvalsh(np.asarray(s_hh)).max()
        gamma = mf.gamma_descent(h, f, jnp.zeros_like(g_mu), 1.0 / curv, 20_000)
        np.testing.assert_allclose(gamma, g_mu, rtol=1e-6, atol=1e-8 * jnp.abs(g_mu).max())
        # the moment-form step equals an autodiff gradient step on L_TF
        g0 = 0.5 * g_mu
        auto = g0 - 0.1 * jax.grad(mf.loss_joint, argnums=1)(mixed, g0, x, f)
        np.testing.assert_allclose(mf.gamma_descent(h, f, g0, 0.1, 1), auto, rtol=1e-10)


@pytest.mark.parametrize("bias", [False, True])
def test_velocity_equals_n_times_autodiff_gradient(bias):
    with jax.enable_x64(True):
        teacher, parts, x = _setup(4, bias=bias, kind="t2" if bias else "t1", n=12)
        f = teacher(x)
        n = parts["a"].shape[0]
        g = jax.grad(mf.loss_two_timescale)(parts, x, f, 0.0)
        v = mf.velocity(parts, x, f, 0.0)
        for name in parts:
            np.testing.assert_allclose(-n * g[name], v[name], rtol=1e-8, atol=1e-12)


def test_teachers_realizable_and_t2_even():
    with jax.enable_x64(True):
        teacher, _, x = _setup(5, d=8, k=3, kind="t2", m=8192)
        f = teacher(x)
        # T2 is even in z_j: f(x) == f(reflected x)
        u = jnp.asarray(teacher.u[0])
        xr = x - 2 * (x @ u)[:, None] * u[None, :]
        np.testing.assert_allclose(teacher(xr), f, atol=1e-12 * np.abs(np.asarray(f)).max())
        # the teacher measure itself (and any GL(k) image of it) has loss 0
        assert mf.loss_two_timescale(teacher.particles, x, f) < 1e-20
        m = jnp.asarray(np.random.default_rng(0).standard_normal((3, 3)))
        mixed = {**teacher.particles, "a": teacher.particles["a"] @ m}
        assert mf.loss_two_timescale(mixed, x, f) < 1e-18
        t1 = mf.make_teacher(jax.random.PRNGKey(0), 8, 3, "t1", 6.0, dtype=np.float64)
        z = x @ jnp.asarray(t1.u).T
        np.testing.assert_allclose(t1(x), jax.nn.sigmoid(6.0 * z), atol=1e-14)


def test_gl_invariance_and_cca_identity():
    with jax.enable_x64(True):
        teacher, parts, x = _setup(6)
        f = teacher(x)
        m = jnp.asarray(np.random.default_rng(1).standard_normal((3, 3)))
        loss = mf.loss_two_timescale(parts, x, f)
        np.testing.assert_allclose(
            mf.loss_two_timescale({**parts, "a": parts["a"] @ m}, x, f), loss, rtol=1e-9
        )
        # L = 1/2 tr(S_ff^{1/2} (I - C) S_ff^{1/2}): equal when S_ff ~ I scaled, check bounds
        rho2 = mf.cca_spectrum(mf.features(parts, x), f)
        assert np.all(rho2 > -1e-12) and np.all(rho2 < 1 + 1e-12)
        _, _, s_ff = mf.moments(f, f)
        ev = np.linalg.eigvalsh(np.asarray(s_ff))
        # (1 - rho_max^2) lambda_min(S_ff) <= 2L / k-ish bounds: check the sandwich
        assert 0.5 * ev.min() * np.sum(1 - rho2) - 1e-12 <= loss
        assert loss <= 0.5 * ev.max() * np.sum(1 - rho2) + 1e-12


def test_lsa_baseline_matches_spec_table_t2():
    with jax.enable_x64(True):
        teacher = mf.make_teacher(jax.random.PRNGKey(1), 20, 5, "t2", dtype=np.float64)
        x = jax.random.normal(jax.random.PRNGKey(0), (100_000, 20), jnp.float64)
        f = teacher(x)
        _, r_lsa = mf.icl_closed_form(mf.lsa_features(x), f, 256)
        _, r_true = mf.icl_closed_form(f, f, 256)
        assert abs(float(r_lsa) - 0.2722) < 0.006
        assert abs(float(r_true) - 0.0148) < 0.0015


def test_invalid_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="n_particles"):
        mf.init_particles(jax.random.PRNGKey(0), mf.ModelConfig(n_particles=0))
    with pytest.raises(ValueError, match="d"):
        mf.init_particles(jax.random.PRNGKey(0), mf.ModelConfig(d=0))
    with pytest.raises(ValueError, match="k <= d"):
        mf.make_teacher(jax.random.PRNGKey(0), 3, 5)
    with pytest.raises(ValueError, match="kind"):
        mf.make_teacher(jax.random.PRNGKey(0), 6, 2, "t3")
    bad = {"a": jnp.ones((4, 2)), "w": jnp.ones((5, 3))}
    with pytest.raises(ValueError, match="disagree on N"):
        mf.check_particles(bad)
    with pytest.raises(ValueError, match="N >= 1"):
        mf.check_particles({"a": jnp.ones((0, 2)), "w": jnp.ones((0, 3))})
    with pytest.raises(ValueError, match="expected d"):
        mf.check_particles({"a": jnp.ones((4, 2)), "w": jnp.ones((4, 3))}, d=5)
    with pytest.raises(ValueError, match="multiple of log_every"):
        dy.validate_flow(dy.FlowConfig(steps=10, log_every=3))
    with pytest.raises(ValueError, match="mode"):
        dy.validate_flow(dy.FlowConfig(mode="adam"))
