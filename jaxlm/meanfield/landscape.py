"""Landscape tools: Hessian-vector products, Lanczos, saddle construction, homotopy curvature.

The numbers to track are the eigenvalues of N * Hess(L_N), the matrix of the Wasserstein
Hessian on L2(mu_N) (spec 2.2). The Hessian is never built: ``hvp`` is the jvp of the gradient,
and ``lanczos`` / ``eigsh_extremes`` find lambda_min and lambda_max from HVPs alone.
Use float64 (``with jax.enable_x64(True)``) for saddle work: float32 round-off is a ~1e-7
perturbation that can itself trigger an escape.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxlm.meanfield import model as mf


def hvp(loss_fn: Callable, params, v):
    """Hessian-vector product H(params) v as the jvp of grad (forward-over-reverse).

    Args:
        loss_fn: scalar function of ``params``.
        params: pytree.
        v: pytree shaped like ``params``.

    Returns:
        pytree shaped like ``params``.
    """
    return jax.jvp(jax.grad(loss_fn), (params,), (v,))[1]


def flat_hvp(loss_fn: Callable, params, scale: float = 1.0):
    """A jitted flat matvec u -> scale * H u over ``ravel_pytree(params)``.

    Returns:
        (matvec: [P] -> [P], flat params [P], unravel function).
    """
    flat, unravel = ravel_pytree(params)

    @jax.jit
    def matvec(u):
        out = hvp(loss_fn, params, unravel(u))
        return scale * ravel_pytree(out)[0]

    return matvec, flat, unravel


def lanczos(matvec: Callable, v0: jax.Array, m: int) -> tuple[jax.Array, jax.Array]:
    """m-step Lanczos with full re-orthogonalisation (pure JAX, jittable).

    Args:
        matvec: symmetric linear map [P] -> [P].
        v0: start vector [P] (need not be normalised).
        m: Krylov dimension (m <= P).

    Returns:
        (Ritz values sorted ascending [m], Ritz vectors [m, P]); the extremes converge first.
    """
    p = v0.shape[0]
    if m < 1 or m > p:
        raise ValueError(f"lanczos needs 1 <= m <= dim = {p}, got m = {m}")
    dtype = v0.dtype
    basis = jnp.zeros((m, p), dtype)
    q = v0 / jnp.linalg.norm(v0)

    def body(i, carry):
        basis, alphas, betas, q = carry
        basis = basis.at[i].set(q)
        w = matvec(q)
        alpha = jnp.dot(q, w)
        # full re-orthogonalisation against every stored vector (twice is enough)
        mask = (jnp.arange(m) <= i).astype(dtype)[:, None]
        for _ in range(2):
            w = w - (basis * mask).T @ ((basis * mask) @ w)
        beta = jnp.linalg.norm(w)
        q_next = jnp.where(beta > 1e-30, w / jnp.maximum(beta, 1e-30), jnp.zeros_like(w))
        return basis, alphas.at[i].set(alpha), betas.at[i].set(beta), q_next

    init = (basis, jnp.zeros((m,), dtype), jnp.zeros((m,), dtype), q)
    basis, alphas, betas, _ = jax.lax.fori_loop(0, m, body, init)
    tri = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
    evals, evecs = jnp.linalg.eigh(tri)
    return evals, evecs.T @ basis


def top_curvature(
    loss_fn: Callable, params, scale: float = 1.0, m: int = 24, seed: int = 0
) -> float:
    """lambda_max of scale * Hess(loss_fn) at ``params`` by m-step Lanczos (a lower bound that
    converges fast for the extreme eigenvalue; HVPs only).

    Args:
        loss_fn: scalar function of ``params``.
        params: pytree.
        scale: multiplies the Hessian (N for the particle Wasserstein Hessian).
        m: Krylov dimension (capped at the parameter count).
        seed: start-vector seed.

    Returns:
        the largest Ritz value.
    """
    matvec, flat, _ = flat_hvp(loss_fn, params, scale)
    v0 = jax.random.normal(jax.random.PRNGKey(seed), flat.shape, flat.dtype)
    evals, _ = lanczos(matvec, v0, min(m, flat.shape[0]))
    return float(evals[-1])


def stable_eta(lam_max: float, eta_max: float, safety: float = 0.5) -> float:
    """Explicit-Euler step from the curvature: min(eta_max, safety / lambda_max).

    Gradient descent on a quadratic is stable for eta * lambda_max < 2; ``safety`` = 0.5 leaves
    a 4x margin for the curvature growing along the trajectory.
    """
    if not np.isfinite(lam_max) or lam_max <= 0:
        return float(eta_max)
    return float(min(eta_max, safety / lam_max))


def eigsh_extremes(
    matvec: Callable, dim: int, n_eig: int = 3, tol: float = 1e-8, dtype=np.float64, seed: int = 0
) -> dict[str, np.ndarray]:
    """lambda_min and lambda_max of a symmetric operator by ARPACK Lanczos (scipy eigsh).

    Args:
        matvec: jitted [P] -> [P].
        dim: P.
        n_eig: eigenvalues wanted at each end.
        tol: ARPACK relative tolerance.
        dtype: operator dtype.
        seed: start-vector seed.

    Returns:
        dict with ``smallest`` (ascending) and ``largest`` (descending) eigenvalues and
        ``v_min``, the eigenvector of lambda_min [P].
    """
    from scipy.sparse.linalg import LinearOperator, eigsh

    def mv(u):
        return np.asarray(matvec(jnp.asarray(u, dtype)), dtype)

    op = LinearOperator((dim, dim), matvec=mv, dtype=dtype)
    v0 = np.random.default_rng(seed).standard_normal(dim).astype(dtype)
    n_eig = min(n_eig, dim - 1)
    lo, vlo = eigsh(op, k=n_eig, which="SA", tol=tol, v0=v0, maxiter=20 * dim)
    hi = eigsh(op, k=n_eig, which="LA", tol=tol, v0=v0, maxiter=20 * dim, return_eigenvectors=False)
    order = np.argsort(lo)
    return {"smallest": lo[order], "largest": np.sort(hi)[::-1], "v_min": vlo[:, order[0]]}


def hessian_extremes(
    particles: mf.Particles, x: jax.Array, f: jax.Array, ridge: float = 0.0, n_eig: int = 3,
    tol: float = 1e-8,
) -> dict[str, np.ndarray]:
    """Extremes of N * Hess L_N (the particle Wasserstein Hessian) of the two-timescale loss."""
    n = particles["a"].shape[0]
    matvec, flat, _ = flat_hvp(lambda p: mf.loss_two_timescale(p, x, f, ridge), particles, n)
    return eigsh_extremes(matvec, flat.shape[0], n_eig=n_eig, tol=tol, dtype=flat.dtype)


def grad_sq(particles: mf.Particles, x: jax.Array, f: jax.Array, ridge: float = 0.0) -> jax.Array:
    """G = (1/N) sum_j ||V_j||^2 = N ||grad L_N||^2."""
    n = particles["a"].shape[0]
    g = jax.grad(mf.loss_two_timescale)(particles, x, f, ridge)
    return n * sum(jnp.sum(v * v) for v in jax.tree.leaves(g))


def fit_power_law(loss: np.ndarray, grad: np.ndarray, lo: float = 0.0, hi: float = np.inf):
    """Least-squares fit log G = log c + p log L over points with lo < L < hi.

    Returns:
        dict with ``p``, ``c``, ``r2`` and ``n_points`` (nan when < 3 points).
    """
    loss, grad = np.asarray(loss, float).ravel(), np.asarray(grad, float).ravel()
    ok = (loss > lo) & (loss < hi) & (grad > 0) & np.isfinite(loss) & np.isfinite(grad)
    if ok.sum() < 3:
        return {"p": float("nan"), "c": float("nan"), "r2": float("nan"), "n_points": int(ok.sum())}
    lx, ly = np.log(loss[ok]), np.log(grad[ok])
    p, logc = np.polyfit(lx, ly, 1)
    resid = ly - (p * lx + logc)
    r2 = 1 - resid.var() / max(ly.var(), 1e-300)
    return {"p": float(p), "c": float(np.exp(logc)), "r2": float(r2), "n_points": int(ok.sum())}


# ----------------------------------------------------------------------------- saddles (E5)


def antithetic_batch(x_half: jax.Array, u: jax.Array) -> jax.Array:
    """[x; x - 2 (u.x) u]: every term odd in z = u.x cancels exactly on this batch.

    Args:
        x_half: [M/2, d].
        u: unit vector [d].

    Returns:
        [M, d].
    """
    z = x_half @ u
    return jnp.concatenate([x_half, x_half - 2.0 * z[:, None] * u[None, :]], axis=0)


def restrict_support(particles: mf.Particles, u: jax.Array) -> mf.Particles:
    """Projects every w_j onto the orthogonal complement of the unit vector u."""
    w = particles["w"]
    return {**particles, "w": w - (w @ u)[:, None] * u[None, :]}


def restrict_to_span(particles: mf.Particles, basis: jax.Array) -> mf.Particles:
    """Projects every w_j onto span of the orthonormal rows of ``basis`` [r, d] (E5 saddle)."""
    w = particles["w"]
    return {**particles, "w": (w @ basis.T) @ basis}


def perturb_along(particles: mf.Particles, u: jax.Array, eps: float, key: jax.Array):
    """w_j += eps * xi_j * u with random signs xi_j (arm A of E5)."""
    n = particles["w"].shape[0]
    xi = jax.random.rademacher(key, (n,), particles["w"].dtype)
    return {**particles, "w": particles["w"] + eps * xi[:, None] * u[None, :]}


def plateau_time(times: np.ndarray, loss: np.ndarray, threshold: float) -> float:
    """First time the loss drops below ``threshold`` (linear interpolation); inf if never."""
    times, loss = np.asarray(times), np.asarray(loss)
    below = np.nonzero(loss < threshold)[0]
    if below.size == 0:
        return float("inf")
    i = int(below[0])
    if i == 0:
        return float(times[0])
    l0, l1 = np.log(loss[i - 1]), np.log(loss[i])
    frac = (l0 - np.log(threshold)) / max(l0 - l1, 1e-300)
    return float(times[i - 1] + frac * (times[i] - times[i - 1]))


def fit_escape_slope(eps: np.ndarray, times: np.ndarray) -> dict[str, float]:
    """Fits T(eps) = slope * log(1/eps) + const over the finite escape times."""
    eps, times = np.asarray(eps, float), np.asarray(times, float)
    ok = np.isfinite(times)
    if ok.sum() < 2:
        return {"slope": float("nan"), "const": float("nan"), "n_points": int(ok.sum())}
    slope, const = np.polyfit(np.log(1 / eps[ok]), times[ok], 1)
    return {"slope": float(slope), "const": float(const), "n_points": int(ok.sum())}


def homotopy_curvature(
    h: jax.Array, f_target: jax.Array, f: jax.Array, scale: float, ridge: float = 0.0
) -> jax.Array:
    """d^2/ds^2 L(h_s) at s = 0 along the mixture h_s = (1 - s) h + s * scale * f_target.

    This is the mass-adding direction of Thm 3.3 (mu_s = (1-s) mu + s R#mu_o); with
    weighted particles the feature map is exactly linear in s.

    Args:
        h: features of mu [M, k].
        f_target: features of the added measure (e.g. the teacher) [M, k].
        f: teacher features defining the loss [M, k].
        scale: c, the mass scale of the added measure.
        ridge: relative ridge.

    Returns:
        scalar second derivative.
    """

    def curve(s):
        return mf.loss_from_features((1 - s) * h + s * scale * f_target, f, ridge)

    first = lambda s: jax.jvp(curve, (s,), (jnp.ones_like(s),))[1]
    s0 = jnp.zeros((), h.dtype)
    return jax.jvp(first, (s0,), (jnp.ones_like(s0),))[1]
