"""Matplotlib (Agg) figures for E1-E6; each function writes PNGs and returns their paths."""

from __future__ import annotations

import pathlib

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_e1(res: dict, outdir: pathlib.Path) -> list[str]:
    """Loss vs t (log), CCA sum vs t, G vs L (log-log), per teacher and N."""
    plt = _plt()
    paths = []
    for kind, r in res.items():
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        ns = [n for n in r if n != "baselines"]
        for i, n in enumerate(ns):
            met = r[n]["metrics"]
            col = f"C{i}"
            for s in range(met["loss"].shape[0]):
                lab = f"N={n}" if s == 0 else None
                axes[0].semilogy(met["time"][s], met["loss"][s], color=col, alpha=0.6, label=lab)
                axes[1].plot(met["time"][s], met["cca_sum"][s], color=col, alpha=0.6, label=lab)
                axes[2].loglog(met["loss"][s, 1:], met["grad_sq"][s, 1:], ".", color=col,
                               ms=2, alpha=0.5, label=lab)
        axes[0].axhline(1e-2 * r[ns[0]]["metrics"]["loss"][:, 0].mean(), color="k", ls=":",
                        label="L(mu_0)/100")
        axes[0].set(xlabel="t = eta * step", ylabel="L(mu_t) (train batch)",
                    title=f"E1 {kind}: closed-form optimum is 0")
        axes[1].set(xlabel="t", ylabel="sum rho_i^2 (CCA)", title="features learned (k at optimum)")
        axes[2].set(xlabel="L(mu_t)", ylabel="G(t) = (1/N) sum |V_j|^2", title="G vs L")
        for ax in axes:
            ax.legend(fontsize=7)
        fig.tight_layout()
        p = outdir / f"e1_{kind}.png"
        fig.savefig(p, dpi=90)
        plt.close(fig)
        paths.append(str(p))
    return paths


def plot_e2_e4(res_e1: dict, res_e4: dict | None, outdir: pathlib.Path) -> list[str]:
    """ICL risk vs n: trained MLP+LSA, frozen random MLP, true features, LSA(x, 1)."""
    plt = _plt()
    paths = []
    for kind, r in res_e1.items():
        base = r["baselines"]
        ns = base["n"][:-1]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.loglog(ns, base["true_feats"][:-1], "k-o", label="true features R*_n")
        ax.loglog(ns, base["lsa_x1"][:-1], "r-s", label="linear attention alone (x,1)")
        for i, n in enumerate(k for k in r if k != "baselines"):
            ax.loglog(ns, r[n]["icl"].mean(0), f"C{i}--^", label=f"E2 trained MLP+LSA N={n}")
        first = next(k for k in r if k != "baselines")
        ax.loglog(ns, r[first]["icl_frozen"].mean(0), "C7:x", label="frozen random MLP")
        if res_e4 is not None and kind == "t2":
            ax.loglog(res_e4["n"], res_e4["learned_gamma"], "m-d",
                      label=f"E4 prompt-SGD, learned Gamma (n_train={res_e4['train_n']})")
            ax.loglog(res_e4["n"], res_e4["refit_gamma"], "m:d", label="E4, Gamma*_n refit")
        ax.set(xlabel="prompt length n", ylabel="ICL risk", title=f"ICL risk vs n ({kind})")
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = outdir / f"icl_{kind}.png"
        fig.savefig(p, dpi=90)
        plt.close(fig)
        paths.append(str(p))
    return paths


def plot_e3(res: dict, outdir: pathlib.Path) -> list[str]:
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    info = res.get("info", {})
    runs = {k: v for k, v in res.items() if k != "info"}
    for i, (name, met) in enumerate(runs.items()):
        axes[0].semilogy(met["time"], met["loss_tf"], f"C{i}", label=name)
        if name != "static":
            axes[1].semilogy(met["time"], met["gamma_err"], f"C{i}", label=name)
            axes[2].semilogy(met["time"], np.maximum(met["excess"], 1e-12), f"C{i}", label=name)
    title = "E3 joint GD vs exact Gamma_mu"
    if info:
        title += f" (eta_0={info['eta0']:.2g}, adaptive)"
    axes[0].set(xlabel="t", ylabel="L_TF(mu_t, Gamma_t)", title=title)
    axes[1].set(xlabel="t", ylabel="|Gamma_t - Gamma_mu_t|_F / |Gamma_mu_t|_F")
    axes[2].set(xlabel="t", ylabel="L_TF - L (Gamma-error part)")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    p = outdir / "e3_two_timescale.png"
    fig.savefig(p, dpi=90)
    plt.close(fig)
    return [str(p)]


