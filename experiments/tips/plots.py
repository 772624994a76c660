"""Introspective Tips figure: normalised score vs trial (matplotlib, Agg)."""

from __future__ import annotations


def plot_score_vs_trial(summary, path) -> None:
    """Normalised score (95% CI band) vs trial per (scenario, method), saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    keys = sorted({(r["scenario"], r["method"]) for r in summary})
    for scn, m in keys:
        rows = sorted((r for r in summary if (r["scenario"], r["method"]) == (scn, m)),
                      key=lambda r: r["trial"])
        xs = [r["trial"] + 1 for r in rows]
        ys = [r["norm_score"] for r in rows]
        lo = [r["norm_score_ci"][0] for r in rows]
        hi = [r["norm_score_ci"][1] for r in rows]
        ax.plot(xs, ys, marker="o", label=f"{scn} {m}")
        ax.fill_between(xs, lo, hi, alpha=0.12)
    ax.set_xlabel("trial")
    ax.set_ylabel("normalised score (95% CI)")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
