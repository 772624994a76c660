"""Figures for the TACS experiment (``matplotlib.figure.Figure``; no pyplot state)."""

from __future__ import annotations

import pathlib

import numpy as np


def plot_layer_accuracy(res: dict, path: pathlib.Path) -> str:
    """Probe accuracy per layer (held-out countries) with bootstrap CIs and chance."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.4))
    for k, level in enumerate(("token", "sentence")):
        ax = fig.add_subplot(1, 2, k + 1)
        for name, color in (("known", "C0"), ("unknown", "C1")):
            d = res["layer_acc"].get(f"{level}_{name}")
            if d is None:
                continue
            x = np.arange(len(d["acc"]))
            ax.plot(x, d["acc"], color=color, label=f"{name} facts")
            ax.fill_between(x, d["lo"], d["hi"], color=color, alpha=0.2)
            ax.axhline(d["chance"], color=color, ls=":", lw=1)
        for layer in res["layers"][level]:
            ax.axvline(layer, color="gray", lw=0.5, alpha=0.5)
        if level == "sentence":
            ax.axhline(res["bow_sentence_acc"], color="k", ls="--", lw=1, label="bag of words")
        ax.set_title(f"{level}-level probe (attn_out); grey = voting layers", fontsize=9)
        ax.set_xlabel("layer")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return str(path)


def plot_da(res: dict, path: pathlib.Path) -> str:
    """TA, UR, DA per method with 95% bootstrap CIs (single-information contexts)."""
    from matplotlib.figure import Figure

    rows = [r for r in res["table"] if "TA_lo" in r]
    fig = Figure(figsize=(8, 3.2))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(rows))
    for j, m in enumerate(("TA", "UR", "DA")):
        v = np.array([r[m] for r in rows])
        err = np.array([[r[m] - r[m + "_lo"], r[m + "_hi"] - r[m]] for r in rows]).T
        ax.bar(x + (j - 1) * 0.27, v, 0.27, yerr=err, capsize=2, label=m)
    ax.set_xticks(x, [r["method"] for r in rows], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.set_title("held-out countries: TA (unknown facts), UR (known facts), DA", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return str(path)
