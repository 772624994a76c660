"""Experiments E1-E7 of the meanfield_icl spec: drivers and paper presets (mechanisms in jaxlm.meanfield).

Every ``run_eX(cfg, bar=None)`` returns a dict of plain numpy / float results that the
entrypoint plots and the reproduction entry turns into a report section. Configs are frozen
dataclasses registered in ``PRESETS`` (``full``, ``quick`` and a tiny ``*_test`` twin each).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from jaxlm.meanfield import dynamics as dy
from jaxlm.meanfield import landscape as ls
from jaxlm.meanfield import model as mf
from jaxlm.utils.config import Registry


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Sizes of E1-E6 (spec section 4). Times are t = eta * step."""

    d: int = 20
    k: int = 5
    teachers: tuple[str, ...] = ("t2", "t1")
    s0: float = 3.0
    seed: int = 0
    # E1 / E2: static two-timescale WGF, N sweep
    n_particles: tuple[int, ...] = (64, 256, 1024)
    seeds: int = 5
    batch: int = 4096
    eval_batch: int = 65536
    eta: float = 0.1
    steps: int = 10000
    log_every: int = 100
    ridge: float = 1e-6
    # E2 prompt lengths for the closed-form ICL table
    n_icl: tuple[int, ...] = (16, 64, 256, 1024)
    # E3: joint GD vs static, both at the curvature-limited step (see dynamics docstring)
    e3_particles: int = 32
    e3_batch: int = 1024
    e3_time: float = 16.0
    e3_safety: float = 0.5
    e3_logs: int = 50
    kappas: tuple[float, ...] = (1.0, 10.0, 100.0)
    # E4: finite-prompt SGD
    e4_particles: int = 256
    e4_prompt_len: int = 64
    e4_prompts: int = 32
    e4_steps: int = 20000
    e4_eta: float = 0.1
    e4_kappa: float = 10.0
    e4_joint_steps: int = 4000  # short joint-Gamma (kappa) arm at the curvature-limited step
    # E5 / E6: saddles and Hessian spectra (float64)
    e5_particles: int = 16  # 2(k-1) teacher neurons + the rest "constant" neurons
    e5_batch: int = 4096  # = (points in u-perp) * e5_z
    e5_z: int = 16  # symmetric z-values of the crossed antithetic batch
    e5_bias: float = -2.5  # bias of the constant neurons (b < 0: sigma'' > 0, a strict saddle)
    e5_bias_spread: float = 0.5  # their biases spread over e5_bias +- this (distinct particles)
    e5_eta: float = 0.1
    e5_steps: int = 4000
    e5_eps: tuple[float, ...] = (1e-10, 1e-8, 1e-6, 1e-4, 1e-2)
    e5_linear_eps: float = 1e-3  # eps above this are outside the linear regime (not fitted)
    e6_particles: int = 64
    e6_steps: int = 3000
    e6_every: int = 200
    lanczos_m: int = 80


PRESETS: Registry[ExperimentConfig] = Registry("meanfield experiment")
PRESETS.add("full", ExperimentConfig())
PRESETS.add(
    "quick",
    ExperimentConfig(
        teachers=("t2",), n_particles=(64, 256), seeds=5, batch=2048, eval_batch=16384,
        steps=2000, log_every=50, n_icl=(16, 64, 256, 1024), e3_particles=32, e3_batch=512,
        e3_time=8.0, e3_logs=40, e4_particles=128, e4_steps=1500, e4_prompts=32, e4_eta=0.05,
        e4_joint_steps=500, e5_particles=16, e5_batch=2048, e5_steps=2500, e6_particles=32,
        e6_steps=1200, e6_every=200, lanczos_m=60,
    ),
)
PRESETS.add(
    "full_test",
    ExperimentConfig(
        d=6, k=2, teachers=("t2",), n_particles=(8, 16), seeds=2, batch=256, eval_batch=1024,
        steps=40, log_every=10, n_icl=(16, 256), e3_particles=8, kappas=(1.0, 10.0),
        e3_batch=256, e3_time=0.2, e3_logs=5, e4_joint_steps=40,
        e4_particles=8, e4_steps=20, e4_prompt_len=16, e4_prompts=4, e5_particles=6,
        e5_batch=256, e5_steps=40, e5_eps=(1e-6, 1e-2), e6_particles=8,
        e6_steps=40, e6_every=20, lanczos_m=10,
    ),
)
PRESETS.add("quick_test", PRESETS.get("full_test"))