def plot_e5(res: dict, outdir: pathlib.Path) -> list[str]:
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    met = res["metrics"]
    labels = [f"eps={e:.0e}" for e in res["eps"]] + ["eps=0 (symmetric)", "arm B (5% generic)"]
    for i, lab in enumerate(labels):
        axes[0].semilogy(met["time"], met["loss"][i], label=lab)
    axes[0].axhline(0.5 * res["L_S"], color="k", ls=":", label="L_S / 2")
    axes[0].set(xlabel="t", ylabel="L", title=f"E5 escape from the saddle (L_S={res['L_S']:.4f})")
    eps, t = res["eps"], res["t_escape"]
    ok = np.isfinite(t)
    lin = np.asarray(res.get("linear", np.ones_like(ok)), bool)
    axes[1].plot(np.log(1 / eps[ok & lin]), t[ok & lin], "o", label="measured T(eps), fitted")
    if (ok & ~lin).any():
        axes[1].plot(np.log(1 / eps[ok & ~lin]), t[ok & ~lin], "x", label="eps > 1e-3 (not fitted)")
    if np.isfinite(res["predicted_slope"]) and (ok & lin).any():
        xs = np.log(1 / eps)
        c = np.mean(t[ok & lin] - res["predicted_slope"] * xs[ok & lin])
        axes[1].plot(xs, res["predicted_slope"] * xs + c, "k--",
                     label=f"slope 1/|lambda_min| = {res['predicted_slope']:.3g}")
        if np.isfinite(res["fit"]["slope"]):
            axes[1].plot(xs, res["fit"]["slope"] * xs + res["fit"]["const"], "r:",
                         label=f"fit {res['fit']['slope']:.3g}")
    axes[1].set(xlabel="log(1/eps)", ylabel="plateau time T(eps)", title="T vs log(1/eps)")
    axes[2].semilogx(res["homotopy_scales"], res["homotopy_curv"], "o-")
    axes[2].axhline(0, color="k", lw=0.5)
    axes[2].set(xlabel="mass scale c", ylabel="d2/ds2 L((1-s)h + s c f_o)",
                title="mixture (homotopy) curvature at the saddle")
    for ax in axes[:2]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    p = outdir / "e5_saddle.png"
    fig.savefig(p, dpi=90)
    plt.close(fig)
    return [str(p)]


def plot_e6(res: dict, outdir: pathlib.Path) -> list[str]:
    plt = _plt()
    rows = res["rows"]
    t = [r["time"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(t, [r["lambda_min"] for r in rows], "b-o", label="lambda_min(N Hess)")
    ax2 = ax.twinx()
    ax2.semilogy(t, [r["loss"] for r in rows], "k--", label="L")
    ax2.semilogy(t, [r["grad_sq"] for r in rows], "g:", label="G")
    ax.axhline(0, color="b", lw=0.5)
    ax.set(xlabel="t", ylabel="lambda_min", title="E6 lambda_min along a T2 trajectory")
    ax.legend(loc="upper right", fontsize=7)
    ax2.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    p = outdir / "e6_hessian.png"
    fig.savefig(p, dpi=90)
    plt.close(fig)
    return [str(p)]


def plot_e7(res: dict, outdir: pathlib.Path) -> list[str]:
    """E7: loss vs t from the saddle for each perturbation strategy."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, arm in res["arms"].items():
        ax.semilogy(arm["time"], arm["loss"], label=f"{name} (T={arm['t_escape']:.3g})")
    ax.axhline(0.5 * res["L_S"], color="k", ls=":", label="L_S / 2")
    ax.set(xlabel="t", ylabel="L", title=f"E7 perturbations from the saddle (sigma={res['sigma']:g})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    p = outdir / "e7_perturbations.png"
    fig.savefig(p, dpi=90)
    plt.close(fig)
    return [str(p)]
