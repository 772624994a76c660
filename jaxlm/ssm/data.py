"""Generated / bundled data for the Mamba-ND benchmarks (spec Sec. 7.1). No downloads.

* ``digits``: scikit-learn's bundled 8x8 digits, /16, stratified 60/20/20 split.
* ``digits_canvas``: one digit (optionally 2x upsampled) at a random position on a
  larger canvas with clutter (3x3 fragments of other digits); label = digit class.
* ``moving_digits``: T frames of a digit moving at constant velocity with bounces;
  label = one of 8 motion directions.
* ``pde_fields``: periodic 2D fields, two processes with spatially varying, per-sample
  hidden coefficients: a tracer advected by a random divergence-free velocity
  (from a random streamfunction) with diffusion, and heat diffusion with a random
  positive diffusivity field. Pseudo-spectral derivatives, RK4 in time.

All arrays are float32 channels-last; splits never share source digits.
"""

from __future__ import annotations

import numpy as np


def _split_indices(labels: np.ndarray, seed: int, fracs=(0.6, 0.2, 0.2)):
    """Stratified split -> (train, val, test) index arrays."""
    rng = np.random.default_rng(seed)
    parts = [[], [], []]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n1 = int(round(fracs[0] * len(idx)))
        n2 = n1 + int(round(fracs[1] * len(idx)))
        for p, sl in zip(parts, (idx[:n1], idx[n1:n2], idx[n2:]), strict=True):
            p.extend(sl.tolist())
    return tuple(rng.permutation(np.asarray(p)) for p in parts)


def digits(seed: int = 0) -> dict:
    """{"train"|"val"|"test": (x [n, 8, 8, 1], y [n])}."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    y = d.target.astype(np.int32)
    tr, va, te = _split_indices(y, seed)
    return {"train": (x[tr], y[tr]), "val": (x[va], y[va]), "test": (x[te], y[te])}


def _place(canvas: np.ndarray, img: np.ndarray, r: int, c: int) -> None:
    h, w = img.shape
    np.maximum(canvas[r:r + h, c:c + w], img, out=canvas[r:r + h, c:c + w])


def digits_canvas(seed: int = 0, canvas: int = 16, upsample: int = 1, n_clutter: int = 3,
                  copies: int = 2) -> dict:
    """Each source digit is placed ``copies`` times at random positions with clutter."""
    base = digits(seed)
    rng = np.random.default_rng(seed + 1000)
    out = {}
    for split, (x, y) in base.items():
        imgs = x[..., 0]
        if upsample > 1:
            imgs = imgs.repeat(upsample, 1).repeat(upsample, 2)
        size = imgs.shape[1]
        if size > canvas:
            raise ValueError(f"digits_canvas: canvas {canvas} smaller than digit {size}")
        n = len(imgs) * copies
        xs = np.zeros((n, canvas, canvas), np.float32)
        ys = np.tile(y, copies)
        for i in range(n):
            for _ in range(n_clutter):  # fragments of other digits from the same split
                j = rng.integers(len(imgs))
                fr, fc = rng.integers(0, size - 3 * upsample + 1, 2)
                frag = imgs[j, fr:fr + 3 * upsample, fc:fc + 3 * upsample]
                _place(xs[i], frag, *rng.integers(0, canvas - frag.shape[0] + 1, 2))
            _place(xs[i], imgs[i % len(imgs)], *rng.integers(0, canvas - size + 1, 2))
        out[split] = (xs[..., None], ys.astype(np.int32))
    return out


DIRECTIONS = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)]


def moving_digits(seed: int = 0, frames: int = 8, canvas: int = 16, copies: int = 1,
                  noise: float = 0.05) -> dict:
    """Clips [n, T, canvas, canvas, 1]; label = motion direction (8 classes)."""
    base = digits(seed)
    rng = np.random.default_rng(seed + 2000)
    out = {}
    for split, (x, _) in base.items():
        imgs = x[..., 0]
        n = len(imgs) * copies
        room = canvas - imgs.shape[1]
        xs = np.zeros((n, frames, canvas, canvas), np.float32)
        ys = rng.integers(0, 8, n).astype(np.int32)
        for i in range(n):
            r, c = rng.integers(0, room + 1, 2)
            dr, dc = DIRECTIONS[ys[i]]
            for t in range(frames):
                _place(xs[i, t], imgs[i % len(imgs)], r, c)
                if not 0 <= r + dr <= room:
                    dr = -dr
                if not 0 <= c + dc <= room:
                    dc = -dc
                r, c = r + dr, c + dc
        xs += noise * rng.standard_normal(xs.shape).astype(np.float32)
        out[split] = (xs[..., None], ys)
    return out


def _smooth_field(rng, n_samples: int, grid: int, kmax: int) -> np.ndarray:
    """Random smooth periodic fields [n, grid, grid], zero mean, unit std."""
    k = np.fft.fftfreq(grid, 1.0 / grid)
    kx, ky = np.meshgrid(k, k, indexing="ij")
    mask = (np.sqrt(kx**2 + ky**2) <= kmax) & ((kx != 0) | (ky != 0))
    spec = (rng.standard_normal((n_samples, grid, grid))
            + 1j * rng.standard_normal((n_samples, grid, grid))) * mask
    f = np.fft.ifft2(spec).real
    f -= f.mean((1, 2), keepdims=True)
    return f / (f.std((1, 2), keepdims=True) + 1e-12)


def pde_fields(seed: int = 0, n_traj: int = 96, grid: int = 16, n_frames: int = 14,
               save_every: int = 4, dt: float = 0.05, nu: float = 0.01,
               kappa0: float = 0.05) -> np.ndarray:
    """Trajectories [n_traj, n_frames, grid, grid, 2] (ch 0 tracer, ch 1 heat)."""
    rng = np.random.default_rng(seed + 3000)
    k = np.fft.fftfreq(grid, 1.0 / grid)  # domain [0, 2 pi)
    kx, ky = np.meshgrid(k, k, indexing="ij")
    ikx, iky, k2 = 1j * kx, 1j * ky, kx**2 + ky**2
    dealias = (np.abs(kx) < grid / 3) & (np.abs(ky) < grid / 3)
    psi_h = np.fft.fft2(_smooth_field(rng, n_traj, grid, 3))
    u = np.fft.ifft2(iky * psi_h).real  # u = d psi / dy, v = -d psi / dx: divergence-free
    v = -np.fft.ifft2(ikx * psi_h).real
    speed = np.sqrt(u**2 + v**2).max((1, 2), keepdims=True)
    u, v = u / speed, v / speed  # max speed 1
    kappa = kappa0 * (1.0 + 0.8 * np.tanh(_smooth_field(rng, n_traj, grid, 2)))

    def rhs(c, temp):
        ch = np.fft.fft2(c)
        cx, cy = np.fft.ifft2(ikx * ch).real, np.fft.ifft2(iky * ch).real
        adv = np.fft.fft2(u * cx + v * cy) * dealias
        dc = np.fft.ifft2(-adv - nu * k2 * ch).real
        th = np.fft.fft2(temp)
        fx = kappa * np.fft.ifft2(ikx * th).real
        fy = kappa * np.fft.ifft2(iky * th).real
        dtemp = np.fft.ifft2(ikx * np.fft.fft2(fx) + iky * np.fft.fft2(fy)).real
        return dc, dtemp

    c = _smooth_field(rng, n_traj, grid, 4)
    temp = _smooth_field(rng, n_traj, grid, 4)
    frames = []
    for i in range(n_frames * save_every):
        if i % save_every == 0:
            frames.append(np.stack([c, temp], -1))
        k1 = rhs(c, temp)
        k2_ = rhs(c + 0.5 * dt * k1[0], temp + 0.5 * dt * k1[1])
        k3 = rhs(c + 0.5 * dt * k2_[0], temp + 0.5 * dt * k2_[1])
        k4 = rhs(c + dt * k3[0], temp + dt * k3[1])
        c = c + dt / 6 * (k1[0] + 2 * k2_[0] + 2 * k3[0] + k4[0])
        temp = temp + dt / 6 * (k1[1] + 2 * k2_[1] + 2 * k3[1] + k4[1])
    return np.stack(frames, 1).astype(np.float32)


def pde_pairs(traj: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-step pairs: x = [f_{t-1}, f_t] (4 channels), y = f_{t+1} (2 channels)."""
    xs = np.concatenate([traj[:, :-2], traj[:, 1:-1]], -1)  # [n, T-2, H, W, 4]
    ys = traj[:, 2:]
    return xs.reshape(-1, *xs.shape[2:]), ys.reshape(-1, *ys.shape[2:])


