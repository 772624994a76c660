"""Mean-field MLP feature map + reduced linear attention (Kim & Suzuki, ICML 2024).

A neuron (particle) is theta = (a, w[, b]) with a in R^k, w in R^d and an optional bias.
A population of N particles is the pytree ``{"a": [N, k], "w": [N, d][, "b": [N]]}`` and
represents the empirical measure mu_N = (1/N) sum_j delta_{theta_j}. Its feature map is

    h_mu(x) = (1/N) sum_j a_j sigma(w_j . x + b_j)            # [M, k]

and the reduced linear-attention (LSA) readout of an in-context prompt is

    y_hat(x_q) = (1/n) sum_i y_i h(x_i)^T Gamma h(x_q).

Objectives (all take an x-batch standing in for E_x; see spec sections 1.5-1.6):

* ``loss_two_timescale`` L(mu) = min_B 1/2 E||f_o - B h_mu||^2 (n = inf, Gamma = Gamma_mu).
* ``loss_joint``         L_TF(mu, Gamma) = 1/2 E||f_o - Sigma_fh Gamma h_mu||^2.
* ``loss_prompts``       L^n: Monte-Carlo ICL risk on explicit finite prompts.
* ``icl_closed_form``    R*_n and Gamma*_n for a fixed feature map (exact, finite n).

Teachers are particle measures too (``make_teacher``), so f_o = h_{mu_o}.
Everything here is a pure function; nothing sets global JAX config.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

Particles = dict[str, jax.Array]

TeacherKind = Literal["t1", "t2"]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and initialisation of a particle population.

    Attributes:
        d: input dimension.
        k: feature dimension (= number of teacher features).
        n_particles: N, the number of neurons (particles).
        bias: whether each neuron has a bias b (needed for teacher T2).
        a_scale: a_j ~ N(0, a_scale^2 I_k).
        w_scale: w_j ~ N(0, w_scale^2 I_d / d), so w.x = O(w_scale) for x ~ N(0, I_d).
        b_scale: b_j ~ N(0, b_scale^2) when ``bias``.
        ridge: relative ridge rho = ridge * tr(Sigma_hh) / k added to Sigma_hh.
    """

    d: int = 20
    k: int = 5
    n_particles: int = 256
    bias: bool = False
    a_scale: float = 1.0
    w_scale: float = 1.0
    b_scale: float = 1.0
    ridge: float = 1e-6


def validate_config(cfg: ModelConfig) -> None:
    """Raises ValueError naming the bad field of ``cfg`` and the fix."""
    for name in ("d", "k", "n_particles"):
        val = getattr(cfg, name)
        if not isinstance(val, (int, np.integer)) or val < 1:
            raise ValueError(f"ModelConfig.{name} must be an integer >= 1, got {val!r}")
    if cfg.ridge < 0:
        raise ValueError(f"ModelConfig.ridge must be >= 0, got {cfg.ridge}")
    for name in ("a_scale", "w_scale", "b_scale"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"ModelConfig.{name} must be >= 0, got {getattr(cfg, name)}")


def check_particles(particles: Particles, d: int | None = None, k: int | None = None) -> None:
    """Validates a particle pytree's keys and shapes (host-side, before compiling).

    Raises:
        ValueError: naming the offending leaf and the expected shape.
    """
    if not isinstance(particles, dict) or "a" not in particles or "w" not in particles:
        raise ValueError("particles must be a dict with keys 'a' [N, k] and 'w' [N, d] (+ 'b' [N])")
    extra = set(particles) - {"a", "w", "b"}
    if extra:
        raise ValueError(f"particles has unknown keys {sorted(extra)}; allowed: a, w, b")
    a, w = particles["a"], particles["w"]
    if a.ndim != 2 or w.ndim != 2:
        raise ValueError(f"particles 'a' and 'w' must be 2-D, got {a.shape} and {w.shape}")
    if a.shape[0] < 1:
        raise ValueError("particles must hold N >= 1 neurons, got N = 0")
    if a.shape[0] != w.shape[0]:
        raise ValueError(f"particles 'a' {a.shape} and 'w' {w.shape} disagree on N")
    if "b" in particles and particles["b"].shape != (a.shape[0],):
        raise ValueError(f"particles 'b' must have shape ({a.shape[0]},), got {particles['b'].shape}")
    if d is not None and w.shape[1] != d:
        raise ValueError(f"particles 'w' has input dim {w.shape[1]}, expected d = {d}")
    if k is not None and a.shape[1] != k:
        raise ValueError(f"particles 'a' has feature dim {a.shape[1]}, expected k = {k}")


