"""Tests for the particle Wasserstein gradient flow (E0 item 5 and the dynamics options)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.meanfield import dynamics as dy
from jaxlm.meanfield import model as mf


def _problem(n=16, d=6, k=3, m=1024, dtype=jnp.float32, bias=True):
    teacher = mf.make_teacher(jax.random.PRNGKey(0), d, k, "t2", dtype=np.dtype(dtype))
    mcfg = mf.ModelConfig(d=d, k=k, n_particles=n, bias=bias, ridge=0.0)
    x = jax.random.normal(jax.random.PRNGKey(1), (m, d), dtype)
    return teacher, mcfg, x


def test_energy_identity_small_steps():
    """(L_{t+1} - L_t)/eta -> -(1/N) sum ||V_j||^2 as eta -> 0, with O(eta) error."""
    with jax.enable_x64(True):
        teacher, mcfg, x = _problem(dtype=jnp.float64)
        st = dy.init_state(jax.random.PRNGKey(2), mcfg, x, dtype=jnp.float64)
        f = teacher(x)
        l0 = mf.loss_two_timescale(st.particles, x, f, 0.0)
        g = dy.flow_metrics(st, x, teacher, dy.FlowConfig(ridge=0.0))["grad_sq"]
        errs = []
        for eta in (1e-3, 1e-4):
            fc = dy.FlowConfig(eta=eta, ridge=0.0)
            st1, loss = dy.flow_step(st, x, teacher, mcfg, fc)
            np.testing.assert_allclose(loss, l0, rtol=1e-12)
            l1 = mf.loss_two_timescale(st1.particles, x, f, 0.0)
            errs.append(abs((l1 - l0) / eta + g) / g)
        assert errs[1] < 1e-2
        assert errs[1] < 0.2 * errs[0]  # first-order convergence in eta


def test_static_flow_decreases_loss_and_logs():
    teacher, mcfg, x = _problem(n=32)
    fc = dy.FlowConfig(eta=0.05, steps=200, log_every=20, ridge=1e-6)
    st = dy.init_state(jax.random.PRNGKey(3), mcfg, x)
    st2, met = dy.simulate(st, x, teacher, mcfg, fc)
    assert met["loss"].shape == (11,)
    np.testing.assert_allclose(met["time"][-1], 0.05 * 200, rtol=1e-5)  # float32 clock
    assert np.all(np.diff(np.asarray(met["loss"])) <= 1e-6)  # monotone descent
    assert met["loss"][-1] < 0.75 * met["loss"][0]
    assert int(st2.step) == 200


def test_shard_map_population_matches_single_device_vmap():
    assert len(jax.devices()) >= 4
    teacher, mcfg, x = _problem(n=8, m=256)
    fc = dy.FlowConfig(eta=0.05, steps=20, log_every=10, fresh_batch=True, noise=1e-3)
    keys = jax.random.split(jax.random.PRNGKey(4), 4)
    states = dy.init_population(keys, mcfg, x)
    out4, met4 = dy.run_population(states, x, teacher, mcfg, fc, mesh=dy.population_mesh(4))
    out1, met1 = dy.run_population(states, x, teacher, mcfg, fc, mesh=dy.population_mesh(1))
    assert met4["loss"].shape == (4, 3)
    np.testing.assert_allclose(met4["loss"], met1["loss"], rtol=1e-5)
    np.testing.assert_allclose(out4.particles["w"], out1.particles["w"], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="divisible"):
        dy.run_population(
            jax.tree.map(lambda z: z[:3], states), x, teacher, mcfg, fc,
            mesh=dy.population_mesh(2),
        )


def test_joint_mode_with_exact_inner_tracks_static():
    """Joint GD whose inner Gamma loop converges behaves like the static two-timescale flow."""
    with jax.enable_x64(True):
        teacher, mcfg, x = _problem(n=16, dtype=jnp.float64, bias=False, k=2, d=4)
        teacher = mf.make_teacher(jax.random.PRNGKey(0), 4, 2, "t1", dtype=np.float64)
        st = dy.init_state(jax.random.PRNGKey(5), mcfg, x, dtype=jnp.float64)
        f = teacher(x)
        h = mf.features(st.particles, x)
        s_hh, s_fh, _ = mf.moments(h, f)
        curv = np.linalg.eigvalsh(np.asarray(s_fh.T @ s_fh)).max()
        curv *= np.linalg.eigvalsh(np.asarray(s_hh)).max()
        eta = 1e-3
        static = dy.FlowConfig(eta=eta, steps=10, log_every=10, ridge=0.0)
        joint = dataclasses.replace(
            static, mode="joint", kappa=0.5 / curv / eta, inner_steps=2000, gamma_precond=False
        )
        _, ms = dy.simulate(st, x, teacher, mcfg, static)
        _, mj = dy.simulate(st, x, teacher, mcfg, joint)
        np.testing.assert_allclose(mj["loss"], ms["loss"], rtol=1e-3)
        assert mj["gamma_err"][-1] < 0.05


def test_prompt_mode_runs_and_updates_gamma():
    teacher, mcfg, x = _problem(n=16, m=64)
    fc = dy.FlowConfig(mode="prompt", eta=0.01, steps=4, log_every=2, prompt_len=8,
                       prompts_per_step=16, kappa=10.0)
    st = dy.init_state(jax.random.PRNGKey(6), mcfg, x)
    st2, met = dy.simulate(st, x, teacher, mcfg, fc)
    assert np.all(np.isfinite(np.asarray(met["train_loss"])))
    rel = np.linalg.norm(st2.gamma - st.gamma) / np.linalg.norm(st.gamma)
    assert rel > 1e-4


def test_langevin_noise_and_birth_death():
    teacher, mcfg, x = _problem(n=4000, m=64)
    st = dy.init_state(jax.random.PRNGKey(7), mcfg, x)
    base = dy.FlowConfig(eta=0.01)
    s0, _ = dy.flow_step(st, x, teacher, mcfg, base)
    lam = 0.5
    s1, _ = dy.flow_step(st, x, teacher, mcfg, dataclasses.replace(base, langevin=lam))
    diff = np.asarray(s1.particles["w"] - s0.particles["w"])
    np.testing.assert_allclose(diff.std(), np.sqrt(2 * lam * 0.01), rtol=0.03)
    bd = dataclasses.replace(base, birth_death_every=1, birth_death_frac=0.25, birth_a_scale=0.0)
    s2, _ = dy.flow_step(st, x, teacher, mcfg, bd)
    replaced = np.asarray(np.any(s2.particles["w"] != s0.particles["w"], axis=1))
    assert 0.2 < replaced.mean() < 0.3
    np.testing.assert_array_equal(np.asarray(s2.particles["a"])[replaced], 0.0)


def test_gamma_newton_step_relaxes_at_unit_rate():
    """Newton-preconditioned Gamma flow: Gamma - Gamma_mu shrinks by exactly (1 - rate)."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(8)
        h = jnp.asarray(rng.standard_normal((400, 3)) @ rng.standard_normal((3, 3)))
        f = jnp.asarray(np.tanh(np.asarray(h) @ rng.standard_normal((3, 3))) + 0.3)
        g_mu = np.linalg.inv(np.asarray(h.T @ h / 400))
        g0 = jnp.asarray(rng.standard_normal((3, 3)))
        g1 = dy._gamma_newton_step(h, f, g0, 0.3, 1e-12)
        np.testing.assert_allclose(g1 - g_mu, 0.7 * (np.asarray(g0) - g_mu), rtol=1e-6, atol=1e-9)