def validate(cfg: ExperimentConfig) -> None:
    """Raises ValueError naming a bad experiment field and the fix (before compiling)."""
    if cfg.k > cfg.d or cfg.k < 2:
        raise ValueError(f"need 2 <= k <= d, got k={cfg.k}, d={cfg.d}")
    for t in cfg.teachers:
        if t not in ("t1", "t2"):
            raise ValueError(f"teachers must be t1/t2, got {t!r}")
    if min(cfg.n_particles) < 1 or cfg.seeds < 1:
        raise ValueError("n_particles entries and seeds must be >= 1")
    if cfg.e3_time <= 0 or cfg.e3_logs < 1 or not 0 < cfg.e3_safety < 2:
        raise ValueError("need e3_time > 0, e3_logs >= 1 and 0 < e3_safety < 2 (eta*lambda_max)")
    for steps, name in ((cfg.steps, "steps"), (cfg.e4_joint_steps, "e4_joint_steps"),
                        (cfg.e4_steps, "e4_steps"), (cfg.e5_steps, "e5_steps")):
        if steps % cfg.log_every:
            raise ValueError(f"{name}={steps} must be a multiple of log_every={cfg.log_every}")
    if cfg.e5_particles <= 2 * (cfg.k - 1) or cfg.e5_z < 2 or cfg.e5_z % 2 \
            or cfg.e5_batch % cfg.e5_z:
        raise ValueError(
            f"E5 needs e5_particles > 2(k-1) = {2 * (cfg.k - 1)} (teacher + constant neurons), "
            "an even e5_z >= 2 and e5_batch divisible by e5_z"
        )
    if cfg.e6_steps % cfg.e6_every or cfg.e6_every % cfg.log_every:
        raise ValueError("e6_steps must be a multiple of e6_every, itself a multiple of log_every")


def _teacher(cfg: ExperimentConfig, kind: str, dtype=np.float32) -> mf.Teacher:
    return mf.make_teacher(jax.random.PRNGKey(cfg.seed + 1), cfg.d, cfg.k, kind, cfg.s0, dtype)


def _model(cfg: ExperimentConfig, kind: str, n: int, ridge: float | None = None):
    return mf.ModelConfig(
        d=cfg.d, k=cfg.k, n_particles=n, bias=(kind == "t2"),
        ridge=cfg.ridge if ridge is None else ridge,
    )


def _np(tree):
    return jax.tree.map(np.asarray, tree)


def _tick(bar, n=1):
    if bar is not None:
        bar.update(n)


# ----------------------------------------------------------------------------- E1 + E2


