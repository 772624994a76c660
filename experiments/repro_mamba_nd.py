"""Reproduction entry `mamba_nd`: Mamba-ND vs baselines on three tasks + orderings ablation."""

from __future__ import annotations

import math

from absl import logging

from jaxlm.utils.report import Claim, RunContext, Section, markdown_table

NAME = "mamba_nd"
TITLE = "Mamba-ND: alternating flatten orders over 1D Mamba layers"


def _beats(a: dict, b: dict, higher: bool) -> bool:
    """a beats b by more than the seeds' combined std (no claim from noise)."""
    diff = (a["mean"] - b["mean"]) if higher else (b["mean"] - a["mean"])
    spread = math.sqrt(sum(x["std"] ** 2 for x in (a, b) if math.isfinite(x["std"])))
    return diff > spread if spread > 0 else False


def _claims(res: dict) -> list[Claim]:
    """Mamba-ND vs the best width-matched baseline per task, the orderings ablation, and the
    paper's absolute numbers (not testable at this scale). A difference counts as decided
    only beyond the seeds' combined std."""
    from experiments.mamba_nd import experiment as E

    claims = [Claim("81.7% (24M) / 83.0% (92M) ImageNet-1K top-1, 60.9% HMDB-51, better ERA5 "
                    "forecasts than ViT-style baselines", measured=False, ci_or_exact=False,
                    own_paper=True, circular=False, holds=None,
                    result="ImageNet/HMDB/ERA5 scale is out of reach on 2 CPU cores")]
    for tname, rows in res["tasks"].items():
        m = next(r for r in rows if r["name"] == "mamba_nd")
        others = [r for r in rows if r["name"] != "mamba_nd"]
        if not others:
            continue
        higher = not E.is_forecast(tname)
        best = (max if higher else min)(others, key=lambda r: r["test"]["mean"])
        diff = m["test"]["mean"] - best["test"]["mean"]
        better = diff > 0 if higher else diff < 0
        decided = _beats(m["test"], best["test"], higher) or _beats(best["test"], m["test"],
                                                                     higher)
        claims.append(Claim(
            f"{tname}: Mamba-ND beats the best width-matched baseline", measured=True,
            ci_or_exact=decided, own_paper=True, circular=False, holds=bool(better),
            result=(f"Mamba-ND {m['test']['mean']:.3g} ± {m['test']['std']:.2g} vs "
                    f"{best['name']} {best['test']['mean']:.3g} ± {best['test']['std']:.2g} "
                    f"({'beyond' if decided else 'within'} the seed spread)")))
    if res["ablation"]:
        alt = res["ablation"][0]
        higher = not E.is_forecast(alt["task"])
        rest = res["ablation"][1:]
        beats_all = all(_beats(alt["test"], r["test"], higher) for r in rest)
        mean_best = all((alt["test"]["mean"] > r["test"]["mean"]) == higher for r in rest)
        claims.append(Claim(
            f"alternating flatten orders beat the other orderings ({alt['task']})",
            measured=True, ci_or_exact=beats_all, own_paper=True, circular=False,
            holds=bool(mean_best), headline=False,
            result=(f"alternating {alt['test']['mean']:.3g} vs "
                    + ", ".join(f"{r['name']} {r['test']['mean']:.3g}" for r in rest))))
    return claims


