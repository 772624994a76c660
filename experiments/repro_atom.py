"""Reproduction entry: Atom's "up to 20x over decentralized pipeline parallelism" examined.

Simulated: the section-4 cost model (``jaxlm.offload.netsim``) reproduces the spec's
scenario tables and sweeps link bandwidth to show where 20x appears (slow links, a
pipeline that does not overlap its fp32 activation traffic, small models, Atom's sync
amortised) and where Atom loses (blocking full-model sync every 512 sequences).
Measured (small scale, CPU): the swap executor's overlap efficiency on a small GPT
(``experiments.bench_offload --quick --single`` in a subprocess with 2 CPU devices: the
copy-engine thread does real memcpys while XLA computes on the other core), with a
timeline of one step. The 20x itself is not measured at scale.
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
    """Atom vs pipeline measured over tc-shaped links (network namespaces), where supported.

    Runs ``experiments.atom_netns`` in a subprocess (it needs root, ``ip`` and ``tc``) at 50 and
    1000 Mbit/s (quick) or at 5..1000 Mbit/s (full, reaching the predicted crossover);
    otherwise returns one line saying why it was skipped. One model size (gptj-tiny_test,
    2 blocks): atom_netns has no size flag yet.

    Returns:
        (metrics, markdown lines for the extra section, plot file names under ctx.outdir).
    """
    from jaxlm.offload import netns

    head = "\n### Measured Atom vs pipeline over tc-shaped links (network namespaces)\n"
    try:
        netns.check_support()
    except netns.NetnsUnavailable as e:
        return {"skipped": str(e)}, [head, f"skipped: {e}"], []
    out = ctx.outdir / "netns"
    # quick: two rates (the budget); full: the 10..1000 Mbit/s sweep, looking for a crossover
    rates = "50,1000" if ctx.quick else "5,10,25,50,100,200,500,1000"
    cmd = [sys.executable, "-m", "experiments.atom_netns", f"--rates_mbit={rates}",
           f"--workdir={out}"] + (["--quick"] if ctx.quick else [])
    try:
        subprocess.run(cmd, check=True, timeout=400 if ctx.quick else 1800, capture_output=True)
        res = json.loads((out / "atom_netns.json").read_text())
    except (subprocess.SubprocessError, OSError, ValueError) as e:
        netns.cleanup()
        return {"error": str(e)[:300]}, [head, f"measurement failed: {str(e)[:300]}"], []
    shutil.copyfile(out / "atom_netns.png", ctx.outdir / "atom_netns.png")
    lines = [head, "2 processes, gptj-tiny_test with 2 blocks; Atom = hivemind local SGD "
             "averaging every 4 steps, pipeline = 2-stage GPipe with 4 micro-batches; "
             "predictions from the cost model calibrated on the unshaped run.\n",
             "| rate (Mbit/s) | TCP (Mbit/s) | Atom tok/s (predicted) | Atom pred. error | "
             "pipeline tok/s (predicted no-overlap .. overlap) | pipeline pred. error "
             "(no-overlap / overlap) | Atom / pipeline |", "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        a, p = r["atom"], r["pipeline"]
        err_a = r["pred_atom_tokens_per_s"] / a["tokens_per_s"] - 1
        err_p0 = r["pred_pipe_tokens_per_s_no_overlap"] / p["tokens_per_s"] - 1
        err_p1 = r["pred_pipe_tokens_per_s_overlap"] / p["tokens_per_s"] - 1
        r["pred_error"] = {"atom": err_a, "pipe_no_overlap": err_p0, "pipe_overlap": err_p1}
        lines.append(
            f"| {r['rate_mbit'] or 'unshaped'} | {r['tcp_mbit']:.0f} | {a['tokens_per_s']:.0f} "
            f"({r['pred_atom_tokens_per_s']:.0f}) | {err_a:+.0%} | {p['tokens_per_s']:.0f} "
            f"({r['pred_pipe_tokens_per_s_no_overlap']:.0f} .. "
            f"{r['pred_pipe_tokens_per_s_overlap']:.0f}) | {err_p0:+.0%} / {err_p1:+.0%} | "
            f"{a['tokens_per_s'] / p['tokens_per_s']:.2f} |")
    lines.append("\nPrediction error = predicted / measured - 1 (the cost model is calibrated on "
                 "the unshaped run, so that row's error is small by construction). Tiny model "
                 "on CPU: hivemind's per-round matchmaking dominates Atom's ~30 ms steps.")
    try:
        ext = _extrapolate(res)
    except (KeyError, IndexError, ZeroDivisionError, ValueError) as e:
        ext = {"error": f"{type(e).__name__}: {e}"}
    if "error" not in ext:
        top = ext["atom_ahead_below_mbit"]
        lines.append(
            "\n**Crossover (simulated only: the cost model calibrated on the unshaped run, "
            "1..10000 Mbit/s).** "
            + ("the calibrated model puts Atom ahead at every rate, which the measured points "
               "contradict (see the prediction errors)" if ext["atom_ahead_everywhere"] else
               f"Atom would overtake the no-overlap pipeline below {top:.3g} Mbit/s and the "
               "overlapped one "
               + (f"below {ext['atom_ahead_of_overlapped_below_mbit']:.3g} Mbit/s"
                  if ext["atom_ahead_of_overlapped_below_mbit"] else "nowhere in 1..10000 Mbit/s")
               + " (the measured pipeline lies between the two bounds; the crossover is below "
               "the measured rates, so it is a prediction, not a measurement)" if top
               else "Atom never overtakes the pipeline at this model size (best ratio "
               f"{ext['max_ratio']:.2f})")
            + f". Atom pays {ext['compute_s_per_step'] * 1e3:.0f} ms of compute per local "
            f"step plus a {ext['round_s']:.2f} s averaging round (measured on the unshaped "
            f"link, so protocol, not bandwidth) every {res['period']} steps"
            + (": that fixed round cost, not the link, is what loses to the pipeline here."
               if ext["round_s"] / res["period"] > ext["compute_s_per_step"] else "."))
    return {"rows": res["rows"], "extrapolation": ext}, lines, ["atom_netns.png"]


def _extrapolate(res: dict) -> dict:
    """Simulated only: the cost model calibrated on the unshaped netns run, swept over
    1..10000 Mbit/s, to say where (if anywhere) Atom would overtake the pipeline at this
    model size, and why not. Same calibration as ``experiments.atom_netns``."""
    from jaxlm.offload import netsim as ns

    b0 = res["rows"][0]
    a0, p0 = b0["atom"], b0["pipeline"]
    s_n, m = p0["stages"], p0["micro"]
    c_s = p0["median_step_s"] / (m + s_n - 1)
    toks = p0["tokens_per_s"] * p0["median_step_s"]
    peers, period = res["peers"], res["period"]
    shaped = [r for r in res["rows"] if r["rate_mbit"]]
    eff = min(min(r["tcp_mbit"] / r["rate_mbit"], 1.0) for r in shaped) if shaped else 1.0
    out = []
    for rate in np.geomspace(1, 10000, 41):
        net = ns.Network(bandwidth=ns.mbps(rate), efficiency=eff, latency=0.0)
        t_a = ns.local_sgd_step_time(a0["compute_s_per_step"], res["n_params"], 4.0, peers,
                                     net, period, a0["round_s"])
        atom = peers * a0["batch"] * a0["seq"] / t_a
        pipe = [toks / ns.gpipe_step_time(c_s, p0["act_bytes"], s_n, m, net, overlap=ov,
                                          comm_factor=1.0 if s_n == 2 else 2.0)
                for ov in (False, True)]
        out.append({"rate_mbit": float(rate), "ratio_no_overlap": float(atom / pipe[0]),
                    "ratio_overlap": float(atom / pipe[1])})
    above = [r["rate_mbit"] for r in out if r["ratio_no_overlap"] > 1]
    above_ov = [r["rate_mbit"] for r in out if r["ratio_overlap"] > 1]
    return {"rows": out, "efficiency": eff, "round_s": a0["round_s"],
            "compute_s_per_step": a0["compute_s_per_step"],
            "atom_ahead_below_mbit": max(above) if above else None,
            "atom_ahead_of_overlapped_below_mbit": max(above_ov) if above_ov else None,
            "atom_ahead_everywhere": len(above) == len(out),
            "max_ratio": max(r["ratio_no_overlap"] for r in out)}


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
        subprocess.run(cmd, check=True, timeout=240, capture_output=True)
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
    ratios = [r["atom"]["tokens_per_s"] / r["pipeline"]["tokens_per_s"]
              for r in net_metrics.get("rows", []) if r["rate_mbit"]]
    ok_tables = worst <= 0.07
    top20 = max(cross20) if cross20 else 0
    shaped = [r for r in net_metrics.get("rows", []) if r["rate_mbit"]]
    crossover = [r["rate_mbit"] for r, q in zip(shaped, ratios) if q > 1]
    eta = measured.get("eta_swap_thread")
    claims = [
        Claim("Atom-style peers beat decentralized pipeline parallelism on slow networks "
              "(up to 20x)", measured=bool(ratios), ci_or_exact=False, own_paper=True,
              circular=False, holds=bool(crossover) if ratios else None,
              result=("measured over tc-shaped links at "
                      + ", ".join(str(r["rate_mbit"]) for r in shaped)
                      + " Mbit/s (2 tiny CPU peers): Atom / pipeline = "
                      + ", ".join(f"{q:.2f}" for q in ratios)
                      + (f"; Atom ahead at {crossover} Mbit/s" if crossover else
                         "; no crossover: Atom loses at every measured rate")
                      if ratios else "no multi-peer shaped-link measurement here ("
                      + str(net_metrics.get("skipped") or net_metrics.get("error")) + ")")),
        Claim("the 20x (and every cell of the spec's scenario tables) from the section-4 cost "
              "model", measured=False, ci_or_exact=True, own_paper=True, circular=True,
              holds=bool(ok_tables), headline=False,
              result=(f"our netsim reproduces the spec's tables to <= {worst:.2f} (abs); 20x "
                      f"appears for 1.3B only at <= {top20:g} Mb/s with a deep non-overlapped "
                      "fp32 pipeline and Atom's sync overlapped; a model agreeing with tables "
                      "from the same model")),
        Claim("swapping sub-models hides the host<->device copies behind compute (GPU)",
              measured=False, ci_or_exact=False, own_paper=True, circular=False, holds=None,
              headline=False,
              result=("not measured on a GPU (the H200 swap run ended with eta = NaN); the "
                      "CPU stand-in (copy thread on the other core) gives eta_swap "
                      + (f"{eta:.2f}" if eta is not None else "n/a (" +
                         str(measured.get("error")) + ")"))),
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
              "divisor of N whose 16 B/param stage state fits half a GPU). Measured point: "
              "jaxlm.offload.swap (thread copy engines) on gptj-tiny_test with 6 blocks of "
              "d=512, one block per sub-model, batch 4 x 64, host SGD, CPU (cpu:0 -> cpu:1; "
              "XLA on one thread, copy/update threads pinned to the other core).",
        table=rows,
        measured=(("Atom / pipeline tokens/s over shaped links " + ", ".join(
            f"{r['rate_mbit']} Mbit/s: {q:.2f}" for r, q in zip(shaped, ratios)))
            if ratios else "no shaped-link measurement here")
        + f"; cost model vs the spec's tables: max abs diff {worst:.2f} (circular).",
        claims=claims,
        note=note,
        command="python -m experiments.reproduce --only=atom" + (" --quick" if ctx.quick else ""),
        plots=[plot, *plots],
        metrics={"max_table_abs_diff": worst, "bw_with_20x_1.3B": cross20,
                 "bw_atom_loses_A_1.3B": loses, "measured": measured,
                 "netns": net_metrics},
        extra="\n".join(extra),
    )