def init_particles(key: jax.Array, cfg: ModelConfig, dtype=jnp.float32) -> Particles:
    """Draws N iid neurons from the reference measure pi of the spec (section 4.1).

    Args:
        key: PRNG key.
        cfg: population config.
        dtype: float dtype of the leaves.

    Returns:
        ``{"a": [N, k], "w": [N, d][, "b": [N]]}``.
    """
    validate_config(cfg)
    ka, kw, kb = jax.random.split(key, 3)
    n, d, k = cfg.n_particles, cfg.d, cfg.k
    out = {
        "a": cfg.a_scale * jax.random.normal(ka, (n, k), dtype),
        "w": cfg.w_scale / np.sqrt(d) * jax.random.normal(kw, (n, d), dtype),
    }
    if cfg.bias:
        out["b"] = cfg.b_scale * jax.random.normal(kb, (n,), dtype)
    return out


def preactivation(particles: Particles, x: jax.Array) -> jax.Array:
    """w_j . x + b_j for every sample and neuron.  x: [M, d] -> [M, N]."""
    z = x @ particles["w"].T  # [M, N]
    if "b" in particles:
        z = z + particles["b"][None, :]
    return z


def features(particles: Particles, x: jax.Array) -> jax.Array:
    """Mean-field MLP feature map h_mu(x) = (1/N) sum_j a_j sigmoid(w_j.x + b_j).

    Args:
        particles: ``{"a": [N, k], "w": [N, d][, "b": [N]]}``.
        x: inputs [M, d].

    Returns:
        features [M, k].
    """
    n = particles["a"].shape[0]
    s = jax.nn.sigmoid(preactivation(particles, x))  # [M, N]
    return (s @ particles["a"]) / n  # [M, k]


def lsa_features(x: jax.Array) -> jax.Array:
    """Feature map of the "linear attention alone" baseline: x~ = (x, 1).  [M, d] -> [M, d+1]."""
    return jnp.concatenate([x, jnp.ones(x.shape[:-1] + (1,), x.dtype)], axis=-1)


# ----------------------------------------------------------------------------- teachers


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A teacher measure mu_o with f_o = h_{mu_o}.

    Attributes:
        particles: the teacher's particles (a pytree like a student's).
        u: orthonormal directions [k, d] (row j is u_j).
        kind: "t1" or "t2".
    """

    particles: Particles
    u: np.ndarray
    kind: str

    def __call__(self, x: jax.Array) -> jax.Array:
        return features(self.particles, x)


def make_teacher(
    key: jax.Array, d: int, k: int, kind: TeacherKind = "t2", s0: float = 3.0, dtype=np.float32
) -> Teacher:
    """Builds teacher T1 (sigmoid) or T2 (even bump, no linear part) as a particle measure.

    T1: f_j(x) = sigmoid(s0 u_j.x)  = mu_o = (1/k) sum_j delta_{(k e_j, s0 u_j)}.
    T2: f_j(x) = sigmoid(4 z_j - 3) + sigmoid(-4 z_j - 3), z_j = u_j.x (2k biased neurons).

    Args:
        key: PRNG key for the random orthonormal u_1..u_k.
        d: input dimension.
        k: number of features (k <= d).
        kind: "t1" or "t2".
        s0: T1 slope.
        dtype: numpy dtype of the teacher's leaves.

    Returns:
        A ``Teacher``.
    """
    if not (isinstance(d, (int, np.integer)) and isinstance(k, (int, np.integer)) and d >= 1):
        raise ValueError(f"teacher needs integer d >= 1 and k >= 1, got d={d!r}, k={k!r}")
    if k < 1 or k > d:
        raise ValueError(f"teacher needs 1 <= k <= d (orthonormal u_j), got k={k}, d={d}")
    seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
    g = np.random.default_rng(seed).standard_normal((d, k))
    q, r = np.linalg.qr(g)
    u = (q * np.sign(np.diag(r))).T  # [k, d]
    eye = np.eye(k)
    if kind == "t1":
        parts = {"a": k * eye, "w": s0 * u}
    elif kind == "t2":
        a = 2 * k * np.concatenate([eye, eye])  # [2k, k]
        w = np.concatenate([4.0 * u, -4.0 * u])  # [2k, d]
        parts = {"a": a, "w": w, "b": -3.0 * np.ones(2 * k)}
    else:
        raise ValueError(f"teacher kind must be 't1' or 't2', got {kind!r}")
    parts = {n: jnp.asarray(v, dtype) for n, v in parts.items()}
    return Teacher(particles=parts, u=u.astype(dtype), kind=kind)


# ----------------------------------------------------------------------------- moments, losses


def moments(h: jax.Array, f: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Second moments over a batch.  h: [M, p], f: [M, k] -> (S_hh [p,p], S_fh [k,p], S_ff [k,k])."""
    m = h.shape[0]
    return h.T @ h / m, f.T @ h / m, f.T @ f / m