def pde_splits(seed: int = 0, n_traj: int = 96, grid: int = 16, n_frames: int = 14) -> dict:
    """Trajectory-level 60/20/20 split: {"train"|"val"|"test": trajectories}."""
    traj = pde_fields(seed, n_traj, grid, n_frames)
    n1, n2 = int(0.6 * n_traj), int(0.8 * n_traj)
    return {"train": traj[:n1], "val": traj[n1:n2], "test": traj[n2:]}


def moving_digits_forecast(seed: int = 0, frames_in: int = 4, frames_out: int = 4,
                           canvas: int = 16, speeds: tuple[int, ...] = (1, 2),
                           copies: int = 1) -> dict:
    """Next-frames video prediction: x = frames [0, T_in), y = frames [T_in, T_in + T_out).

    A digit moves at a constant velocity (one of 8 directions times ``speeds`` pixels per
    frame) and bounces off the canvas edges. Noise-free, so persistence (repeat the last
    input frame) and the model are compared on the dynamics alone.

    Returns:
        {"train"|"val"|"test": (x [n, T_in, H, W, 1], y [n, T_out, H, W, 1])}.
    """
    base = digits(seed)
    rng = np.random.default_rng(seed + 4000)
    total = frames_in + frames_out
    out = {}
    for split, (x, _) in base.items():
        imgs = x[..., 0]
        n = len(imgs) * copies
        room = canvas - imgs.shape[1]
        if room < 1:
            raise ValueError(f"moving_digits_forecast: canvas {canvas} must exceed the digit "
                             f"size {imgs.shape[1]}")
        xs = np.zeros((n, total, canvas, canvas), np.float32)
        for i in range(n):
            r, c = rng.integers(0, room + 1, 2)
            dr, dc = DIRECTIONS[rng.integers(8)]
            s = int(rng.choice(speeds))
            dr, dc = dr * s, dc * s
            for t in range(total):
                _place(xs[i, t], imgs[i % len(imgs)], r, c)
                r, c = r + dr, c + dc
                if not 0 <= r <= room:  # reflect off the edge
                    r = -r if r < 0 else 2 * room - r
                    dr = -dr
                if not 0 <= c <= room:
                    c = -c if c < 0 else 2 * room - c
                    dc = -dc
        out[split] = (xs[:, :frames_in, ..., None], xs[:, frames_in:, ..., None])
    return out
