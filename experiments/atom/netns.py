"""The measured Atom-vs-pipeline sweep over tc-shaped links and its cost-model predictions
(shared by ``experiments.atom_netns`` and the reproduction entry ``experiments.repro_atom``;
no flags here, so both can import it). See ``experiments/atom_netns.py`` for what is measured.
"""

from __future__ import annotations

import math
import pathlib
import time

# model sizes: overrides of gptj-tiny_test (vocab 256); "wide" has ~6x the parameters
SIZES = {
    "tiny": ("n_layers=2",),
    "wide": ("n_layers=4", "d_model=128", "head_dim=32", "d_ff=256"),
}
ENGINES = ("atom", "pipe_blocking", "pipe_overlap")

ATOM_BATCH, PIPE_BATCH, SEQ, MATCHMAKING_S = 8, 4, 32, 0.5


def n_params(size: str) -> tuple[int, int]:
    """(parameter count, d_model) of a ``SIZES`` entry."""
    import jax

    from jaxlm.core import MODELS, init
    from jaxlm.utils.config import apply_overrides

    cfg = apply_overrides(MODELS.get("gptj-tiny_test"), list(SIZES[size]))
    shapes = jax.eval_shape(lambda: init(jax.random.key(0), cfg))
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))), cfg.d_model


def predict(row: dict, n_par: int, peers: int, period: int) -> None:
    """Adds the cost model's predictions and errors to a measured row (in place)."""
    from jaxlm.offload import netsim as ns

    b_tcp = row["tcp_mbit"] * 1e6 / 8
    net = ns.Network(bandwidth=b_tcp, efficiency=1.0, latency=0.0)
    pred, err = {}, {}
    if "atom" in row:
        a = row["atom"]
        # the spec's cost model: compute + an all-reduce at the measured TCP rate, no
        # protocol term (hivemind's per-round matchmaking/framing shows up as the error)
        t = ns.local_sgd_step_time(a["compute_s_per_step"], n_par, 4.0, peers, net, period)
        pred["atom"] = peers * a["batch"] * a["seq"] / t
        pred["atom_round_s"] = ns.allreduce_time(peers, n_par, 4.0, net)
        row["atom_protocol_s"] = a["round_s"] - pred["atom_round_s"]
    for eng in ("pipe_blocking", "pipe_overlap"):
        if eng not in row:
            continue
        p = row[eng]
        t = ns.gpipe_schedule_time(p["fwd_s"], p["bwd_s"], p["act_bytes"], p["micro"], b_tcp,
                                   comm=p["comm"], update=p["update_s"])
        pred[eng] = p["micro"] * p["batch"] * p["seq"] / t
    for eng in ENGINES:
        if eng in row and eng in pred:
            err[eng] = pred[eng] / row[eng]["tokens_per_s"] - 1
    row["pred_tokens_per_s"], row["pred_error"] = pred, err


def crossover(rows: list[dict], n_par: int, d_model: int, peers: int, period: int) -> dict:
    """Measured ratios and the cost model's answer to "what would Atom need" per rate."""
    from jaxlm.offload import netsim as ns

    out = []
    for r in rows:
        if "atom" not in r:
            continue
        pipes = {e: r[e]["tokens_per_s"] for e in ("pipe_blocking", "pipe_overlap") if e in r}
        if not pipes:
            continue
        best = max(pipes.values())
        a = r["atom"]
        net = ns.Network(bandwidth=r["tcp_mbit"] * 1e6 / 8, efficiency=1.0, latency=0.0)
        # per peer over the measured window: steps * t_step + rounds * t_round = window, so
        # the effective (mean) step and round times reproduce the measured tokens/s exactly
        k = a["batch"] * a["seq"]
        steps = a["tokens_per_s"] * a["window_s"] / (peers * k)
        t_step = a["window_s"] * (1 - a["sync_fraction"]) / steps
        t_round = (a["sync_fraction"] * a["window_s"] / a["n_rounds_per_peer"]
                   if a["n_rounds_per_peer"] > 0 else a["round_s"])
        h_need = ns.local_sgd_period_to_beat(t_step, n_par, 4.0, peers, net, k, best,
                                             sync_time=t_round)
        out.append({"rate_mbit": r["rate_mbit"],
                    "measured_ratio": {e: a["tokens_per_s"] / v for e, v in pipes.items()},
                    "atom_step_s": t_step, "atom_round_s": t_round,
                    "model_allreduce_s": ns.allreduce_time(peers, n_par, 4.0, net),
                    "atom_compute_only_tokens_per_s": peers * k / t_step,
                    "best_pipeline_tokens_per_s": best,
                    "period_needed": h_need if math.isfinite(h_need) else None})
    ahead = [o["rate_mbit"] for o in out if min(o["measured_ratio"].values()) > 1]
    k = ATOM_BATCH * SEQ * period
    return {"rows": out, "atom_ahead_at_mbit": ahead,
            "bandwidth_bound_ratio": ns.bandwidth_bound_ratio(peers, n_par, d_model, k),
            "tokens_per_round_per_peer": k,
            # tokens per peer per round for Atom to break even in the slow-link limit
            "tokens_per_round_break_even": k / ns.bandwidth_bound_ratio(peers, n_par, d_model,
                                                                        k)}


def analyse(res: dict) -> dict:
    """(Re)computes every row's predictions and each size's crossover from the measured
    fields of a result dict (in place; also for JSON written by an older analysis)."""
    for s in res["sizes"].values():
        for r in s["rows"]:
            predict(r, s["n_params"], res["peers"], res["period"])
        s["crossover"] = crossover(s["rows"], s["n_params"], s["d_model"], res["peers"],
                                   res["period"])
    return res