def ridge_of(s_hh: jax.Array, ridge: float) -> jax.Array:
    """The relative ridge rho = ridge * tr(S_hh) / p (scale-invariant under h -> c h)."""
    return ridge * jnp.trace(s_hh) / s_hh.shape[0]


def optimal_readout(h: jax.Array, f: jax.Array, ridge: float = 0.0) -> jax.Array:
    """B_mu = S_fh (S_hh + rho I)^{-1}, the n = inf optimal fast readout (= S_fh Gamma_mu).

    Returns:
        B [k, p].
    """
    s_hh, s_fh, _ = moments(h, f)
    p = s_hh.shape[0]
    reg = s_hh + ridge_of(s_hh, ridge) * jnp.eye(p, dtype=s_hh.dtype)
    return jnp.linalg.solve(reg, s_fh.T).T  # reg symmetric


def gamma_mu(h: jax.Array, ridge: float = 0.0) -> jax.Array:
    """Gamma_mu = (S_hh + rho I)^{-1}, the minimiser of L_TF(mu, .) when S_fh is invertible."""
    s_hh = h.T @ h / h.shape[0]
    p = s_hh.shape[0]
    return jnp.linalg.inv(s_hh + ridge_of(s_hh, ridge) * jnp.eye(p, dtype=s_hh.dtype))


def loss_from_features(h: jax.Array, f: jax.Array, ridge: float = 0.0) -> jax.Array:
    """Two-timescale loss for given features: 1/2 E||f - B h||^2 + rho/2 ||B||_F^2, B optimal.

    With ``ridge = 0`` this is L(mu) of eq. (3). The ridge term makes B the exact minimiser,
    so the envelope theorem (first variation of spec 2.1) holds for the regularised loss too.
    """
    b = optimal_readout(h, f, ridge)
    resid = f - h @ b.T  # [M, k]
    s_hh = h.T @ h / h.shape[0]
    pen = 0.5 * ridge_of(s_hh, ridge) * jnp.sum(b * b)
    return 0.5 * jnp.mean(jnp.sum(resid * resid, axis=-1)) + pen


def loss_two_timescale(
    particles: Particles, x: jax.Array, f: jax.Array, ridge: float = 0.0
) -> jax.Array:
    """L(mu) = inf_Gamma L_TF(mu, Gamma) on an x-batch.

    Args:
        particles: student particles.
        x: inputs [M, d].
        f: teacher features f_o(x) [M, k].
        ridge: relative ridge (see ``ModelConfig.ridge``).

    Returns:
        scalar loss.
    """
    return loss_from_features(features(particles, x), f, ridge)


def loss_joint(particles: Particles, gamma: jax.Array, x: jax.Array, f: jax.Array) -> jax.Array:
    """L_TF(mu, Gamma) = 1/2 E_x ||f_o(x) - S_fh Gamma h_mu(x)||^2 on an x-batch (eq. 2)."""
    h = features(particles, x)
    s_fh = f.T @ h / h.shape[0]
    resid = f - h @ (s_fh @ gamma).T
    return 0.5 * jnp.mean(jnp.sum(resid * resid, axis=-1))


def gamma_descent(
    h: jax.Array, f: jax.Array, gamma: jax.Array, lr: float, steps: int
) -> jax.Array:
    """``steps`` gradient-descent steps on Gamma -> L_TF(mu, Gamma) at fixed features (Lemma 3.1).

    Uses the moment form of the gradient, grad = S_hf S_fh (Gamma S_hh - I).

    Args:
        h: features [M, k] (held fixed).
        f: teacher features [M, k].
        gamma: start [k, k].
        lr: step size (converges for lr < 2 / (lambda_max(S_hf S_fh) lambda_max(S_hh))).
        steps: number of steps.

    Returns:
        the final Gamma [k, k].
    """
    s_hh, s_fh, _ = moments(h, f)
    bmat = s_fh.T @ s_fh

    def body(_, gm):
        return gm - lr * (bmat @ gm @ s_hh - bmat)

    return jax.lax.fori_loop(0, steps, body, gamma)