def run(ctx: RunContext) -> Section:
    from experiments.mamba_nd import experiment as E

    preset = "quick" if ctx.quick else "full"
    cfg = E.PRESETS.get(preset)
    # per-model lines (params, LR, test, seconds) go to the entry's log file, not the console
    res = E.run_experiment(cfg, ctx.outdir, seed=ctx.seed, progress=ctx.progress,
                           log=lambda msg: logging.info("%s", msg))
    claims = _claims(res)
    abl = [{k: v for k, v in r.items() if k != "test_mean"} for r in E.ablation_rows(res)]
    extra = (f"**Orderings ablation** ({cfg.ablation_task}):\n\n" + markdown_table(abl)
             if abl else "")
    extra += ("\nSimple baselines (logreg/SVC on pixels, persistence, pixel ridge = ridge on "
              "Fourier coefficients up to the regulariser) are in the main table. "
              "Scan speed/memory: `python -m experiments.bench_scan --quick` "
              "(runs/bench/scan.json).\n")
    scale = (f"{'QUICK' if ctx.quick else 'FULL'} scale: tasks {', '.join(res['tasks'])}; "
             f"Mamba-ND d_model={cfg.d_model}, depth={cfg.depth}, d_state={cfg.d_state} "
             f"(~{res['tasks'][cfg.ablation_task][0]['params']} params on {cfg.ablation_task}); "
             f"baselines width-matched within 10%; {cfg.steps} AdamW steps"
             + (f" ({', '.join(cfg.task_steps)})" if cfg.task_steps else "")
             + f", batch {cfg.batch_size}, LR sweep {list(cfg.lrs)} (selected on validation), "
             f"seeds {list(cfg.seeds)}, {cfg.pool}-pooled classifier heads for every model. "
             f"Canvas {cfg.canvas}x{cfg.canvas} patch {cfg.canvas_patch}; "
             f"moving digits {cfg.video_frames}x{cfg.video_canvas}x{cfg.video_canvas} tubelet "
             f"{tuple(cfg.video_patch)}, 8 motion directions; next-frames prediction "
             f"{cfg.pred_frames}->{cfg.pred_frames} frames {cfg.pred_canvas}x{cfg.pred_canvas} "
             f"patch {tuple(cfg.pred_patch)} (RMSE vs persistence and pixel ridge); "
             f"PDE {cfg.pde_grid}x{cfg.pde_grid} patch {cfg.pde_patch} "
             f"tracer advection + variable-coefficient heat, {cfg.pde_traj} trajectories. "
             "Accuracy in %, forecasts as RMSE (lower is better). Tiny models, far from the "
             "paper's ImageNet/HMDB/ERA5 scale: this tests the design, not the headline numbers.")
    return Section(
        title=TITLE,
        claim=("Mamba-ND (Li et al., 2024) stacks unmodified 1D Mamba layers and alternates the "
               "row-major flatten order per layer ((HW)±, (WH)± in 2D; THW/TWH/WHT ± in 3D); it "
               "reports 81.7% (24M) / 83.0% (92M) ImageNet-1K top-1, 60.9% HMDB-51 and better "
               "ERA5 forecasts than ViT-style baselines, with the alternating design beating "
               "1D-raster, bi-layer and in-layer multi-direction variants."),
        setup=scale,
        table=[{k: v for k, v in r.items() if k != "test_mean"} for r in E.result_rows(res)],
        measured=("; ".join(f"{c.text.split(':')[0]}: {c.result}" for c in claims[1:]) + ".")
        if len(claims) > 1
        else "no task had a baseline.",
        claims=claims,
        note=("The paper's absolute numbers are at a scale we cannot run, so this tests the "
              "design (alternating orders over 1D Mamba) on tiny tasks; 'reproduced' is out of "
              "reach by construction."),
        command=f"python -m experiments.reproduce --only={NAME}" + (" --quick" if ctx.quick
                                                                   else ""),
        plots=[str(p) for p in (ctx.outdir / "learning_curves.png",
                                ctx.outdir / "pde_forecast.png",
                                ctx.outdir / "video_forecast.png") if p.exists()],
        metrics={"tasks": {t: {r["name"]: r["test"]["mean"] for r in rows}
                           for t, rows in res["tasks"].items()},
                 "higher_is_better": {t: not E.is_forecast(t) for t in res["tasks"]},
                 "ablation": {r["name"]: r["test"]["mean"] for r in res["ablation"]},
                 "experiment_seconds": res["seconds"]},
        extra=extra,
    )
