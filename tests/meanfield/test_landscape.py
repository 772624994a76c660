"""Tests for HVPs, Lanczos, the saddle construction and the homotopy curvature (E0 item 6)."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.meanfield import landscape as ls
from jaxlm.meanfield import model as mf


def _small(n=6, d=4, k=2, m=512, bias=True, seed=0):
    teacher = mf.make_teacher(jax.random.PRNGKey(seed), d, k, "t2", dtype=np.float64)
    parts = mf.init_particles(
        jax.random.PRNGKey(seed + 1), mf.ModelConfig(d=d, k=k, n_particles=n, bias=bias),
        jnp.float64,
    )
    x = jax.random.normal(jax.random.PRNGKey(seed + 2), (m, d), jnp.float64)
    return teacher, parts, x


def test_hvp_matches_finite_differences():
    with jax.enable_x64(True):
        teacher, parts, x = _small()
        f = teacher(x)
        loss = lambda p: mf.loss_two_timescale(p, x, f, 1e-6)
        rng = np.random.default_rng(0)
        v = jax.tree.map(lambda z: jnp.asarray(rng.standard_normal(z.shape)), parts)
        hv = ls.hvp(loss, parts, v)
        eps = 1e-5
        gp = jax.grad(loss)(jax.tree.map(lambda p, d: p + eps * d, parts, v))
        gm = jax.grad(loss)(jax.tree.map(lambda p, d: p - eps * d, parts, v))
        for name in parts:
            fd = (gp[name] - gm[name]) / (2 * eps)
            np.testing.assert_allclose(hv[name], fd, rtol=1e-5, atol=1e-8 * np.abs(fd).max())


def test_lanczos_matches_dense_eigh():
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        a = rng.standard_normal((80, 80))
        a = a + a.T
        mat = jnp.asarray(a)
        ev = np.linalg.eigvalsh(a)
        full, _ = ls.lanczos(lambda u: mat @ u, jnp.asarray(rng.standard_normal(80)), 80)
        np.testing.assert_allclose(np.asarray(full), ev, atol=1e-8)
        part, vecs = ls.lanczos(lambda u: mat @ u, jnp.asarray(rng.standard_normal(80)), 50)
        np.testing.assert_allclose([part[0], part[-1]], [ev[0], ev[-1]], rtol=1e-6)
        resid = a @ np.asarray(vecs[0]) - float(part[0]) * np.asarray(vecs[0])
        assert np.linalg.norm(resid) < 1e-4


def test_hessian_extremes_match_dense_hessian():
    with jax.enable_x64(True):
        teacher, parts, x = _small(n=5, d=3, k=2, m=256)
        f = teacher(x)
        n = 5
        flat, unravel = jax.flatten_util.ravel_pytree(parts)
        dense = jax.hessian(lambda z: mf.loss_two_timescale(unravel(z), x, f))(flat)
        ev = np.linalg.eigvalsh(n * np.asarray(dense))
        out = ls.hessian_extremes(parts, x, f, n_eig=2, tol=1e-12)
        np.testing.assert_allclose(out["smallest"], ev[:2], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(out["largest"], ev[::-1][:2], rtol=1e-6)
        matvec, _, _ = ls.flat_hvp(lambda p: mf.loss_two_timescale(p, x, f), parts, n)
        v = out["v_min"]
        np.testing.assert_allclose(np.asarray(matvec(jnp.asarray(v))), ev[0] * v, atol=1e-8)


def test_antithetic_batch_keeps_restricted_support_invariant():
    with jax.enable_x64(True):
        teacher, parts, xh = _small(n=16, d=6, k=3, m=1024, seed=3)
        u = jnp.asarray(teacher.u[-1])
        x = ls.antithetic_batch(xh, u)
        f = teacher(x)
        p = ls.restrict_support(parts, u)
        np.testing.assert_allclose(p["w"] @ u, 0.0, atol=1e-13 * np.abs(np.asarray(p["w"])).max())
        g = jax.grad(mf.loss_two_timescale)(p, x, f, 1e-6)
        along = np.abs(np.asarray(g["w"] @ u)).max()
        assert along < 1e-12 * np.abs(np.asarray(g["w"])).max()
        # generic batch: the restricted subspace is not invariant
        xg = jnp.concatenate([xh, xh[::-1] * 1.1])
        gg = jax.grad(mf.loss_two_timescale)(p, xg, teacher(xg), 1e-6)
        assert np.abs(np.asarray(gg["w"] @ u)).max() > 1e-6
        q = ls.perturb_along(p, u, 1e-3, jax.random.PRNGKey(0))
        np.testing.assert_allclose(np.abs(np.asarray(q["w"] @ u)), 1e-3, rtol=1e-9)


def test_homotopy_curvature_matches_finite_differences():
    with jax.enable_x64(True):
        teacher, parts, x = _small(seed=5)
        f = teacher(x)
        h = mf.features(parts, x)
        c = 0.1
        curv = float(ls.homotopy_curvature(h, f, f, c))

        def l(s):
            return float(mf.loss_from_features((1 - s) * h + s * c * f, f))

        s = 1e-4
        fd = (l(s) - 2 * l(0.0) + l(-s)) / s**2
        np.testing.assert_allclose(curv, fd, rtol=1e-4)


def test_fits_on_synthetic_data():
    loss = np.logspace(-5, -1, 30)
    fit = ls.fit_power_law(loss, 3.0 * loss**1.5)
    np.testing.assert_allclose([fit["p"], fit["c"], fit["r2"]], [1.5, 3.0, 1.0], rtol=1e-8)
    eps = np.array([1e-8, 1e-6, 1e-4])
    t = 2.5 * np.log(1 / eps) + 4.0
    esc = ls.fit_escape_slope(eps, t)
    np.testing.assert_allclose([esc["slope"], esc["const"]], [2.5, 4.0], rtol=1e-8)
    times = np.arange(5.0)
    assert ls.plateau_time(times, np.array([1, 1, 0.5, 0.1, 0.01]), 0.3) > 2.0
    assert ls.plateau_time(times, np.ones(5), 0.3) == float("inf")


def test_e5_saddle_is_exactly_stationary_with_transport_escape():
    """The E5 saddle: G ~ 0 in float64, lambda_min(N Hess) < 0 with a pure u_k-transport
    eigenvector, and loss 1/2 Var(phi) of the missing feature on the crossed batch."""
    from experiments.meanfield_icl import experiment as ex

    cfg = ex.PRESETS.get("full_test")
    with jax.enable_x64(True):
        teacher = ex._teacher(cfg, "t2", np.float64)
        u = jnp.asarray(teacher.u[-1], jnp.float64)
        x = ex.saddle_batch(cfg, u)
        f = teacher(x)
        parts = ex.build_saddle(cfg, teacher)
        assert float(ls.grad_sq(parts, x, f)) < 1e-26
        phi = np.asarray(f[:, -1])
        np.testing.assert_allclose(mf.loss_two_timescale(parts, x, f), 0.5 * phi.var(), rtol=1e-8)
        ext = ls.hessian_extremes(parts, x, f, n_eig=2, tol=1e-10)
        assert ext["smallest"][0] < -1e-2
        v = jax.flatten_util.ravel_pytree(parts)[1](jnp.asarray(ext["v_min"]))
        assert float(jnp.linalg.norm(v["w"] @ u)) > 0.99  # escape = transport along u_k