def icl_predict(
    h_ctx: jax.Array, y_ctx: jax.Array, h_q: jax.Array, gamma: jax.Array
) -> jax.Array:
    """LSA readout y_hat = (1/n) sum_i y_i h_i^T Gamma h_q.

    Args:
        h_ctx: context features [B, n, p].
        y_ctx: context labels [B, n].
        h_q: query features [B, p].
        gamma: [p, p].

    Returns:
        predictions [B].
    """
    s = jnp.einsum("bn,bnp->bp", y_ctx, h_ctx) / h_ctx.shape[1]  # [B, p]
    return jnp.einsum("bp,pq,bq->b", s, gamma, h_q)


def sample_prompts(
    key: jax.Array, teacher: Teacher, batch: int, n: int, noise: float = 0.0, dtype=jnp.float32
) -> dict[str, jax.Array]:
    """Draws ``batch`` ICL prompts of length ``n`` (x ~ N(0, I), v ~ N(0, I_k)).

    Returns:
        dict with x_ctx [B, n, d], y_ctx [B, n], x_q [B, d], y_q [B] (noise-free target).
    """
    d, k = teacher.particles["w"].shape[1], teacher.particles["a"].shape[1]
    kx, kq, kv, ke = jax.random.split(key, 4)
    x_ctx = jax.random.normal(kx, (batch, n, d), dtype)
    x_q = jax.random.normal(kq, (batch, d), dtype)
    v = jax.random.normal(kv, (batch, k), dtype)
    f_ctx = features(teacher.particles, x_ctx.reshape(batch * n, d)).reshape(batch, n, -1)
    y_ctx = jnp.einsum("bnk,bk->bn", f_ctx, v) + noise * jax.random.normal(ke, (batch, n), dtype)
    y_q = jnp.einsum("bk,bk->b", features(teacher.particles, x_q), v)
    return {"x_ctx": x_ctx, "y_ctx": y_ctx, "x_q": x_q, "y_q": y_q}


def loss_prompts(
    particles: Particles | None, gamma: jax.Array, prompts: dict[str, jax.Array]
) -> jax.Array:
    """Finite-prompt ICL loss L^n_TF: mean of 1/2 (y_q - y_hat)^2 over the prompts.

    Args:
        particles: student particles, or None for the LSA(x, 1) baseline features.
        gamma: [p, p] attention matrix.
        prompts: output of ``sample_prompts``.

    Returns:
        scalar loss.
    """
    x_ctx, x_q = prompts["x_ctx"], prompts["x_q"]
    b, n, d = x_ctx.shape
    feat = lsa_features if particles is None else (lambda z: features(particles, z))
    h_ctx = feat(x_ctx.reshape(b * n, d)).reshape(b, n, -1)
    h_q = feat(x_q)
    err = prompts["y_q"] - icl_predict(h_ctx, prompts["y_ctx"], h_q, gamma)
    return 0.5 * jnp.mean(err * err)


# ----------------------------------------------------------------------------- closed forms


def icl_moments(h: jax.Array, f: jax.Array) -> dict[str, jax.Array]:
    """Moments the finite-n closed form needs, estimated from a sample.

    Args:
        h: features [M, p].
        f: teacher features [M, k].

    Returns:
        dict with ``s_hh`` [p, p], ``s_fh`` [k, p], ``s_ff`` [k, k] and
        ``m`` = E[||f||^2 h h^T] [p, p].
    """
    s_hh, s_fh, s_ff = moments(h, f)
    m_mat = (h * jnp.sum(f * f, axis=-1, keepdims=True)).T @ h / h.shape[0]
    return {"s_hh": s_hh, "s_fh": s_fh, "s_ff": s_ff, "m": m_mat}


def _a_n(mom: dict[str, jax.Array], n: float, noise_var: float) -> jax.Array:
    b = mom["s_fh"].T @ mom["s_fh"]
    if np.isinf(n):
        return b
    return b + (mom["m"] - b) / n + (noise_var / n) * mom["s_hh"]