def test_joint_and_prompt_modes_stay_finite_and_decrease():
    """E3/E4 regression: at the spec's eta the joint flow is unstable (eta * lambda_max > 2);
    at the curvature-limited adaptive step joint GD and prompt SGD stay finite and decrease."""
    from jaxlm.meanfield import landscape as ls

    teacher, mcfg, x = _problem(n=12, m=256)
    f = teacher(x)
    st = dy.init_state(jax.random.PRNGKey(9), mcfg, x)
    lam = ls.top_curvature(lambda q: mf.loss_joint(q, st.gamma, x, f), st.particles, 12)
    lam_s = ls.top_curvature(lambda q: mf.loss_two_timescale(q, x, f, 1e-6), st.particles, 12)
    assert lam > 20 * lam_s and 0.1 * lam > 2  # the stiffness that made E3 diverge
    eta = ls.stable_eta(lam, 0.1, 0.5)
    fc = dy.FlowConfig(mode="joint", eta=eta, steps=200, log_every=40, kappa=10.0,
                       gamma_newton=True, adaptive=0.5)
    _, met = dy.simulate(st, x, teacher, mcfg, fc)
    loss_tf = np.asarray(met["loss_tf"])
    assert np.all(np.isfinite(loss_tf)) and loss_tf[-1] < loss_tf[0]
    assert np.all(np.asarray(met["eta"][1:]) <= eta * (1 + 1e-6))
    # finite prompts: Gamma starts at Gamma*_n(mu_0); the Gamma-SGD arm and the exact-Gamma arm
    fp = dy.FlowConfig(mode="prompt_static", eta=0.05, steps=150, log_every=50, prompt_len=16,
                       prompts_per_step=32, kappa=10.0, adaptive=0.5)
    st_n = st.replace(gamma=dy.prompt_gamma_star(st.particles, teacher, x, fp))
    _, met = dy.simulate(st_n, x, teacher, mcfg, fp)
    risk = np.asarray(met["loss_tf"])  # exact R_n(mu, Gamma) on the batch
    assert np.all(np.isfinite(risk)) and risk[-1] < risk[0], risk
    # Gamma by SGD (kappa * eta = 0.1): noisy, but bounded (it used to reach NaN in ~20 steps)
    _, met = dy.simulate(st_n, x, teacher, mcfg, dataclasses.replace(fp, mode="prompt", eta=0.01))
    risk_j = np.asarray(met["loss_tf"])
    assert np.all(np.isfinite(risk_j)) and risk_j.max() < 1.5 * risk_j[0], risk_j