def run_e1(cfg: ExperimentConfig, bar=None) -> dict:
    """E1 (+E2 tables): static two-timescale WGF for every teacher and N, ``seeds`` seeds each.

    Returns:
        {teacher: {N: {"metrics": {name: [seeds, logs]}, "eval_loss": [seeds],
        "eval_cca": [seeds, k], "icl": {...}, "seconds": float}}, "baselines": {...}}.
    """
    out: dict = {}
    x_eval = jax.random.normal(jax.random.PRNGKey(cfg.seed + 7), (cfg.eval_batch, cfg.d))
    for kind in cfg.teachers:
        teacher = _teacher(cfg, kind)
        f_eval = teacher(x_eval)
        res: dict = {"baselines": _icl_baselines(cfg, x_eval, f_eval)}
        for n in cfg.n_particles:
            mcfg = _model(cfg, kind, n)
            fcfg = dy.FlowConfig(
                eta=cfg.eta, steps=cfg.steps, log_every=cfg.log_every, batch=cfg.batch,
                ridge=cfg.ridge,
            )
            x = jax.random.normal(jax.random.PRNGKey(cfg.seed + 2), (cfg.batch, cfg.d))
            keys = jax.random.split(jax.random.PRNGKey(cfg.seed + 100 + n), cfg.seeds)
            states = dy.init_population(keys, mcfg, x)
            t0 = time.perf_counter()
            final, met = dy.run_population(states, x, teacher, mcfg, fcfg)
            met = _np(met)
            secs = time.perf_counter() - t0
            evl, cca, icl, icl0, l0 = [], [], [], [], []
            for s in range(cfg.seeds):
                p = jax.tree.map(lambda z, s=s: z[s], final.particles)
                p0 = jax.tree.map(lambda z, s=s: z[s], states.particles)
                h, h0 = mf.features(p, x_eval), mf.features(p0, x_eval)
                evl.append(float(mf.loss_from_features(h, f_eval, cfg.ridge)))
                l0.append(float(mf.loss_from_features(h0, f_eval, cfg.ridge)))
                cca.append(np.asarray(mf.cca_spectrum(h, f_eval)))
                mom, mom0 = mf.icl_moments(h, f_eval), mf.icl_moments(h0, f_eval)
                icl.append([float(mf.icl_closed_form_moments(mom, m)[1]) for m in cfg.n_icl])
                icl0.append([float(mf.icl_closed_form_moments(mom0, m)[1]) for m in cfg.n_icl])
            res[n] = {
                "metrics": met, "eval_loss": np.array(evl), "eval_loss0": np.array(l0),
                "eval_cca": np.array(cca), "icl": np.array(icl), "icl_frozen": np.array(icl0),
                "seconds": secs, "steps_per_s": cfg.steps * cfg.seeds / secs,
                "power_law": ls.fit_power_law(
                    met["loss"][:, 1:], met["grad_sq"][:, 1:], hi=0.5 * float(met["loss"][:, 0].min())
                ),
            }
            _tick(bar)
        out[kind] = res
    return out


def _icl_baselines(cfg, x_eval, f_eval) -> dict:
    """Closed-form rows: true features and LSA on (x, 1), for each n in cfg.n_icl and inf."""
    mom_t = mf.icl_moments(f_eval, f_eval)
    mom_l = mf.icl_moments(mf.lsa_features(x_eval), f_eval)
    ns = list(cfg.n_icl) + [np.inf]
    return {
        "n": ns,
        "true_feats": [float(mf.icl_closed_form_moments(mom_t, n)[1]) for n in ns],
        "lsa_x1": [float(mf.icl_closed_form_moments(mom_l, n)[1]) for n in ns],
    }


# ----------------------------------------------------------------------------- E3


def run_e3(cfg: ExperimentConfig, bar=None) -> dict:
    """E3: joint GD on (mu, Gamma) with kappa in cfg.kappas against exact Gamma_mu (static).

    Same init, seed and batch for every run; teacher = cfg.teachers[0]. The joint objective is
    ~100-1000x stiffer in mu than L(mu) (module docstring of ``dynamics``), so the spec's
    eta = 0.1 diverges. Every joint run starts at eta_0 = e3_safety / lambda_max(N Hess_mu
    L_TF(mu_0, Gamma_mu0)) and re-chooses eta = e3_safety / |lambda|_max every chunk (the
    curvature jumps ~6x when a feature is learned). Gamma follows the Newton-preconditioned
    flow (relaxation to Gamma_mu at rate kappa); one extra run uses the trace-normalised plain
    GD of Gamma at kappa = 10 for comparison. The static run uses the fixed step eta_0.

    Returns:
        {"static": metrics, "kappa=<k>": metrics, "kappa=10 (GD)": metrics, "info": {...}}
        with metrics as in ``dynamics.run_flow`` plus ``excess`` = L_TF - L.
    """
    kind = cfg.teachers[0]
    teacher = _teacher(cfg, kind)
    mcfg = _model(cfg, kind, cfg.e3_particles)
    x = jax.random.normal(jax.random.PRNGKey(cfg.seed + 3), (cfg.e3_batch, cfg.d))
    st = dy.init_state(jax.random.PRNGKey(cfg.seed + 30), mcfg, x)
    f = teacher(x)
    n = cfg.e3_particles
    lam_j = ls.top_curvature(lambda q: mf.loss_joint(q, st.gamma, x, f), st.particles, n)
    lam_s = ls.top_curvature(
        lambda q: mf.loss_two_timescale(q, x, f, cfg.ridge), st.particles, n
    )
    eta = ls.stable_eta(lam_j, cfg.eta, cfg.e3_safety)
    log_every = max(1, int(np.ceil(cfg.e3_time / eta / cfg.e3_logs)))
    steps = log_every * cfg.e3_logs
    base = dy.FlowConfig(eta=eta, steps=steps, log_every=log_every, batch=cfg.e3_batch,
                         ridge=cfg.ridge)
    out = {}
    _, out["static"] = dy.simulate(st, x, teacher, mcfg, base)
    _tick(bar)
    joint = dataclasses.replace(base, mode="joint", adaptive=cfg.e3_safety)
    runs = [(f"kappa={kap:g}", dataclasses.replace(joint, kappa=kap, gamma_newton=True))
            for kap in cfg.kappas]
    runs.append(("kappa=10 (GD)", dataclasses.replace(joint, kappa=10.0)))
    for name, fc in runs:
        _, out[name] = dy.simulate(st, x, teacher, mcfg, fc)
        _tick(bar)
    out = _np(out)
    for met in out.values():
        met["excess"] = met["loss_tf"] - met["loss"]
    out["info"] = {"eta0": eta, "steps": steps, "lambda_max_joint": lam_j,
                   "lambda_max_static": lam_s, "eta_spec": cfg.eta,
                   "eta_spec_times_lambda": cfg.eta * lam_j,
                   "min_eta": {k: float(np.min(v["eta"][1:])) for k, v in out.items()}}
    return out


