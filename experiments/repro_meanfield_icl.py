"""Reproduction entry `meanfield_icl`: Kim & Suzuki (ICML 2024), claims C1-C6 from E1-E6.

    python -m experiments.reproduce --only=meanfield_icl --quick
"""

from __future__ import annotations

import dataclasses
import time

from jaxlm.utils.report import Claim, RunContext, Section

NAME = "meanfield_icl"
TITLE = "Kim & Suzuki 2024: mean-field MLP + linear attention learns features in context"


# C1 (benign landscape), C2 (saddle avoidance) and C6 (features improve ICL) are the paper's
# headline; C3-C5 are its secondary results.
_HEADLINE = ("C1", "C2", "C6")
_CLAIM_TEXT = {
    "C1": "non-global critical points of the two-timescale landscape are strict saddles",
    "C2": "the Wasserstein gradient flow avoids saddles",
    "C3": "loss improves at rates both away from and near critical points",
    "C4": "the two-timescale limit behaves like jointly trained attention",
    "C5": "training with finite prompts keeps working",
    "C6": "the learned features greatly improve ICL over linear attention alone",
}


def _claim(name: str, check: str, note: str) -> Claim:
    """Maps a per-claim check of experiments.meanfield_icl.report (its thresholds met / partly / not)
    to declared evidence: met -> holds with an exact check of the stated target; partly ->
    holds without one; not -> does not hold."""
    return Claim(f"{name}: {_CLAIM_TEXT.get(name, name)}", measured=True,
                 ci_or_exact=check == "reproduced", own_paper=True, circular=False,
                 holds=check != "not reproduced", headline=name in _HEADLINE,
                 result=note.replace("\n", " "))


def run(ctx: RunContext) -> Section:
    from experiments.meanfield_icl import experiment as ex
    from experiments.meanfield_icl import plots
    from experiments.meanfield_icl import report as rep

    cfg = ex.PRESETS.get("quick" if ctx.quick else "full")
    cfg = dataclasses.replace(cfg, seed=ctx.seed)
    ex.validate(cfg)
    n_e1 = len(cfg.teachers) * len(cfg.n_particles)
    bar = ctx.bar(n_e1 + (2 + len(cfg.kappas)) + 2 + 4 + (cfg.e6_steps // cfg.e6_every + 1) + 4,
                  desc="E1-E6")
    t0 = time.perf_counter()
    secs = {}
    e1 = ex.run_e1(cfg, bar)
    secs["e1"] = time.perf_counter() - t0
    e3 = ex.run_e3(cfg, bar)
    secs["e3"] = time.perf_counter() - t0 - sum(secs.values())
    e4 = ex.run_e4(cfg, bar)
    secs["e4"] = time.perf_counter() - t0 - sum(secs.values())
    e5 = ex.run_e5(cfg, bar)
    secs["e5"] = time.perf_counter() - t0 - sum(secs.values())
    e6 = ex.run_e6(cfg, bar)
    secs["e6"] = time.perf_counter() - t0 - sum(secs.values())
    e7 = ex.run_e7(cfg, bar)
    secs["e7"] = time.perf_counter() - t0 - sum(secs.values())
    bar.close()
    out = ctx.outdir
    paths = plots.plot_e1(e1, out) + plots.plot_e2_e4(e1, e4, out) + plots.plot_e3(e3, out)
    paths += plots.plot_e5(e5, out) + plots.plot_e6(e6, out) + plots.plot_e7(e7, out)
    summ = rep.summarize(e1, e3, e4, e5, e6, e7)
    claims = summ["claims"]
    rows = summ["rows"] + [
        {"exp": c, "setting": "per-claim check", "result": f"**{v}**: {note}"}
        for c, (v, note) in claims.items()
    ]
    evidence = [_claim(c, v, note) for c, (v, note) in claims.items()]
    mode = "quick" if ctx.quick else "full"
    setup = (
        f"{mode} preset: d={cfg.d}, k={cfg.k}, teachers {list(cfg.teachers)} (T2 = even bump, no "
        f"linear part), x~N(0,I). E1/E2: static two-timescale WGF, N in {list(cfg.n_particles)}, "
        f"{cfg.seeds} seeds (vmapped), fixed batch M={cfg.batch}, eta={cfg.eta}, {cfg.steps} steps "
        f"(t={cfg.eta * cfg.steps:g}), eval on {cfg.eval_batch} fresh x. E3: N={cfg.e3_particles}, "
        f"M={cfg.e3_batch}, kappa in {list(cfg.kappas)}, t in [0, {cfg.e3_time:g}] at eta_0 = "
        f"{cfg.e3_safety}/lambda_max (adaptive). E4: prompt SGD N={cfg.e4_particles}, "
        f"n={cfg.e4_prompt_len}, {cfg.e4_prompts} prompts/step, {cfg.e4_steps} steps at eta="
        f"{cfg.e4_eta} with Gamma = Gamma*_n(mu), plus {cfg.e4_joint_steps} joint-Gamma SGD steps. "
        f"E5: float64, exact saddle (N={cfg.e5_particles}: 2(k-1) teacher neurons + constant "
        f"neurons, w=0, b in {cfg.e5_bias}+-{cfg.e5_bias_spread}) on a crossed antithetic batch "
        f"M={cfg.e5_batch}, "
        f"{cfg.e5_steps} steps at eta={cfg.e5_eta} (t = eta*steps). E6: N={cfg.e6_particles}. "
        "E7 (optional): from the E5 saddle, no noise / isotropic noise left on (std 1e-3) / one "
        "isotropic kick / one kick along the lambda_min eigenvector (same norm). "
        "Seconds: "
        + ", ".join(f"{k} {v:.0f}" for k, v in secs.items())
        + ". The full preset (N up to 1024, 10k steps, T1+T2) takes roughly 1-2 hours on 2 cores."
    )
    return Section(
        title=TITLE,
        claim=(
            "A mean-field MLP feeding linear attention, trained by Wasserstein gradient flow in the "
            "two-timescale limit, has a benign landscape (C1: non-global critical points are strict "
            "saddles), avoids saddles (C2), improves at rates away from and near critical points "
            "(C3), behaves like jointly trained attention (C4), keeps working with finite prompts "
            "(C5), and the learned features greatly improve ICL over linear attention alone (C6)."
        ),
        setup=setup,
        table=rows,
        measured=("per-claim checks of this run: "
                  + ", ".join(f"{c} {v}" for c, (v, _) in claims.items()) + "."),
        claims=evidence,
        note=("A theory paper: the checks are numerical (one constructed saddle for C1, one "
              "seed set, finite N), so 'held' means the run's numbers meet the stated target, "
              "not that the theorem is verified."),
        command="python -m experiments.reproduce --only=meanfield_icl" + (" --quick" if ctx.quick else ""),
        plots=paths,
        metrics={**summ["metrics"], "seconds_by_experiment": secs},
    )
