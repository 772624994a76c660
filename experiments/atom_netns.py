"""Atom-style data-parallel peers vs the GPipe pipeline over really shaped links.

Each peer / stage process runs in its own network namespace; the namespaces are joined by
veth pairs through a bridge, every link shaped with ``tc tbf`` to --rates_mbit (both
directions; --delay_ms adds netem delay where the kernel has sch_netem). For each rate it
measures raw TCP throughput, tokens/s of --peers hivemind local-SGD peers (``jaxlm.offload.hive``,
averaging every --period steps) and of a --peers-stage GPipe pipeline (``jaxlm.offload.pipeline``,
--micro micro-batches), and compares both with the cost model (``jaxlm.offload.netsim``)
calibrated on the unshaped run: Atom ``t_c + (all-reduce + round overhead) / H``, pipeline
between ``(M + S - 1) (C_s + 2 A / B_eff)`` (spec 4.5, no overlap) and the overlapped,
egress-aware ``(M + S - 1) max(C_s, c A / B_eff)`` (c = 1 for 2 stages, else 2).

Needs root, iproute2 and tc (a clear error otherwise). Namespaces are always removed (also
leftovers of crashed runs, by name prefix ``jxn``). Default run ~3-5 min on 2 CPU cores::

    python -m experiments.atom_netns --workdir=runs/atom_netns
    python -m experiments.atom_netns --rates_mbit=50 --quick   # one rate, short runs
"""

from __future__ import annotations

import json
import pathlib
import time

from absl import app, flags

from jaxlm.utils import cli

_RATES = flags.DEFINE_list("rates_mbit", ["50", "100", "1000"], "Link rates (Mbit/s); an "
                           "unshaped run is always added as the calibration point.")
_DELAY = flags.DEFINE_float("delay_ms", 0.0, "One-way netem delay per egress (0: none).")
_PEERS = flags.DEFINE_integer("peers", 2, "Processes (Atom peers = pipeline stages), 2-4.")
_PERIOD = flags.DEFINE_integer("period", 4, "Atom: local steps between averaging rounds.")
_MICRO = flags.DEFINE_integer("micro", 4, "Pipeline micro-batches per step.")
_QUICK = flags.DEFINE_bool("quick", False, "Fewer steps per point.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/atom_netns", "Output folder.")