def e3_gap(static: dict, run: dict, key: str = "loss_tf") -> float:
    """max |log L_run(t) - log L_static(t)| over the common time range (interpolated)."""
    t_end = min(static["time"][-1], run["time"][-1])
    t = np.linspace(0.0, t_end, 200)
    a = np.interp(t, static["time"], np.log(static[key]))
    b = np.interp(t, run["time"], np.log(run[key]))
    return float(np.max(np.abs(a - b)))


# ----------------------------------------------------------------------------- E4


def run_e4(cfg: ExperimentConfig, bar=None) -> dict:
    """E4: finite-prompt SGD on fresh prompts every step, then ICL risk at every n_test.

    Main arm ("prompt_static"): Gamma = Gamma*_n(mu) from moments on a fixed x-batch at every
    step (the two-timescale limit at finite n; the particle gradient is that of R*_n(mu)),
    at the step ``e4_eta``. Joint arm ("prompt", Gamma by SGD with rate kappa = e4_kappa),
    started at Gamma*_n(mu_0) and run ``e4_joint_steps`` at the curvature-limited adaptive
    step with kappa * eta <= 0.1 (a stability check over a short window, not a converged run).

    Returns:
        dict with training metrics of both arms and, for each n_test, the ICL risk with the
        learned Gamma and with Gamma*_n refit by the closed form, next to the true-features
        and LSA(x,1) rows.
    """
    kind = cfg.teachers[0]
    teacher = _teacher(cfg, kind)
    mcfg = _model(cfg, kind, cfg.e4_particles)
    x = jax.random.normal(jax.random.PRNGKey(cfg.seed + 4), (cfg.batch, cfg.d))
    fc = dy.FlowConfig(
        mode="prompt_static", eta=cfg.e4_eta, steps=cfg.e4_steps, log_every=cfg.log_every,
        prompt_len=cfg.e4_prompt_len, prompts_per_step=cfg.e4_prompts, kappa=cfg.e4_kappa,
        ridge=cfg.ridge,
    )
    st0 = dy.init_state(jax.random.PRNGKey(cfg.seed + 41), mcfg, x)
    # start at the exact finite-n optimum Gamma*_n(mu_0): ~60x smaller than Gamma_mu (n = inf)
    # at the mean-field init, since A_n = B + (M - B)/n is dominated by M/n when S_fh is small
    st0 = st0.replace(gamma=dy.prompt_gamma_star(st0.particles, teacher, x, fc))
    t0 = time.perf_counter()
    st, met = dy.simulate(st0, x, teacher, mcfg, fc)
    secs = time.perf_counter() - t0
    _tick(bar)
    # joint arm: Gamma by SGD, curvature-limited adaptive step
    f = teacher(x)
    lam = ls.top_curvature(lambda q: dy._risk_n(q, st0.gamma, x, f, fc), st0.particles,
                           cfg.e4_particles)
    # and kappa * eta <= 0.1: each Gamma SGD step then averages over >= ~10 prompt batches
    # (a normalised step of 1 jumps to the batch's own least-squares Gamma, which diverges)
    eta_j = ls.stable_eta(lam, min(cfg.e4_eta, 0.1 / cfg.e4_kappa), cfg.e3_safety)
    fj = dataclasses.replace(fc, mode="prompt", eta=eta_j, steps=cfg.e4_joint_steps,
                             adaptive=cfg.e3_safety)
    _, met_j = dy.simulate(st0, x, teacher, mcfg, fj)
    _tick(bar)
    x_eval = jax.random.normal(jax.random.PRNGKey(cfg.seed + 7), (cfg.eval_batch, cfg.d))
    f_eval = teacher(x_eval)
    h = mf.features(st.particles, x_eval)
    mom = mf.icl_moments(h, f_eval)
    base = _icl_baselines(cfg, x_eval, f_eval)
    learned = [float(mf.icl_risk_moments(mom, st.gamma, n)) for n in cfg.n_icl]
    refit = [float(mf.icl_closed_form_moments(mom, n)[1]) for n in cfg.n_icl]
    h0 = mf.features(st0.particles, x_eval)
    refit0 = [float(mf.icl_closed_form_moments(mf.icl_moments(h0, f_eval), n)[1])
              for n in cfg.n_icl]
    keep = ("time", "train_loss", "loss", "loss_tf", "eta")
    return {
        "metrics": _np({k: v for k, v in met.items() if k in keep}),
        "metrics_joint": _np({k: v for k, v in met_j.items() if k in keep}),
        "joint_eta0": eta_j, "joint_lambda_max": lam,
        "n": list(cfg.n_icl), "learned_gamma": learned, "refit_gamma": refit,
        "refit_gamma_init": refit0,
        "true_feats": base["true_feats"][:-1], "lsa_x1": base["lsa_x1"][:-1],
        "loss_inf": float(mf.loss_from_features(h, f_eval, cfg.ridge)), "seconds": secs,
        "train_n": cfg.e4_prompt_len,
    }


