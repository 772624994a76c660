"""Reproduction entry: Atom's "up to 20x over decentralized pipeline parallelism" examined.

Measured: Atom-style peers (hivemind local SGD over swap trainers) vs a GPipe pipeline with
and without communication/compute overlap, 2 processes in network namespaces over tc-shaped
links (quick: 10 and 1000 Mbit/s x the tiny model; full: 10..1000 Mbit/s x two sizes), each
point with the cost model's prediction (fed with the point's measured compute and TCP
throughput) and its error (``experiments.atom_netns``).
Simulated only: the section-4 cost model (``jaxlm.offload.netsim``) reproduces the spec's
scenario tables and sweeps link bandwidth to show where 20x appears (slow links, a
pipeline that does not overlap its fp32 activation traffic, small models, Atom's sync
amortised) and where Atom loses (blocking full-model sync every 512 sequences).
Measured (small scale, CPU): the swap executor's overlap efficiency on a small GPT
(``experiments.bench_offload --quick --single`` in a subprocess with 2 CPU devices: the
copy-engine thread does real memcpys while XLA computes on the other core), with a
timeline of one step. The 20x itself is not measured at scale, and the GPU swap overlap
(``bench_offload --gpu_large``) is not measured unless a GPU run is added.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np

from jaxlm.utils.report import Claim, RunContext, Section

NAME = "atom"
TITLE = "Atom: swap-scheduled full replicas vs decentralized pipeline (the 20x claim)"


def _plot_sweep(ctx: RunContext) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxlm.offload import netsim as ns

    bws = np.geomspace(10, 10000, 25)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, m in ns.GPT3.items():
        rows = ns.sweep(m, bws, scenario="C-deep", n_peers=8)
        axes[0].plot(bws, [r["speedup"] for r in rows], label=name)
        rows_a = ns.sweep(m, bws, scenario="A", n_peers=8)
        axes[1].plot(bws, [r["speedup"] for r in rows_a], label=name)
    for ax, t in zip(axes, ["C-deep: SWARM deep pipeline, no overlap, fp32 act., 20 ms/hop;\n"
                            "Atom sync overlapped, B_g=4096",
                            "A: idealised SWARM (overlap, fp16);\nAtom blocking all-reduce every "
                            "512 seqs"]):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axhline(20, ls="--", c="r", lw=0.8)
        ax.axhline(1, ls=":", c="k", lw=0.8)
        ax.set_xlabel("link bandwidth (Mb/s)")
        ax.set_ylabel("Atom / SWARM throughput")
        ax.set_title(t, fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = ctx.outdir / "atom_sweep.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _netns_points(ctx: RunContext) -> tuple[dict, list[str], list[str]]:
    """Atom vs pipeline measured over tc-shaped links (network namespaces), where supported,
    each point with the cost model's prediction and its error.

    Runs ``experiments.atom_netns`` in a subprocess (it needs root, ``ip`` and ``tc``): quick,
    10 and 1000 Mbit/s x the tiny model; full, 10, 30, 100, 300, 1000 Mbit/s x the tiny and
    the ~6x wider model. Otherwise returns one line saying why it was skipped.

    Returns:
        (metrics, markdown lines for the extra section, plot file names under ctx.outdir).
    """
    from experiments.atom.netns import analyse, table_lines
    from jaxlm.offload import netns

    head = "\n### Measured: Atom peers vs GPipe over tc-shaped links, with predictions\n"
    try:
        netns.check_support()
    except netns.NetnsUnavailable as e:
        return {"skipped": str(e)}, [head, f"skipped: {e}"], []
    out = ctx.outdir / "netns"
    rates, sizes = ("10,1000", "tiny") if ctx.quick else ("10,30,100,300,1000", "tiny,wide")
    cmd = [sys.executable, "-m", "experiments.atom_netns", f"--rates_mbit={rates}",
           f"--sizes={sizes}", f"--workdir={out}"] + (["--quick"] if ctx.quick else [])
    try:
        subprocess.run(cmd, check=True, timeout=900 if ctx.quick else 3600,
                       capture_output=True)
        res = analyse(json.loads((out / "atom_netns.json").read_text()))
    except (subprocess.SubprocessError, OSError, ValueError, KeyError) as e:
        netns.cleanup()
        err = str(e)[:300]
        if isinstance(e, subprocess.CalledProcessError) and e.stderr:
            err += " | " + e.stderr.decode(errors="replace")[-500:]
        return {"error": err}, [head, f"measurement failed: {err}"], []
    shutil.copyfile(out / "atom_netns.png", ctx.outdir / "atom_netns.png")
    lines = [head, f"{res['peers']} processes, each in its own network namespace, links shaped "
             "by tc tbf (both directions). atom = hivemind local-SGD peers (Atom-style swap "
             f"trainers, {8} x 32 tokens per step, parameters averaged every {res['period']} "
             f"steps); pipe_blocking / pipe_overlap = {res['peers']}-stage GPipe "
             f"({res['micro']} micro-batches of 4 x 32 tokens) without / with "
             "communication-compute overlap. Predicted = the cost model (netsim) fed with the "
             "point's own measured compute times and measured TCP throughput; error = "
             "predicted / measured - 1. The engines alternate their order from rate to rate "
             "so that load from other jobs hits both alike"
             + (" (load average during the run: "
                f"{res['loadavg_start'][0]:.1f} -> {res['loadavg_end'][0]:.1f})." ), "",
             *table_lines(res), ""]
    for size, sz in res["sizes"].items():
        c = sz["crossover"]
        need = "; ".join(
            f"{o['rate_mbit']:g} Mbit/s: "
            + (f"H >= {o['period_needed']:.1f}" if o["period_needed"] is not None else
               f"no H (steps alone {o['atom_compute_only_tokens_per_s']:.0f} < pipeline "
               f"{o['best_pipeline_tokens_per_s']:.0f} tok/s)")
            for o in c["rows"])
        lines.append(
            f"- **{size}** ({sz['n_params'] / 1e3:.0f}k params, d = {sz['d_model']}): Atom ahead "
            "of both pipelines at "
            + (", ".join(f"{r:g}" for r in c["atom_ahead_at_mbit"]) + " Mbit/s"
               if c["atom_ahead_at_mbit"] else "no measured rate")
            + f". Averaging period H* at which Atom would match the better pipeline (from the "
            f"point's measured mean step and round times; configured H = {res['period']}): "
            f"{need}. Slow-link limit "
            f"(bandwidth alone): Atom / pipeline = N^2 k d / ((N-1) P) = "
            f"{c['bandwidth_bound_ratio']:.2f} at k = {c['tokens_per_round_per_peer']} tokens "
            f"per peer per round (break-even k = {c['tokens_per_round_break_even']:.0f}).")
    return {"sizes": res["sizes"], "wall_s": res["wall_s"], "period": res["period"],
            "loadavg": [res["loadavg_start"], res["loadavg_end"]]}, lines, ["atom_netns.png"]


def run(ctx: RunContext) -> Section:
    from jaxlm.offload import netsim as ns

    ctx.outdir.mkdir(parents=True, exist_ok=True)
    bar = ctx.bar(4, "atom")
    rows, worst = [], 0.0
    for sc in ns.SCENARIOS:
        table = ns.scenario_table(sc)
        for cfg, printed in ns.SPEC_TABLES[sc].items():
            got = list(table[cfg].values())
            err = max(abs(g - p) for g, p in zip(got, printed))
            worst = max(worst, err)
            rows.append({"scenario": sc, "config": cfg,
                         "simulated": " / ".join(f"{g:.1f}" for g in got),
                         "spec": " / ".join(f"{p:.1f}" for p in printed),
                         "max abs diff": round(err, 3)})
    bar.update()
    plot = _plot_sweep(ctx)
    bar.update()
    m = ns.GPT3["1.3B"]
    bws = [10, 25, 50, 100, 200, 500, 1000, 10000]
    deep = ns.sweep(m, bws, "C-deep", 8)
    a = ns.sweep(m, bws, "A", 8)
    cross20 = [r["bw_mbps"] for r in deep if r["speedup"] >= 20]
    loses = [r["bw_mbps"] for r in a if r["speedup"] < 1]
    # measured small-scale point (subprocess: needs 2 CPU devices for real copies)
    measured: dict = {}
    outdir = ctx.outdir / "bench"
    cmd = [sys.executable, "-m", "experiments.bench_offload", "--quick", "--single",
           "--repeats=3", f"--out_dir={outdir}"]
    plots = []
    try:
        subprocess.run(cmd, check=True, timeout=600, capture_output=True)
        res = json.loads((outdir / "offload.json").read_text())["results"]
        measured = {"bandwidth": res["bandwidth"][0], "micro": res["copy_compute_overlap"][0],
                    "contention": res.get("contention"),
                    **{k: v for k, v in res["swap"].items()
                       if k not in ("per_submodel", "serial_phases")}}
        if res.get("timeline_png"):
            src = pathlib.Path(res["timeline_png"])
            dst = ctx.outdir / "atom_swap_timeline.png"
            shutil.copyfile(src, dst)
            plots.append(dst.name)
    except (subprocess.SubprocessError, OSError, KeyError, IndexError) as e:
        measured = {"error": str(e)[:300]}
    bar.update()
    extra = ["### Sweep, 1.3B, N = 8 (simulated only: the cost model, not a measurement)\n",
             "| bw (Mb/s) | C-deep speedup | A speedup | Atom sync fraction (A) |",
             "|---|---|---|---|"]
    for rd, ra in zip(deep, a):
        extra.append(f"| {rd['bw_mbps']:g} | {rd['speedup']:.1f} | {ra['speedup']:.2f} | "
                     f"{ra['atom_sync_fraction']:.2f} |")
    extra.append("\n### Measured swap point (CPU, GPT-like d=512 x 6 blocks, 1 block per "
                 "sub-model, batch 4 x 64)\n")
    if "error" in measured:
        extra.append(f"measurement failed: {measured['error']}")
    else:
        mi, bw = measured["micro"], measured["bandwidth"]
        extra.append(
            f"devices {measured['devices']}; numpy memcpy {bw['memcpy_GBs']:.1f} GB/s, "
            f"jax.device_put {bw['h2d_pageable_GBs']:.2f} GB/s. Copy-engine thread (real "
            f"memcpy on a second thread, XLA compute on 1 thread): step "
            f"{measured['t_thread'] * 1e3:.1f} ms vs serial loads "
            f"{measured['t_none'] * 1e3:.1f} ms vs staged all-resident compute "
            f"{measured['t_staged_compute_only'] * 1e3:.1f} ms -> eta_swap "
            f"{measured['eta_swap_thread']:.2f} (serial {measured['eta_swap_none']:.2f}); "
            f"forward compute/load per sub-model, measured serially "
            f"{measured.get('compute_over_load_fwd_min', float('nan')):.2f} (min) / "
            f"{measured.get('compute_over_load_fwd_median', float('nan')):.2f} (median); "
            f"section-4.3 prediction from the serial phases "
            f"{measured.get('eta_pred_parallel', float('nan')):.2f}. "
            f"Micro-benchmark: copy {mi['t_copy'] * 1e3:.1f} ms, compute "
            f"{mi['t_compute'] * 1e3:.1f} ms, both {mi['t_both_thread'] * 1e3:.1f} ms -> "
            f"overlap efficiency {mi['overlap_eff_thread']:.2f}. The 2 cores are shared with "
            "other jobs: these timings are noisy (see the benchmark JSON for the load).")
        ct = measured.get("contention")
        if ct:
            extra.append(
                f"\nContention probe: a matmul chain on the compute core takes "
                f"{ct['t_compute_alone'] * 1e3:.1f} ms alone, "
                f"{ct['t_compute_with_memcpy'] * 1e3:.1f} ms while the copy core loops "
                f"memcpys and {ct['t_compute_with_spin'] * 1e3:.1f} ms while it spins on a "
                f"cache-resident kernel (slowdown {ct['slowdown_memcpy']:.2f} / "
                f"{ct['slowdown_spin']:.2f}; above 1, a copy that runs beside the compute "
                "still costs compute time here, which caps eta below the prediction).")
    net_metrics, net_lines, net_plots = _netns_points(ctx)
    extra += net_lines
    plots += net_plots
    bar.update()
    ok_tables = worst <= 0.07
    top20 = max(cross20) if cross20 else 0
    # measured Atom / better-pipeline ratio per (size, rate), and the prediction errors
    pts, errs = [], []
    for size, sz in net_metrics.get("sizes", {}).items():
        for r in sz["rows"]:
            best = max(r[e]["tokens_per_s"] for e in ("pipe_blocking", "pipe_overlap"))
            pts.append((size, r["rate_mbit"], r["atom"]["tokens_per_s"] / best))
            errs += [abs(v) for v in r["pred_error"].values()]
    slowest = {}
    for size, rate, q in pts:
        if size not in slowest or rate < slowest[size][0]:
            slowest[size] = (rate, q)
    ahead = [f"{size} at {rate:g} Mbit/s" for size, rate, q in pts if q > 1]
    eta = measured.get("eta_swap_thread")
    gpu_line = ("not measured on a GPU (no GPU in this run; `python -m experiments.bench_offload "
                "--gpu_large` is the one-command check); the CPU stand-in (copy thread on the "
                "other core) gives eta_swap "
                + (f"{eta:.2f}" if eta is not None else "n/a (" + str(measured.get("error"))
                   + ")"))
    claims = [
        Claim("Atom-style peers beat decentralized pipeline parallelism on slow networks",
              measured=bool(pts), ci_or_exact=False, own_paper=True, circular=False,
              holds=all(q > 1 for _, q in slowest.values()) if pts else None,
              result=("measured over tc-shaped links (2 CPU processes, network namespaces), "
                      "Atom / better pipeline: " + "; ".join(
                          f"{size} {rate:g} Mbit/s {q:.2f}" for size, rate, q in pts)
                      + (f"; Atom ahead: {', '.join(ahead)}" if ahead else
                         "; no crossover: Atom loses at every measured point")
                      + (f"; cost-model prediction error median {np.median(errs):.0%}, max "
                         f"{max(errs):.0%}" if errs else "")
                      if pts else "no multi-peer shaped-link measurement here ("
                      + str(net_metrics.get("skipped") or net_metrics.get("error")) + ")")),
        Claim("up to 20x more efficient than the pipeline (GPT-3 configurations, slow links), "
              "from the section-4 cost model", measured=False, ci_or_exact=True,
              own_paper=True, circular=True, holds=bool(ok_tables), headline=False,
              result=(f"simulated only: our netsim reproduces the spec's tables to <= "
                      f"{worst:.2f} (abs); 20x appears for 1.3B only at <= {top20:g} Mb/s with "
                      "a deep non-overlapped fp32 pipeline and Atom's sync overlapped; a model "
                      "agreeing with tables from the same model")),
        Claim("swapping sub-models hides the host<->device copies behind compute (GPU)",
              measured=False, ci_or_exact=False, own_paper=True, circular=False, holds=None,
              headline=False, result=gpu_line),
    ]
    note = ("The 20x and the scenario tables are simulated only; the verdict follows the "
            "measured points"
            + (f" (with a blocking sync every 512 sequences the model itself has Atom losing at "
               f"{', '.join(f'{b:g}' for b in loses)} Mb/s)." if loses else "."))
    bar.close()
    return Section(
        title=TITLE + " [20x: simulated only]",
        claim="Atom (Wu, Rao, Chen 2024, arXiv:2403.10504): each peer swaps sub-models of a "
              "full LLM between host and GPU, peers train asynchronously over slow Ethernet; "
              "up to 20x more efficient than decentralized pipeline parallelism (SWARM-like) "
              "on slow networks, GPT-3 configurations.",
        setup="Cost model of shared/specs/atom.md section 4 (N = 8 peers, 24 GB GPUs at 25 "
              "TFLOP/s, PCIe 12 GB/s, b = 1 x 2048 tokens, 2 layers per Atom sub-model, link "
              "efficiency 0.6, 610 Mb/s activation cap at >= 1 Gb/s; SWARM depth = smallest "
              "divisor of N whose 16 B/param stage state fits half a GPU). Measured: Atom "
              "peers vs GPipe (blocking / overlapped sends) in network namespaces over tc tbf "
              "links, see the measured table below. Swap point: "
              "jaxlm.offload.swap (thread copy engines) on gptj-tiny_test with 6 blocks of "
              "d=512, one block per sub-model, batch 4 x 64, host SGD, CPU (cpu:0 -> cpu:1; "
              "XLA on one thread, copy/update threads pinned to the other core).",
        table=rows,
        measured=(("Atom / better pipeline tokens/s over tc-shaped links: " + "; ".join(
            f"{size} {rate:g} Mbit/s {q:.2f}" for size, rate, q in pts)
            + (f" (cost-model prediction error median {np.median(errs):.0%}, max "
               f"{max(errs):.0%})" if errs else ""))
            if pts else "no shaped-link measurement here")
        + f"; the 20x: simulated only (cost model vs the spec's tables: max abs diff "
          f"{worst:.2f}, circular); GPU swap overlap: not measured on a GPU.",
        claims=claims,
        note=note,
        command="python -m experiments.reproduce --only=atom" + (" --quick" if ctx.quick else ""),
        plots=[plot, *plots],
        metrics={"max_table_abs_diff": worst, "bw_with_20x_1.3B": cross20,
                 "bw_atom_loses_A_1.3B": loses, "measured": measured,
                 "netns": net_metrics},
        extra="\n".join(extra),
    )