def _plot(rows: list[dict], path: pathlib.Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shaped = [r for r in rows if r["rate_mbit"]]
    x = [r["rate_mbit"] for r in shaped]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(x, [r["atom"]["tokens_per_s"] for r in shaped], "o-", c="C0",
            label="Atom peers (measured)")
    ax.plot(x, [r["pred_atom_tokens_per_s"] for r in shaped], "--", c="C0",
            label="Atom (netsim, calibrated)")
    ax.plot(x, [r["pipeline"]["tokens_per_s"] for r in shaped], "s-", c="C1",
            label="pipeline (measured)")
    ax.fill_between(x, [r["pred_pipe_tokens_per_s_no_overlap"] for r in shaped],
                    [r["pred_pipe_tokens_per_s_overlap"] for r in shaped], color="C1",
                    alpha=0.2, label="pipeline (netsim: no overlap .. overlap)")
    base = [r for r in rows if not r["rate_mbit"]]
    if base:
        ax.axhline(base[0]["atom"]["tokens_per_s"], c="C0", lw=0.7, ls=":",
                   label="Atom, unshaped veth")
        ax.axhline(base[0]["pipeline"]["tokens_per_s"], c="C1", lw=0.7, ls=":",
                   label="pipeline, unshaped veth")
    ax.set_xscale("log")
    ax.set_xlabel("link rate (Mbit/s, tc tbf, each direction)")
    ax.set_ylabel("tokens/s (all processes)")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv):
    del argv
    import os

    from jaxlm.offload import netns
    from jaxlm.offload import netsim as ns

    try:
        netns.check_support()
    except netns.NetnsUnavailable as e:
        raise app.UsageError(f"atom_netns cannot run here: {e}") from None
    if not 2 <= _PEERS.value <= 4:
        raise app.UsageError(f"--peers must be 2..4, got {_PEERS.value}")
    try:
        rates = [float(r) for r in _RATES.value]
    except ValueError:
        raise app.UsageError(f"--rates_mbit must be numbers, got {_RATES.value}") from None
    if any(r <= 0 for r in rates):
        raise app.UsageError("--rates_mbit must be > 0")
    out = pathlib.Path(_WORKDIR.value)
    out.mkdir(parents=True, exist_ok=True)
    stale = netns.cleanup()  # leftovers of earlier crashed runs
    a_steps, p_steps = (13, 6) if _QUICK.value else (33, 21)
    rows: list[dict] = []
    t_start = time.time()
    from tqdm import tqdm

    with netns.Topology(_PEERS.value, None, 0.0) as topo:
        for rate in tqdm([None, *rates], desc="atom_netns"):
            topo.shape(rate, _DELAY.value if rate else 0.0)
            nbytes = 2_000_000 if rate and rate < 200 else 8_000_000
            probe = netns.measure_transfer(topo, 0, 1, nbytes)
            atom = netns.atom_point(topo, str(out / "hive"), steps=a_steps,
                                    period=_PERIOD.value)
            pipe = netns.pipeline_point(topo, steps=p_steps, micro=_MICRO.value)
            rows.append({"rate_mbit": rate, "tcp_mbit": nbytes * 8 / probe / 1e6,
                         "atom": atom, "pipeline": pipe})
            tqdm.write(f"rate {rate}: tcp {rows[-1]['tcp_mbit']:.0f} Mbit/s, Atom "
                       f"{atom['tokens_per_s']:.0f} tok/s (round {atom['round_s']:.2f} s), "
                       f"pipeline {pipe['tokens_per_s']:.0f} tok/s")
    # predictions from the unshaped run (compute, round overhead) + the shaped link
    from jaxlm.core import MODELS
    from jaxlm.utils.config import apply_overrides

    cfg = apply_overrides(MODELS.get("gptj-tiny_test"), ["n_layers=2"])
    import jax

    from jaxlm.core import init

    n_params = sum(x.size for x in jax.tree.leaves(jax.eval_shape(
        lambda: init(jax.random.key(0), cfg))))
    b0 = rows[0]
    s_n, m = b0["pipeline"]["stages"], b0["pipeline"]["micro"]
    c_s = b0["pipeline"]["median_step_s"] / (m + s_n - 1)
    a0 = b0["atom"]
    overhead = a0["round_s"]  # unshaped veth: transfer ~0, the rest is protocol
    for r in rows:  # the unshaped row: a self-consistency check at the probed TCP rate
        rate = r["rate_mbit"] or r["tcp_mbit"]
        eff = min(r["tcp_mbit"] / rate, 1.0)
        net = ns.Network(bandwidth=ns.mbps(rate), efficiency=eff,
                         latency=_DELAY.value * 1e-3 if r["rate_mbit"] else 0.0)
        # Atom: N b s tokens per local step of t_c + (all-reduce + round overhead) / H
        a = r["atom"]
        t_step = ns.local_sgd_step_time(a0["compute_s_per_step"], n_params, 4.0, _PEERS.value,
                                        net, _PERIOD.value, overhead)
        r["pred_atom_tokens_per_s"] = _PEERS.value * a["batch"] * a["seq"] / t_step
        act = r["pipeline"]["act_bytes"]
        toks = r["pipeline"]["tokens_per_s"] * r["pipeline"]["median_step_s"]
        # spec section 4.5 as printed (2A per micro-batch, no overlap) .. an egress-aware
        # overlapped bound (a 2-stage pipeline sends A per micro-batch each way)
        t = ns.gpipe_step_time(c_s, act, s_n, m, net, overlap=False)
        r["pred_pipe_tokens_per_s_no_overlap"] = toks / t
        t = ns.gpipe_step_time(c_s, act, s_n, m, net, overlap=True,
                               comm_factor=1.0 if s_n == 2 else 2.0)
        r["pred_pipe_tokens_per_s_overlap"] = toks / t
        r["measured_speedup_atom_over_pipe"] = (r["atom"]["tokens_per_s"]
                                                / r["pipeline"]["tokens_per_s"])
        r["pred_speedup_no_overlap"] = (r["pred_atom_tokens_per_s"]
                                        / r["pred_pipe_tokens_per_s_no_overlap"])
    result = {"peers": _PEERS.value, "period": _PERIOD.value, "micro": _MICRO.value,
              "delay_ms": _DELAY.value, "model": "gptj-tiny_test n_layers=2",
              "n_params": int(n_params), "stale_cleaned": stale, "rows": rows,
              "wall_s": time.time() - t_start, "loadavg": os.getloadavg(),
              "leftover_netns": netns.leftovers()[0]}
    (out / "atom_netns.json").write_text(json.dumps(result, indent=1))
    _plot(rows, out / "atom_netns.png",
          f"{_PEERS.value} processes in network namespaces, gptj-tiny (2 blocks, "
          f"{n_params / 1e3:.0f}k params);\nAtom: local SGD, average every {_PERIOD.value} "
          f"steps; pipeline: GPipe, {m} micro-batches")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))
    print("| rate (Mbit/s) | TCP (Mbit/s) | Atom tok/s | Atom predicted | Atom round s | "
          "Atom sync frac | pipeline tok/s | pipeline predicted (no overlap .. overlap) |")
    for r in rows:
        a, p = r["atom"], r["pipeline"]
        print(f"| {r['rate_mbit'] or 'unshaped'} | {r['tcp_mbit']:.0f} | {a['tokens_per_s']:.0f} | "
              f"{r['pred_atom_tokens_per_s']:.0f} | {a['round_s']:.2f} | "
              f"{a['sync_fraction']:.2f} | {p['tokens_per_s']:.0f} | "
              f"{r['pred_pipe_tokens_per_s_no_overlap']:.0f} .. "
              f"{r['pred_pipe_tokens_per_s_overlap']:.0f} |")


if __name__ == "__main__":
    cli.run(main)