def plot(res: dict, path: pathlib.Path) -> None:
    """Measured (solid) vs predicted (dashed) tokens/s against link rate, one panel per size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(res["sizes"])
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4.2), squeeze=False)
    style = {"atom": ("C0", "o", "Atom peers"), "pipe_blocking": ("C1", "s", "pipeline, no overlap"),
             "pipe_overlap": ("C2", "^", "pipeline, overlap")}
    for ax, size in zip(axes[0], sizes):
        rows = res["sizes"][size]["rows"]
        x = [r["rate_mbit"] for r in rows]
        for eng, (c, mk, lab) in style.items():
            if not all(eng in r for r in rows):
                continue
            ax.plot(x, [r[eng]["tokens_per_s"] for r in rows], mk + "-", c=c,
                    label=f"{lab} (measured)")
            ax.plot(x, [r["pred_tokens_per_s"][eng] for r in rows], "--", c=c,
                    label=f"{lab} (cost model)")
        ax.plot(x, [r["tcp_mbit"] for r in rows], ":", c="gray", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("link rate (Mbit/s, tc tbf; dotted gray: measured TCP Mbit/s)")
        ax.set_ylabel("tokens/s (all processes)")
        s = res["sizes"][size]
        ax.set_title(f"{size}: {s['n_params'] / 1e3:.0f}k params, d={s['d_model']}; "
                     f"{res['peers']} processes", fontsize=9)
        ax.legend(fontsize=6.5)
    fig.suptitle("solid: measured; dashed: netsim fed with the point's\nmeasured compute "
                 "and TCP throughput", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def table_lines(res: dict) -> list[str]:
    """Markdown rows: rate x size x engine, measured vs predicted, error."""
    lines = ["| size | rate (Mbit/s) | TCP (Mbit/s) | engine | measured tok/s | predicted tok/s "
             "| error | Atom / engine |", "|---|---|---|---|---|---|---|---|"]
    for size, s in res["sizes"].items():
        for r in s["rows"]:
            for eng in ENGINES:
                if eng not in r:
                    continue
                m = r[eng]["tokens_per_s"]
                ratio = (f"{r['atom']['tokens_per_s'] / m:.2f}"
                         if eng != "atom" and "atom" in r else "")
                lines.append(f"| {size} | {r['rate_mbit']:g} | {r['tcp_mbit']:.0f} | {eng} | "
                             f"{m:.0f} | {r['pred_tokens_per_s'][eng]:.0f} | "
                             f"{r['pred_error'][eng]:+.0%} | {ratio} |")
    return lines


def measure(rates: list[float], sizes: list[str], *, peers: int, period: int, micro: int,
            quick: bool, delay_ms: float, workdir: pathlib.Path, engines=ENGINES,
            log=print) -> dict:
    """Runs every (size, rate, engine) point in one topology; returns the result dict."""
    import os

    from jaxlm.offload import netns

    a_steps, p_steps = (3 * period + 2, 6) if quick else (4 * period + 5, 12)
    stale = netns.cleanup()  # leftovers of earlier crashed runs
    t_start = time.time()
    res: dict = {"peers": peers, "period": period, "micro": micro, "delay_ms": delay_ms,
                 "quick": quick, "atom_steps": a_steps, "pipe_steps": p_steps,
                 "matchmaking_s": MATCHMAKING_S, "stale_cleaned": stale, "sizes": {},
                 "order": "engines alternate their order from one rate to the next",
                 "loadavg_start": os.getloadavg()}
    i_point = 0
    with netns.Topology(peers, None, 0.0) as topo:
        for size in sizes:
            n_par, d_model = n_params(size)
            rows = []
            for rate in rates:
                topo.shape(rate, delay_ms)
                nbytes = int(min(max(rate * 1e6 / 8 * 1.0, 1e6), 32e6))
                probe = netns.measure_transfer(topo, 0, 1, nbytes)
                row: dict = {"rate_mbit": rate, "tcp_mbit": nbytes * 8 / probe / 1e6,
                             "loadavg": os.getloadavg()}
                order = list(engines) if i_point % 2 == 0 else list(engines)[::-1]
                i_point += 1
                for eng in order:
                    t0 = time.time()
                    if eng == "atom":
                        row[eng] = netns.atom_point(
                            topo, str(workdir / "hive"), steps=a_steps, batch=ATOM_BATCH,
                            seq=SEQ, period=period, overrides=SIZES[size],
                            matchmaking_s=MATCHMAKING_S)
                        row[eng].pop("raw", None)
                    else:
                        row[eng] = netns.pipeline_point(
                            topo, steps=p_steps, micro=micro, batch=PIPE_BATCH, seq=SEQ,
                            overrides=SIZES[size], comm=eng.split("_", 1)[1])
                    row[eng]["wall_s"] = time.time() - t0
                row["order"] = order
                predict(row, n_par, peers, period)
                rows.append(row)
                log(f"{size} {rate:g} Mbit/s (tcp {row['tcp_mbit']:.0f}): " + ", ".join(
                    f"{e} {row[e]['tokens_per_s']:.0f} tok/s "
                    f"(pred {row['pred_error'][e]:+.0%})" for e in engines))
            res["sizes"][size] = {"overrides": list(SIZES[size]), "n_params": n_par,
                                  "d_model": d_model, "rows": rows,
                                  "crossover": crossover(rows, n_par, d_model, peers, period)}
    res["wall_s"] = time.time() - t_start
    res["loadavg_end"] = os.getloadavg()
    res["leftover_netns"] = netns.leftovers()[0]
    return res