# ----------------------------------------------------------------------------- E5 + E6


def saddle_batch(cfg: ExperimentConfig, u: jax.Array, dtype=jnp.float64) -> jax.Array:
    """Crossed antithetic batch {x_perp_i + z_j u}: M1 = e5_batch // e5_z points x_perp in
    u-perp times e5_z symmetric values +-z_j.

    On it every term odd in z = u.x cancels exactly, and any function of z averages
    independently of any function of x_perp (no finite-batch leakage of the missing feature
    into the restricted features, which made the old antithetic-only saddle non-stationary).

    Returns:
        x [M1 * e5_z, d].
    """
    m1 = cfg.e5_batch // cfg.e5_z
    xp = jax.random.normal(jax.random.PRNGKey(cfg.seed + 5), (m1, cfg.d), dtype)
    xp = xp - (xp @ u)[:, None] * u[None, :]
    zh = jax.random.normal(jax.random.PRNGKey(cfg.seed + 6), (cfg.e5_z // 2,), dtype)
    z = jnp.concatenate([zh, -zh])
    return (xp[:, None, :] + z[None, :, None] * u[None, None, :]).reshape(-1, cfg.d)


def build_saddle(cfg: ExperimentConfig, teacher: mf.Teacher) -> mf.Particles:
    """The exact support-restricted critical point of E5 (T2; float64 leaves).

    Particles: the 2(k-1) teacher neurons of features 1..k-1 (a scaled so h_j = f_j exactly)
    plus N - 2(k-1) "constant" neurons w = 0, b in e5_bias +- e5_bias_spread, a = e_k (feature
    k is the constant mean sigma(b_j)). Every w lies in u_k-perp. On ``saddle_batch`` the features 1..k-1 are fitted
    exactly and the residual of feature k is phi(z) - mean(phi), which averages to zero
    against every function of x_perp and every odd function of z, so every component of the
    first variation vanishes (G ~ 1e-30 in float64). Transporting the constant neurons along
    u_k with zero net displacement has curvature ~ sigma''(b) * a.g * E[(phi - mean) z^2] < 0
    for b < 0: a strict saddle whose unstable directions are pure transport.
    """
    k, d, n = cfg.k, cfg.d, cfg.e5_particles
    tp = {name: jnp.asarray(v, jnp.float64) for name, v in teacher.particles.items()}
    keep = np.array([j for j in range(2 * k) if j % k != k - 1])
    n_c = n - len(keep)
    return {
        "a": jnp.concatenate([tp["a"][keep] * n / (2 * k),
                              jnp.zeros((n_c, k), jnp.float64).at[:, k - 1].set(1.0)]),
        "w": jnp.concatenate([tp["w"][keep], jnp.zeros((n_c, d), jnp.float64)]),
        # distinct biases: identical particles get identical forces and can never split, so a
        # Dirac mass of constant neurons would only escape along exactly zero-sum kicks
        "b": jnp.concatenate([tp["b"][keep],
                              cfg.e5_bias + cfg.e5_bias_spread * jnp.linspace(-1.0, 1.0, n_c)]),
    }


def _u_block_min_eig(parts, x, f, u) -> float:
    """Smallest eigenvalue of N*Hess restricted to perturbations w_j += c_j u (N x N block).

    At the restricted saddle this block is invariant (cross terms are odd in u.x), so its
    smallest eigenvalue is the exponential escape rate of pure transport along u.
    """
    n = parts["a"].shape[0]
    matvec, flat, unravel = ls.flat_hvp(lambda p: mf.loss_two_timescale(p, x, f), parts, n)
    zeros = jax.tree.map(jnp.zeros_like, parts)
    cols = []
    for j in range(n):
        e_j = jax.flatten_util.ravel_pytree(dict(zeros, w=zeros["w"].at[j].set(u)))[0]
        cols.append(np.asarray(unravel(matvec(e_j))["w"] @ u))
    block = np.stack(cols, axis=1)
    return float(np.linalg.eigvalsh(0.5 * (block + block.T))[0])


def run_e5(cfg: ExperimentConfig, bar=None) -> dict:
    """E5: constructed saddle, certification, arm A (transport kicks), arm B, genericity.

    Runs in float64 (``jax.enable_x64``) except the float32 control.
    """
    with jax.enable_x64(True):
        return _run_e5(cfg, bar)


def _saddle_setup(cfg: ExperimentConfig):
    """The E5 saddle in float64 (call under ``jax.enable_x64``): (teacher, u (the missing
    feature's direction), x, f, particles, N, L_S)."""
    teacher = _teacher(cfg, "t2", np.float64)
    u = jnp.asarray(teacher.u[-1], jnp.float64)
    x = saddle_batch(cfg, u)
    f = teacher(x)
    parts = build_saddle(cfg, teacher)
    return teacher, u, x, f, parts, cfg.e5_particles, float(mf.loss_two_timescale(parts, x, f))


def _run_e5(cfg: ExperimentConfig, bar) -> dict:
    teacher, u, x, f, parts, n, l_s = _saddle_setup(cfg)
    g_s = float(ls.grad_sq(parts, x, f))
    ext = ls.hessian_extremes(parts, x, f, 0.0, n_eig=3, tol=1e-10)
    _tick(bar)
    flat, unravel = jax.flatten_util.ravel_pytree(parts)
    v_min = jnp.asarray(ext["v_min"])
    vmin_u_frac = float(jnp.linalg.norm(unravel(v_min)["w"] @ u))
    lam_u = _u_block_min_eig(parts, x, f, u)
    lam = float(ext["smallest"][0])
    _tick(bar)
    # homotopy (mixture) curvature toward the teacher, best scale c
    h, f_t = mf.features(parts, x), teacher(x)
    scales = np.logspace(-3, 1, 17)
    curv = [float(ls.homotopy_curvature(h, f_t, f, c)) for c in scales]

    mcfg = _model(cfg, "t2", n, ridge=0.0)
    eps_list = list(cfg.e5_eps)
    # arm A: eps along the escape eigenvector, scaled to L2(mu_N) norm eps: (1/N)|d|^2 = eps^2
    inits = [unravel(flat + e * np.sqrt(n) * v_min) for e in eps_list]
    inits.append(parts)  # eps = 0, exact symmetric batch
    # arm B: 5% generic full-support particles with tiny a (density floor)
    n_b = max(1, n // 20)
    gen = mf.init_particles(jax.random.PRNGKey(cfg.seed + 70), mcfg, jnp.float64)
    # (replacing the last, "constant" neurons: the loss barely changes)
    arm_b = {name: leaf.at[-n_b:].set(gen[name][:n_b]) for name, leaf in parts.items()}
    arm_b["a"] = arm_b["a"].at[-n_b:].set(1e-3 * gen["a"][:n_b])
    inits.append(arm_b)
    fc = dy.FlowConfig(eta=cfg.e5_eta, steps=cfg.e5_steps, log_every=cfg.log_every, ridge=0.0)
    states = jax.tree.map(
        lambda *z: jnp.stack(z),
        *[dy.init_state(jax.random.PRNGKey(0), mcfg, x, particles=p, dtype=jnp.float64)
          for p in inits],
    )
    _, met = dy.run_population(states, x, teacher, mcfg, fc, mesh=dy.population_mesh(1))
    met = _np(met)
    _tick(bar)
    thr = 0.5 * l_s
    t_esc = [ls.plateau_time(met["time"][i], met["loss"][i], thr) for i in range(len(inits))]
    n_eps = len(eps_list)
    t_a = np.array(t_esc[:n_eps])
    # linear regime: eps small enough that the kick is still linear (drop eps > 1e-3)
    lin = np.array(eps_list) <= cfg.e5_linear_eps
    fit = ls.fit_escape_slope(np.array(eps_list)[lin], t_a[lin])
    # genericity controls: eps = 0 on a generic (non-symmetric) batch, and in float32
    xg = jax.random.normal(jax.random.PRNGKey(cfg.seed + 8), x.shape, jnp.float64)
    st_g = dy.init_state(jax.random.PRNGKey(0), mcfg, xg, particles=parts, dtype=jnp.float64)
    _, met_g = dy.simulate(st_g, xg, teacher, mcfg, fc)
    l_sg = float(mf.loss_two_timescale(parts, xg, teacher(xg)))
    g_sg = float(ls.grad_sq(parts, xg, teacher(xg)))
    t_gen = ls.plateau_time(np.asarray(met_g["time"]), np.asarray(met_g["loss"]), 0.5 * l_sg)
    p32 = jax.tree.map(lambda z: z.astype(jnp.float32), parts)
    x32 = x.astype(jnp.float32)
    t32 = mf.make_teacher(jax.random.PRNGKey(cfg.seed + 1), cfg.d, cfg.k, "t2", cfg.s0)
    st_32 = dy.init_state(jax.random.PRNGKey(0), mcfg, x32, particles=p32, dtype=jnp.float32)
    _, met_32 = dy.simulate(st_32, x32, t32, mcfg, fc)
    t_f32 = ls.plateau_time(np.asarray(met_32["time"]), np.asarray(met_32["loss"]), thr)
    _tick(bar)
    # continuous-time slope 1/|lambda|; the Euler map grows by (1 + eta |lambda|) per step
    pred = 1.0 / abs(lam) if lam < 0 else float("inf")
    pred_discrete = cfg.e5_eta / np.log1p(cfg.e5_eta * abs(lam)) if lam < 0 else float("inf")
    return {
        "L_S": l_s, "grad_sq_S": g_s, "grad_norm_S": float(np.sqrt(g_s / n)),
        "lambda_min": lam, "lambda_max": float(ext["largest"][0]),
        "smallest": ext["smallest"], "vmin_u_frac": vmin_u_frac, "lambda_u": lam_u,
        "homotopy_scales": scales, "homotopy_curv": np.array(curv),
        "eps": np.array(eps_list), "t_escape": t_a, "linear": lin,
        "t_escape_eps0": t_esc[n_eps], "t_escape_armB": t_esc[n_eps + 1],
        "t_escape_generic_batch": t_gen, "grad_sq_generic_batch": g_sg,
        "t_escape_float32": t_f32, "t_max": float(met["time"][0][-1]),
        "fit": fit, "predicted_slope": pred, "predicted_slope_discrete": float(pred_discrete),
        "eta": cfg.e5_eta,
        "metrics": {"time": met["time"][0], "loss": met["loss"]},
        "final_loss": met["loss"][:, -1],
    }


def run_e6(cfg: ExperimentConfig, bar=None) -> dict:
    """E6: lambda_min / lambda_max of N*Hess (JAX Lanczos) and G along a T2 trajectory (float64)."""
    with jax.enable_x64(True):
        teacher = _teacher(cfg, "t2", np.float64)
        mcfg = _model(cfg, "t2", cfg.e6_particles, ridge=0.0)
        x = jax.random.normal(jax.random.PRNGKey(cfg.seed + 6), (cfg.e5_batch, cfg.d),
                              jnp.float64)
        f = teacher(x)
        st = dy.init_state(jax.random.PRNGKey(cfg.seed + 61), mcfg, x, dtype=jnp.float64)
        fc = dy.FlowConfig(eta=cfg.eta, steps=cfg.e6_every, log_every=cfg.log_every, ridge=0.0)
        rows = []
        n = cfg.e6_particles
        for i in range(cfg.e6_steps // cfg.e6_every + 1):
            p = st.particles
            matvec, flat, _ = ls.flat_hvp(lambda q: mf.loss_two_timescale(q, x, f), p, n)
            v0 = jax.random.normal(jax.random.PRNGKey(i), flat.shape, jnp.float64)
            ev, _ = ls.lanczos(matvec, v0, min(cfg.lanczos_m, flat.shape[0]))
            rows.append({
                "time": cfg.eta * cfg.e6_every * i,
                "loss": float(mf.loss_two_timescale(p, x, f)),
                "grad_sq": float(ls.grad_sq(p, x, f)),
                "lambda_min": float(ev[0]), "lambda_max": float(ev[-1]),
            })
            if i < cfg.e6_steps // cfg.e6_every:
                st, _ = dy.simulate(st, x, teacher, mcfg, fc)
            _tick(bar)
        return {"rows": rows}


# ----------------------------------------------------------------------------- E7 (optional)


def run_e7(cfg: ExperimentConfig, bar=None, sigma: float = 1e-3) -> dict:
    """E7: perturbation strategies from the exact E5 saddle (float64).

    Arms: none; isotropic noise of std ``sigma`` on every coordinate at every step (left on);
    one isotropic kick at t = 0; one kick along the Lanczos eigenvector of lambda_min. Both
    one-shot kicks have the same L2(mu_N) norm sigma * sqrt(p) as one step of the noise.

    Returns:
        dict with per-arm escape time T (L < L_S / 2), final loss and the loss curves.
    """
    with jax.enable_x64(True):
        teacher, u, x, f, parts, n, l_s = _saddle_setup(cfg)
        ext = ls.hessian_extremes(parts, x, f, 0.0, n_eig=2, tol=1e-10)
        flat, unravel = jax.flatten_util.ravel_pytree(parts)
        p_dim = flat.shape[0] // n
        size = sigma * np.sqrt(p_dim) * np.sqrt(n)  # flat norm of an L2(mu_N) norm sigma*sqrt(p)
        iso = jax.random.normal(jax.random.PRNGKey(cfg.seed + 71), flat.shape, jnp.float64)
        inits = {
            "none": parts,
            "isotropic noise (on)": parts,
            "isotropic kick": unravel(flat + size * iso / jnp.linalg.norm(iso)),
            "hessian kick": unravel(flat + size * jnp.asarray(ext["v_min"])),
        }
        mcfg = _model(cfg, "t2", n, ridge=0.0)
        fc = dy.FlowConfig(eta=cfg.e5_eta, steps=cfg.e5_steps, log_every=cfg.log_every,
                           ridge=0.0)
        out = {"L_S": l_s, "lambda_min": float(ext["smallest"][0]), "sigma": sigma, "arms": {}}
        for name, p in inits.items():
            fcn = dataclasses.replace(fc, noise=sigma) if "noise" in name else fc
            st = dy.init_state(jax.random.PRNGKey(cfg.seed + 72), mcfg, x, particles=p,
                               dtype=jnp.float64)
            _, met = dy.simulate(st, x, teacher, mcfg, fcn)
            met = _np(met)
            out["arms"][name] = {
                "t_escape": ls.plateau_time(met["time"], met["loss"], 0.5 * l_s),
                "final_loss": float(met["loss"][-1]), "time": met["time"], "loss": met["loss"],
            }
            _tick(bar)
        return out
