"""Discretised Wasserstein gradient flow (WGF) of particle populations.

One step moves every particle along the mean-field velocity field,

    theta_j <- theta_j - eta * N * dL_N/dtheta_j         (spec 2.3: the factor N is essential)

for one of three objectives (``FlowConfig.mode``):

* ``"static"``: two-timescale limit, Gamma = Gamma_mu exact at every step (loss L(mu)).
* ``"joint"``:  L_TF(mu, Gamma), Gamma updated with rate kappa * eta (``inner_steps`` times).
* ``"prompt"``: finite-prompt SGD on fresh ICL prompts (L^n), Gamma rate kappa * eta.
* ``"prompt_static"``: finite-prompt SGD with Gamma at its exact fast optimum Gamma*_n(mu)
  (closed form of spec 1.6 from moments on the x-batch): the two-timescale limit at finite n.

Step size. The joint objective L_TF(mu, Gamma) at fixed Gamma is far stiffer in mu than the
two-timescale L(mu): moving the features against a stale Gamma ~ Sigma_hh^{-1} costs
~cond(Sigma_hh) / |h|^2, and |h|^2 ~ 1/N at the mean-field init. lambda_max(N Hess_mu L_TF)
is 100-1000x that of L(mu) (e.g. ~1.9e3 vs ~1.8 at N = 64, d = 20, k = 5), so explicit
joint / prompt steps need eta < 2 / lambda_max (``landscape.stable_eta``); eta = 0.1 diverges.

Optional extras: isotropic kicks, mean-field Langevin noise + L2 (not the paper's setting),
and birth-death re-sampling of a fraction of particles from the reference measure pi.
Steps run under ``lax.scan``; populations (seeds) are vectorised with ``vmap`` and spread over
devices with ``jax.shard_map`` (``run_population``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import flax.struct
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxlm.meanfield import model as mf

Mode = Literal["static", "joint", "prompt", "prompt_static"]


@dataclasses.dataclass(frozen=True)
class FlowConfig:
    """Hyper-parameters of the particle flow.

    Attributes:
        mode: "static" (exact Gamma_mu), "joint" (Gamma by GD), "prompt" (finite-n SGD, Gamma
            by SGD) or "prompt_static" (finite-n SGD, Gamma = Gamma*_n(mu) exact).
        eta: step size of the per-particle field (time t = eta * step).
        steps: number of steps (a multiple of ``log_every``).
        log_every: metrics are computed every this many steps.
        batch: M, x-samples per step (static / joint).
        fresh_batch: draw a fresh x-batch every step instead of the fixed one.
        kappa: Gamma time-scale ratio: per particle step Gamma moves kappa * eta (joint /
            prompt), in the units set by ``gamma_precond``.
        gamma_precond: measure Gamma steps in units of 1 / (tr(S_hf S_fh) tr(S_hh)), an upper
            bound of the curvature of L_TF in Gamma. L_TF is invariant under (h, Gamma) ->
            (c h, Gamma / c^2), so plain GD on Gamma runs c^4 slower when the features are
            small (|h|^2 ~ 1/N at a mean-zero init); the normalisation makes "kappa times
            faster" scale-free, and kappa * eta > 1 is split into ceil(kappa * eta) stable
            inner steps (joint; prompt mode caps the normalised step at 1). False = plain GD
            with step kappa * eta and ``inner_steps`` steps.
        gamma_newton: joint mode only: Newton-preconditioned Gamma flow
            dGamma/dt = -kappa (B + delta I)^{-1} grad_Gamma L_TF (S_hh + rho I)^{-1}
            = -kappa (Gamma - Gamma_mu) on the range of B = S_hf S_fh, i.e. Gamma relaxes to
            Gamma_mu at the uniform rate kappa (Lemma 3.1 with the conditioning of B and S_hh
            removed; delta = ridge * tr(B) / k). One step per particle step with rate
            min(kappa * eta, 1); rate 1 is the exact Gamma_mu on range(B). Overrides
            ``gamma_precond``.
        inner_steps: Gamma updates per particle step (joint).
        adaptive: if > 0, the step is re-chosen every ``log_every`` steps from the curvature:
            eta_t = min(eta, adaptive / |lambda|_max(N Hess_mu)), with |lambda|_max from
            ``power_iters`` warm-started power iterations on the mode's particle loss (L for
            static, L_TF(., Gamma) otherwise). Times t = sum of the steps taken.
        power_iters: HVPs per curvature estimate (``adaptive``).
        prompt_len: n for mode "prompt".
        prompts_per_step: prompts per SGD step for mode "prompt".
        label_noise: label-noise std s for mode "prompt".
        noise: std of an isotropic kick added to every particle coordinate each step.
        langevin: lambda of mean-field Langevin noise sqrt(2 lambda eta) xi.
        l2: lambda' of an L2 term lambda' E||theta||^2 / 2.
        birth_death_every: re-sample particles every this many steps (0 = never).
        birth_death_frac: fraction of particles re-sampled at each birth-death event.
        birth_a_scale: re-sampled particles get a ~ N(0, birth_a_scale^2 I).
        ridge: relative ridge on Sigma_hh for Gamma_mu.
    """

    mode: Mode = "static"
    eta: float = 0.1
    steps: int = 1000
    log_every: int = 50
    batch: int = 2048
    fresh_batch: bool = False
    kappa: float = 10.0
    gamma_precond: bool = True
    gamma_newton: bool = False
    inner_steps: int = 1
    adaptive: float = 0.0
    power_iters: int = 6
    prompt_len: int = 64
    prompts_per_step: int = 32
    label_noise: float = 0.0
    noise: float = 0.0
    langevin: float = 0.0
    l2: float = 0.0
    birth_death_every: int = 0
    birth_death_frac: float = 0.0
    birth_a_scale: float = 0.0
    ridge: float = 1e-6


def validate_flow(cfg: FlowConfig) -> None:
    """Raises ValueError naming the bad ``FlowConfig`` field and the fix."""
    if cfg.mode not in ("static", "joint", "prompt", "prompt_static"):
        raise ValueError(
            f"FlowConfig.mode must be static|joint|prompt|prompt_static, got {cfg.mode!r}"
        )
    for name in ("steps", "log_every", "batch", "inner_steps", "prompt_len", "prompts_per_step"):
        if int(getattr(cfg, name)) < 1:
            raise ValueError(f"FlowConfig.{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.steps % cfg.log_every:
        raise ValueError(
            f"FlowConfig.steps={cfg.steps} must be a multiple of log_every={cfg.log_every}"
        )
    if cfg.eta <= 0:
        raise ValueError(f"FlowConfig.eta must be > 0, got {cfg.eta}")
    for name in ("kappa", "noise", "langevin", "l2", "birth_death_frac", "ridge", "adaptive"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"FlowConfig.{name} must be >= 0, got {getattr(cfg, name)}")
    if cfg.birth_death_frac > 1:
        raise ValueError(f"FlowConfig.birth_death_frac must be <= 1, got {cfg.birth_death_frac}")


@flax.struct.dataclass
class FlowState:
    """Dynamic state of one population.

    Attributes:
        particles: ``{"a": [N, k], "w": [N, d][, "b": [N]]}``.
        gamma: attention matrix [k, k] (unused by mode "static").
        key: PRNG key (raw uint32 [2]).
        step: int32 scalar.
        time: t = sum of the step sizes taken (float scalar).
        probe: flat unit vector [P] warm-starting the curvature power iteration.
    """

    particles: mf.Particles
    gamma: jax.Array
    key: jax.Array
    step: jax.Array
    time: jax.Array
    probe: jax.Array


def init_state(
    key: jax.Array,
    mcfg: mf.ModelConfig,
    x: jax.Array,
    particles: mf.Particles | None = None,
    dtype=jnp.float32,
) -> FlowState:
    """A population at t = 0, with Gamma initialised at Gamma_{mu_0} on the batch ``x``.

    Args:
        key: PRNG key (raw, from ``jax.random.PRNGKey``).
        mcfg: population config.
        x: x-batch [M, d] used to initialise Gamma.
        particles: optional explicit particles (else drawn from pi).
        dtype: float dtype.

    Returns:
        a ``FlowState``.
    """
    kp, kl = jax.random.split(key)
    if particles is None:
        particles = mf.init_particles(kp, mcfg, dtype)
    gamma = mf.gamma_mu(mf.features(particles, x), mcfg.ridge)
    flat = jax.flatten_util.ravel_pytree(particles)[0]
    probe = jax.random.normal(jax.random.PRNGKey(17), flat.shape, flat.dtype)
    return FlowState(particles=particles, gamma=gamma, key=kl, step=jnp.zeros((), jnp.int32),
                     time=jnp.zeros((), flat.dtype), probe=probe / jnp.linalg.norm(probe))


def _gamma_schedule(fcfg: FlowConfig) -> tuple[float, int]:
    """(step size per inner Gamma step in normalised units, number of inner steps)."""
    total = fcfg.eta * fcfg.kappa
    if not fcfg.gamma_precond:
        return total, fcfg.inner_steps
    n_inner = max(fcfg.inner_steps, int(np.ceil(total)))
    return total / n_inner, n_inner


def _gamma_norm(h: jax.Array, f: jax.Array) -> jax.Array:
    """tr(S_hf S_fh) * tr(S_hh) >= the Lipschitz constant of grad_Gamma L_TF."""
    s_hh, s_fh, _ = mf.moments(h, f)
    return jnp.sum(s_fh * s_fh) * jnp.trace(s_hh)


def _gamma_newton_step(h, f, gamma, rate, ridge):
    """Gamma <- Gamma - rate (B + delta I)^{-1} B (Gamma - Gamma_mu), Gamma_mu = (S_hh + rho)^-1.

    This is the Newton-preconditioned gradient (B + delta I)^{-1} grad_Gamma L_TF S_hh^{-1}
    written without the cancellation-prone product B Gamma S_hh (Gamma ~ 1/|h|^2 is large).
    """
    s_hh, s_fh, _ = mf.moments(h, f)
    k = s_hh.shape[0]
    eye = jnp.eye(k, dtype=h.dtype)
    bmat = s_fh.T @ s_fh
    b_reg = bmat + ridge * jnp.trace(bmat) / k * eye
    g_mu = jnp.linalg.inv(s_hh + mf.ridge_of(s_hh, ridge) * eye)
    return gamma - rate * jnp.linalg.solve(b_reg, bmat @ (gamma - g_mu))


def _step_loss_and_grads(state, x, teacher, mcfg, fcfg, key, eta):
    """Returns (loss, particle grads, gamma after its update)."""
    p, gamma = state.particles, state.gamma
    lr, n_inner = _gamma_schedule(fcfg)
    lr = lr * eta / fcfg.eta  # eta <= fcfg.eta when adaptive: same inner-step count, stable
    if fcfg.mode == "static":
        f = teacher(x)
        loss, g = jax.value_and_grad(mf.loss_two_timescale)(p, x, f, fcfg.ridge)
        return loss, g, gamma
    if fcfg.mode == "joint":
        f = teacher(x)
        loss, g = jax.value_and_grad(mf.loss_joint)(p, gamma, x, f)
        h = jax.lax.stop_gradient(mf.features(p, x))
        if fcfg.gamma_newton:
            return loss, g, _gamma_newton_step(h, f, gamma, jnp.minimum(eta * fcfg.kappa, 1.0),
                                               fcfg.ridge)
        if fcfg.gamma_precond:
            lr = lr / _gamma_norm(h, f)
        return loss, g, mf.gamma_descent(h, f, gamma, lr, n_inner)
    prompts = mf.sample_prompts(
        key, teacher, fcfg.prompts_per_step, fcfg.prompt_len, fcfg.label_noise, x.dtype
    )
    if fcfg.mode == "prompt_static":
        gamma = prompt_gamma_star(p, teacher, x, fcfg)
        loss, g = jax.value_and_grad(mf.loss_prompts)(p, gamma, prompts)
        return loss, g, gamma
    loss, (g, g_gamma) = jax.value_and_grad(mf.loss_prompts, argnums=(0, 1))(p, gamma, prompts)
    if fcfg.gamma_precond:
        # Lipschitz constant of this batch's Gamma-gradient: mean_b |s_b|^2 |h_q,b|^2 with
        # s_b = (1/n) sum_i y_i h(x_i). At finite n it is dominated by the (M - B)/n term, far
        # above tr(B) tr(S_hh) when S_fh is small. A stochastic gradient allows one step:
        # cap the normalised step at 1.
        b_sz, n_ctx, d = prompts["x_ctx"].shape
        h_ctx = jax.lax.stop_gradient(mf.features(p, prompts["x_ctx"].reshape(-1, d)))
        h_q = jax.lax.stop_gradient(mf.features(p, prompts["x_q"]))
        s_b = jnp.einsum("bn,bnp->bp", prompts["y_ctx"], h_ctx.reshape(b_sz, n_ctx, -1)) / n_ctx
        lip = jnp.mean(jnp.sum(s_b * s_b, -1) * jnp.sum(h_q * h_q, -1))
        lr = jnp.minimum(eta * fcfg.kappa, 1.0) / jnp.maximum(lip, 1e-30)
    return loss, g, gamma - lr * g_gamma


def prompt_gamma_star(
    particles: mf.Particles, teacher: mf.Teacher, x: jax.Array, fcfg: FlowConfig
) -> jax.Array:
    """Gamma*_n(mu) (spec 1.6) from moments on the x-batch ``x`` [M, d] (no gradient).

    The ridge rho = ``fcfg.ridge`` * tr(S_hh) / k regularises S_hh. By the envelope theorem
    the particle gradient of L^n at this Gamma is the gradient of R*_n(mu) = min_Gamma R_n.
    """
    h = jax.lax.stop_gradient(mf.features(particles, x))
    mom = mf.icl_moments(h, teacher(x))
    k = h.shape[1]
    mom["s_hh"] = mom["s_hh"] + mf.ridge_of(mom["s_hh"], fcfg.ridge) * jnp.eye(k, dtype=h.dtype)
    gamma, _ = mf.icl_closed_form_moments(mom, fcfg.prompt_len, fcfg.label_noise**2)
    return gamma


def _birth_death(particles, key, mcfg: mf.ModelConfig, fcfg: FlowConfig):
    """Replaces a random fraction of particles by fresh draws from pi (a scaled down)."""
    n = particles["a"].shape[0]
    km, kn = jax.random.split(key)
    mask = jax.random.uniform(km, (n,)) < fcfg.birth_death_frac  # [N]
    fresh = mf.init_particles(kn, dataclasses.replace(mcfg, n_particles=n), particles["a"].dtype)
    fresh["a"] = fresh["a"] * (fcfg.birth_a_scale / max(mcfg.a_scale, 1e-30))
    out = {}
    for name, leaf in particles.items():
        m = mask.reshape((n,) + (1,) * (leaf.ndim - 1))
        out[name] = jnp.where(m, fresh[name], leaf)
    return out


def flow_step(
    state: FlowState,
    x: jax.Array,
    teacher: mf.Teacher,
    mcfg: mf.ModelConfig,
    fcfg: FlowConfig,
    eta: jax.Array | float | None = None,
) -> tuple[FlowState, jax.Array]:
    """One WGF step (see the module docstring). Returns (new state, training loss).

    ``eta`` (possibly traced) overrides ``fcfg.eta`` for this step (adaptive steps).
    """
    eta = fcfg.eta if eta is None else eta
    key = jax.random.fold_in(state.key, state.step)
    kx, kp, kn, kb = jax.random.split(key, 4)
    if fcfg.fresh_batch:
        x = jax.random.normal(kx, x.shape, x.dtype)
    loss, g, gamma = _step_loss_and_grads(state, x, teacher, mcfg, fcfg, kp, eta)
    p = state.particles
    n = p["a"].shape[0]
    noise_std = fcfg.noise + jnp.sqrt(2.0 * fcfg.langevin * eta)
    leaves, treedef = jax.tree.flatten(p)
    gleaves = treedef.flatten_up_to(g)
    nkeys = jax.random.split(kn, len(leaves))
    new = []
    for leaf, gl, nk in zip(leaves, gleaves, nkeys, strict=True):
        upd = leaf - eta * (n * gl + fcfg.l2 * leaf)
        if fcfg.noise > 0 or fcfg.langevin > 0:
            upd = upd + noise_std * jax.random.normal(nk, leaf.shape, leaf.dtype)
        new.append(upd)
    p = jax.tree.unflatten(treedef, new)
    if fcfg.birth_death_every > 0 and fcfg.birth_death_frac > 0:
        do_bd = (state.step + 1) % fcfg.birth_death_every == 0
        p = jax.lax.cond(do_bd, lambda q: _birth_death(q, kb, mcfg, fcfg), lambda q: q, p)
    new_state = state.replace(particles=p, gamma=gamma, step=state.step + 1,
                              time=state.time + jnp.asarray(eta, state.time.dtype))
    return new_state, loss


def curvature_estimate(
    state: FlowState, x: jax.Array, teacher: mf.Teacher, fcfg: FlowConfig
) -> tuple[jax.Array, jax.Array]:
    """|lambda|_max of N Hess_mu of the mode's particle loss by warm-started power iteration.

    Returns:
        (estimate, new unit probe vector [P]).
    """
    p = state.particles
    n = p["a"].shape[0]
    f = teacher(x)
    flat, unravel = jax.flatten_util.ravel_pytree(p)
    if fcfg.mode == "static":
        loss_fn = lambda q: mf.loss_two_timescale(q, x, f, fcfg.ridge)
    elif fcfg.mode == "joint":
        loss_fn = lambda q: mf.loss_joint(q, state.gamma, x, f)
    else:
        loss_fn = lambda q: _risk_n(q, state.gamma, x, f, fcfg)
    grad_flat = lambda z: jax.flatten_util.ravel_pytree(jax.grad(loss_fn)(unravel(z)))[0]

    def body(_, v):
        hv = n * jax.jvp(grad_flat, (flat,), (v,))[1]
        return hv / jnp.maximum(jnp.linalg.norm(hv), 1e-30)

    v = jax.lax.fori_loop(0, fcfg.power_iters, body, state.probe)
    lam = jnp.linalg.norm(n * jax.jvp(grad_flat, (flat,), (v,))[1])
    return lam, v


def _risk_n(particles, gamma, x, f, fcfg: FlowConfig) -> jax.Array:
    """Exact finite-n ICL risk R_n(mu, Gamma) (spec 1.6) with moments on the batch x."""
    mom = mf.icl_moments(mf.features(particles, x), f)
    return mf.icl_risk_moments(mom, gamma, fcfg.prompt_len, fcfg.label_noise**2)


def flow_metrics(
    state: FlowState, x: jax.Array, teacher: mf.Teacher, fcfg: FlowConfig
) -> dict[str, jax.Array]:
    """Diagnostics on the batch ``x``: L(mu), L_TF, G = (1/N) sum ||V_j||^2, CCA, Gamma error.

    Returns:
        dict of scalars: ``loss`` (two-timescale L), ``loss_tf`` (the mode's loss at the
        state's Gamma: L_TF for joint, the exact finite-n risk R_n(mu, Gamma) for prompt
        modes), ``grad_sq`` (G), ``cca_sum`` (sum rho_i^2), ``gamma_err``
        (||Gamma - Gamma_mu||_F / ||Gamma_mu||_F) and ``a_norm`` (RMS of a).
    """
    p = state.particles
    n = p["a"].shape[0]
    f = teacher(x)
    loss, g = jax.value_and_grad(mf.loss_two_timescale)(p, x, f, fcfg.ridge)
    grad_sq = n * sum(jnp.sum(v * v) for v in jax.tree.leaves(g))
    h = mf.features(p, x)
    gm = mf.gamma_mu(h, fcfg.ridge)
    static = fcfg.mode == "static"  # Gamma = Gamma_mu implicitly
    return {
        "loss": loss,
        "loss_tf": (loss if static else mf.loss_joint(p, state.gamma, x, f)
                    if fcfg.mode == "joint" else _risk_n(p, state.gamma, x, f, fcfg)),
        "grad_sq": grad_sq,
        "cca_sum": jnp.sum(mf.cca_spectrum(h, f)),
        "gamma_err": (jnp.zeros((), loss.dtype) if static
                      else jnp.linalg.norm(state.gamma - gm) / jnp.linalg.norm(gm)),
        "a_norm": jnp.sqrt(jnp.mean(p["a"] ** 2)),
    }


def run_flow(
    state: FlowState,
    x: jax.Array,
    teacher: mf.Teacher,
    mcfg: mf.ModelConfig,
    fcfg: FlowConfig,
) -> tuple[FlowState, dict[str, jax.Array]]:
    """Runs ``fcfg.steps`` steps under ``lax.scan`` (not jitted; see ``make_runner``).

    Args:
        state: initial ``FlowState``.
        x: the fixed x-batch [M, d] (also the batch the metrics are computed on).
        teacher: teacher measure.
        mcfg: population config (used by birth-death).
        fcfg: flow config.

    Returns:
        (final state, metrics): each metric has shape [steps // log_every + 1]; entry 0 is t = 0.
        ``metrics["time"]`` holds t (eta * step for a fixed step; the state's own clock, so
        a continued run continues its time axis) and ``metrics["eta"]`` the step of each chunk.
    """
    n_logs = fcfg.steps // fcfg.log_every

    def outer(s, _):
        if fcfg.adaptive > 0:
            lam, probe = curvature_estimate(s, x, teacher, fcfg)
            eta = jnp.minimum(fcfg.eta, fcfg.adaptive / jnp.maximum(lam, 1e-30))
            s = s.replace(probe=probe)
        else:
            eta = jnp.asarray(fcfg.eta, s.time.dtype)

        def inner(si, _):
            return flow_step(si, x, teacher, mcfg, fcfg, eta)

        s, losses = jax.lax.scan(inner, s, None, length=fcfg.log_every)
        met = flow_metrics(s, x, teacher, fcfg)
        met["train_loss"] = jnp.mean(losses)
        met["time"] = s.time
        met["eta"] = eta.astype(s.time.dtype)
        return s, met

    m0 = flow_metrics(state, x, teacher, fcfg)
    m0["train_loss"] = m0["loss"] if fcfg.mode in ("static", "prompt_static") else m0["loss_tf"]
    m0["time"] = state.time
    m0["eta"] = jnp.zeros((), state.time.dtype)
    state, mets = jax.lax.scan(outer, state, None, length=n_logs)
    mets = {k: jnp.concatenate([m0[k][None], v]) for k, v in mets.items()}
    return state, mets


@functools.lru_cache(maxsize=64)
def make_runner(teacher_key: int, mcfg: mf.ModelConfig, fcfg: FlowConfig, vmapped: bool):
    """Cached jitted runner keyed by static configs (the teacher is passed at call time)."""
    del teacher_key

    def fn(state, x, teacher_parts):
        t = mf.Teacher(particles=teacher_parts, u=np.zeros((0, 0)), kind="")
        return run_flow(state, x, t, mcfg, fcfg)

    if vmapped:
        fn = jax.vmap(fn, in_axes=(0, None, None))
    return jax.jit(fn)


def simulate(
    state: FlowState,
    x: jax.Array,
    teacher: mf.Teacher,
    mcfg: mf.ModelConfig,
    fcfg: FlowConfig,
) -> tuple[FlowState, dict[str, jax.Array]]:
    """Jitted ``run_flow`` for one population, after validating inputs."""
    validate_flow(fcfg)
    mf.check_particles(state.particles, d=x.shape[-1])
    return make_runner(0, mcfg, fcfg, False)(state, x, teacher.particles)


def init_population(
    keys: jax.Array, mcfg: mf.ModelConfig, x: jax.Array, dtype=jnp.float32
) -> FlowState:
    """A stacked ``FlowState`` with one population per key (leading axis = population)."""
    mf.validate_config(mcfg)
    return jax.vmap(lambda k: init_state(k, mcfg, x, dtype=dtype))(keys)


def population_mesh(n_devices: int | None = None) -> jax.sharding.Mesh:
    """A 1-D mesh ("pop",) over the first ``n_devices`` devices (all by default)."""
    devs = jax.devices()
    n = len(devs) if n_devices is None else n_devices
    if n < 1 or n > len(devs):
        raise ValueError(f"n_devices must be in [1, {len(devs)}], got {n_devices}")
    # Auto axis: results stay ordinary arrays (indexable without out_sharding annotations).
    return jax.make_mesh((n,), ("pop",), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=devs[:n])


def run_population(
    states: FlowState,
    x: jax.Array,
    teacher: mf.Teacher,
    mcfg: mf.ModelConfig,
    fcfg: FlowConfig,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[FlowState, dict[str, jax.Array]]:
    """Runs P independent populations: vmap inside each device, shard_map across devices.

    Args:
        states: stacked ``FlowState`` with leading population axis P (``init_population``).
        x: fixed x-batch [M, d], shared by all populations.
        teacher: teacher measure, shared.
        mcfg: population config.
        fcfg: flow config.
        mesh: 1-D mesh with axis "pop"; default: as many devices as divide P.

    Returns:
        (final stacked states, metrics with shape [P, logs]).
    """
    validate_flow(fcfg)
    n_pop = states.step.shape[0]
    if mesh is None:
        n_dev = max(i for i in range(1, len(jax.devices()) + 1) if n_pop % i == 0)
        mesh = population_mesh(n_dev)
    n_dev = mesh.shape["pop"]
    if n_pop % n_dev:
        raise ValueError(f"population count {n_pop} must be divisible by the mesh size {n_dev}")
    runner = _sharded_runner(mcfg, fcfg, mesh)
    states = jax.device_put(states, NamedSharding(mesh, P("pop")))
    x = jax.device_put(x, NamedSharding(mesh, P()))
    tparts = jax.device_put(teacher.particles, NamedSharding(mesh, P()))
    return runner(states, x, tparts)


@functools.lru_cache(maxsize=64)
def _sharded_runner(mcfg: mf.ModelConfig, fcfg: FlowConfig, mesh: jax.sharding.Mesh):
    def per_device(states, x, tparts):
        t = mf.Teacher(particles=tparts, u=np.zeros((0, 0)), kind="")
        return jax.vmap(lambda s: run_flow(s, x, t, mcfg, fcfg))(states)

    body = jax.shard_map(
        per_device, mesh=mesh, in_specs=(P("pop"), P(), P()), out_specs=P("pop")
    )
    return jax.jit(body)