def icl_closed_form_moments(
    mom: dict[str, jax.Array], n: float, noise_var: float = 0.0
) -> tuple[jax.Array, jax.Array]:
    """Exact finite-prompt optimum from moments (spec 1.6).

    A_n = B + (M - B)/n + (s^2/n) S_hh with B = S_hf S_fh and M = E[||f||^2 h h^T];
    Gamma*_n = A_n^{-1} B S_hh^{-1};  R*_n = 1/2 [tr S_ff - tr(A_n^{-1} B S_hh^{-1} B)] + s^2/2.
    ``n = inf`` returns Gamma = S_hh^{-1} and R = 1/2 tr S_ff - 1/2 tr(S_fh S_hh^{-1} S_hf)
    (= L(mu), the limit of R*_n).

    Args:
        mom: output of ``icl_moments`` (or exact population moments).
        n: prompt length (float('inf') allowed).
        noise_var: label-noise variance s^2.

    Returns:
        (Gamma*_n [p, p], R*_n scalar).
    """
    s_hh, s_fh, s_ff = mom["s_hh"], mom["s_fh"], mom["s_ff"]
    s_inv = jnp.linalg.inv(s_hh)
    if np.isinf(n):
        r = 0.5 * (jnp.trace(s_ff) - jnp.trace(s_fh @ s_inv @ s_fh.T))
        return s_inv, r + 0.5 * noise_var
    b = s_fh.T @ s_fh  # [p, p]
    gamma = jnp.linalg.solve(_a_n(mom, n, noise_var), b @ s_inv)
    r = 0.5 * (jnp.trace(s_ff) - jnp.trace(gamma @ b)) + 0.5 * noise_var
    return gamma, r


def icl_closed_form(
    h: jax.Array, f: jax.Array, n: float, noise_var: float = 0.0
) -> tuple[jax.Array, jax.Array]:
    """``icl_closed_form_moments`` with moments estimated from the sample (h [M, p], f [M, k])."""
    return icl_closed_form_moments(icl_moments(h, f), n, noise_var)


def icl_risk_moments(
    mom: dict[str, jax.Array], gamma: jax.Array, n: float, noise_var: float = 0.0
) -> jax.Array:
    """Exact ICL risk R_n(Gamma) of any Gamma [p, p] for a fixed feature map (spec 1.6)."""
    s_hh, s_fh, s_ff = mom["s_hh"], mom["s_fh"], mom["s_ff"]
    return (
        0.5 * jnp.trace(s_ff)
        - jnp.trace(s_fh @ gamma @ s_fh.T)
        + 0.5 * jnp.trace(gamma.T @ _a_n(mom, n, noise_var) @ gamma @ s_hh)
        + 0.5 * noise_var
    )


def cca_spectrum(h: jax.Array, f: jax.Array) -> jax.Array:
    """Squared canonical correlations rho_i^2 (uncentred) between teacher and learned features.

    Eigenvalues of C = S_ff^{-1/2} S_fh S_hh^{-1} S_hf S_ff^{-1/2}, sorted descending; their sum
    counts the teacher features captured (k at a global minimum).
    """
    s_hh, s_fh, s_ff = moments(h, f)
    ev, evec = jnp.linalg.eigh(s_ff)
    s_ff_isqrt = (evec / jnp.sqrt(ev)) @ evec.T
    c = s_ff_isqrt @ s_fh @ jnp.linalg.solve(s_hh, s_fh.T) @ s_ff_isqrt
    return jnp.sort(jnp.linalg.eigvalsh(0.5 * (c + c.T)))[::-1]


def velocity(
    particles: Particles, x: jax.Array, f: jax.Array, ridge: float = 0.0
) -> Particles:
    """Analytic WGF velocity V(theta_j) = -grad_theta dL/dmu at every particle (spec 2.1).

    With B = S_fh (S_hh + rho I)^{-1}, zeta = f - B h and g = B^T zeta (envelope theorem):
    V_a = E[sigma(w.x + b) g],  V_w = E[sigma'(w.x + b) (a.g) x],  V_b = E[sigma'(.) (a.g)].
    For a particle population this equals -N * grad L_N (exactly when ``ridge = 0``).

    Returns:
        a pytree shaped like ``particles``.
    """
    h = features(particles, x)
    b = optimal_readout(h, f, ridge)
    g = (f - h @ b.T) @ b  # [M, k]
    z = preactivation(particles, x)  # [M, N]
    s = jax.nn.sigmoid(z)
    ds = s * (1 - s)
    m = x.shape[0]
    ag = (g @ particles["a"].T) * ds  # [M, N]  sigma'(.) a_j.g(x)
    out = {"a": s.T @ g / m, "w": ag.T @ x / m}
    if "b" in particles:
        out["b"] = jnp.mean(ag, axis=0)
    return out
