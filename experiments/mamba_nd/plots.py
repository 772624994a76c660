"""Mamba-ND figures: validation curves per task, PDE and next-frames forecasts (matplotlib)."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from experiments.mamba_nd import experiment as E
from jaxlm.ssm.mamba_nd import NDConfig


def plot_curves(results: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(results["tasks"].items())
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.2), squeeze=False)
    for ax, (tname, rs) in zip(axes[0], tasks, strict=True):
        for r in rs:
            curve = np.asarray(r["val_curve"])  # [E, seeds]
            y = curve.mean(1) * (1 if E.is_forecast(tname) else 100)
            ax.plot(r["curve_steps"], y, marker="o", ms=3, label=f"{r['name']} (lr {r['lr']:g})")
        ax.set_title(tname)
        ax.set_xlabel("step")
        ax.set_ylabel("val RMSE" if E.is_forecast(tname) else "val accuracy %")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_forecast(task: E.Task, mrow: dict, wb, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traj = task.extra["traj"]["test"][:1]
    k = max(mrow["rollout"]) if "rollout" in mrow else 1
    mcfg = NDConfig(**{**mrow["config"], "grid": tuple(mrow["config"]["grid"]),
                       "patch": tuple(mrow["config"]["patch"])})
    p = mrow["_example_params"]
    f_jit = jax.jit(E.predict_fn(mcfg, "forecast", "pde"))
    f_m = lambda x: f_jit(p, x)

    def roll(fn):
        prev, cur = traj[:, 0], traj[:, 1]
        for _ in range(k):
            prev, cur = cur, np.asarray(fn(np.concatenate([prev, cur], -1)))
        return cur[0]

    panels = [("truth", traj[0, 1 + k]), ("Mamba-ND", roll(lambda x: f_m(jnp.asarray(x)))),
              ("ridge", roll(lambda x: E.ridge_predict(wb, x))), ("persistence", traj[0, 1])]
    fig, axes = plt.subplots(2, 4, figsize=(10, 5))
    for j, (name, f) in enumerate(panels):
        for ch in range(2):
            axes[ch, j].imshow(f[..., ch], cmap="RdBu_r", vmin=-2.5, vmax=2.5)
            axes[ch, j].set_xticks([])
            axes[ch, j].set_yticks([])
        axes[0, j].set_title(f"{name}" + ("" if name == "truth" else f" ({k}-step)"), fontsize=9)
    axes[0, 0].set_ylabel("tracer")
    axes[1, 0].set_ylabel("heat")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_video(task: E.Task, mrow: dict, ridge, path: pathlib.Path) -> None:
    """Input frames, true future frames and the Mamba-ND / ridge / persistence forecasts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y = (a[:1] for a in task.data["test"])
    mcfg = NDConfig(**{**mrow["config"], "grid": tuple(mrow["config"]["grid"]),
                       "patch": tuple(mrow["config"]["patch"])})
    f = jax.jit(E.predict_fn(mcfg, "forecast", "video_pred"))
    rows = [("input", x[0]), ("truth", y[0]),
            ("Mamba-ND", np.asarray(f(mrow["_example_params"], jnp.asarray(x)))[0]),
            ("ridge", ridge(x)[0]), ("persistence", E.forecast_base("video_pred", x)[0])]
    t = x.shape[1]
    fig, axes = plt.subplots(len(rows), t, figsize=(1.6 * t, 1.6 * len(rows)), squeeze=False)
    for i, (name, clip) in enumerate(rows):
        for j in range(t):
            axes[i, j].imshow(clip[j, ..., 0], cmap="gray", vmin=0, vmax=1)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
        axes[i, 0].set_ylabel(name, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
