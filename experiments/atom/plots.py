"""Atom figures (matplotlib, Agg): the Gantt chart of one swap step's copy/compute/update
events and the swap-overlap sweep of ``bench_offload``."""

from __future__ import annotations

from jaxlm.offload import engines as eng


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_timeline(events: list[tuple[str, int, float, float]], path: str, title: str = "") -> str:
    """Gantt chart of one step's events (one row per lane), saved as PNG."""
    plt = _plt()
    colors = {"h2d": "tab:blue", "compute": "tab:green", "d2h": "tab:orange",
              "update": "tab:purple", "stall": "tab:red"}
    fig, ax = plt.subplots(figsize=(10, 2.8))
    for row, lane in enumerate(eng.LANES):
        for ln, k, a, b in events:
            if ln != lane:
                continue
            ax.barh(row, (b - a) * 1e3, left=a * 1e3, color=colors[lane], edgecolor="k", lw=0.3)
            if (b - a) * 1e3 > 0.02 * max(e[3] for e in events) * 1e3:
                ax.text((a + b) / 2 * 1e3, row, str(k), ha="center", va="center", fontsize=6)
    ax.set_yticks(range(len(eng.LANES)), eng.LANES)
    ax.set_xlabel("ms since step start (numbers: sub-model index)")
    ax.set_title(title, fontsize=8)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sweep(rows, path: str, title: str) -> str:
    """eta_swap (thread, none, predicted) against the serial compute/load ratio."""
    plt = _plt()
    x = [r["compute_over_load_fwd_median"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(x, [r["eta_swap_thread"] for r in rows], "o-", label="thread (copy engines)")
    ax.plot(x, [r["eta_swap_none"] for r in rows], "s-", label="none (serial)")
    ax.plot(x, [r["eta_pred_parallel"] for r in rows], "k:", label="predicted, parallel lanes")
    ax.plot(x, [r["eta_pred_one_core"] for r in rows], "k--", lw=0.8,
            label="predicted, one copy core")
    for r, xi in zip(rows, x):
        ax.annotate(f"{r['batch']}x{r['seq']}", (xi, r["eta_swap_thread"]), fontsize=7)
    ax.axhline(0.9, c="r", lw=0.8)
    ax.axvline(1.0, c="gray", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("forward compute of k / load of k+1 (serial, median)")
    ax.set_ylabel("eta_swap = staged compute / swap step")
    ax.set_title(f"swap overlap vs compute per sub-model ({title})", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
