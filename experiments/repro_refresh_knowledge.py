"""Reproduction entry: knowledge editing (ROME, MEMIT) vs FT-L and retrieval on SmolLM2."""

from __future__ import annotations

from jaxlm.utils.report import Claim, RunContext, Section, markdown_table

NAME = "refresh_knowledge"
TITLE = "Refreshing knowledge: ROME / MEMIT edits vs fine-tuning and retrieval (SmolLM2-135M)"


def _ci(s: dict, k: str) -> str:
    if k + "_lo" not in s:
        return "n/a"
    return f"{s[k]:.2f} [{s[k + '_lo']:.2f}, {s[k + '_hi']:.2f}]"


def run(ctx: RunContext) -> Section:
    from experiments.knowledge_editing import experiment

    ecfg = experiment.EXPERIMENTS.get("smollm2_test" if ctx.quick else "smollm2")
    out = experiment.run(ecfg, ctx.outdir, seed=ctx.seed, bar=ctx.bar, log=lambda s: None)
    plots = experiment.plots(out, ctx.outdir)
    rows = [{"method": "unedited", "ES": _ci(out["pre"], "es"), "PS": _ci(out["pre"], "ps"),
             "NS": _ci(out["pre"], "ns"), "top-1 new": f"{out['pre']['top1']:.2f}",
             "fluency": f"{out['fluency_pre']:.3f}", "s/edit (median; first)": "-"}]
    labels = {"rome": "ROME, C = I", "rome_cov": "ROME, estimated C",
              "memit": "MEMIT (batch of 1)", "alphaedit": "AlphaEdit (batch of 1)",
              "ft": "FT-L", "retrieval": "retrieval"}
    for name, s in out["single"].items():
        t = out["edit_seconds"].get(name, {})
        rows.append({
            "method": labels.get(name, name), "ES": _ci(s, "es"), "PS": _ci(s, "ps"),
            "NS": _ci(s, "ns"), "top-1 new": f"{s['top1']:.2f}",
            "fluency": f"{s['fluency']:.3f}" if "fluency" in s else "-",
            "s/edit (median; first)": f"{t.get('median', 0):.1f}; {t.get('first', 0):.1f}",
        })
    seq_rows = []
    for name, rs in out["sequential"].items():
        for r in rs:
            seq_rows.append({"method": name, "edits": r["edits"], "ES": round(r["es"], 3),
                             "PS": round(r["ps"], 3), "NS (unedited nbrs)": round(r["ns"], 3),
                             "retain [95% bootstrap CI]": _ci(r, "retain")
                             if "retain_lo" in r else "n/a",
                             "fluency": round(r.get("fluency", float("nan")), 3)})
    r = out["single"].get("rome", {})
    t_rome = out["edit_seconds"].get("rome", {}).get("median", float("inf"))
    n = int(r.get("n", 0))
    tr = out["trace"]
    targets = {"es": 0.9, "ps": 0.5, "ns": 0.9}
    # decided by the Wilson CIs where they decide (every lower bound >= its target, or some
    # upper bound < its target); otherwise the point estimates, without a deciding CI
    ci_yes = bool(r) and all(r.get(k + "_lo", 0) >= v for k, v in targets.items())
    ci_no = bool(r) and any(r.get(k + "_hi", 1) < v for k, v in targets.items())
    rome_ok = (True if ci_yes else False if ci_no else
               bool(r) and all(r.get(k, 0) >= v for k, v in targets.items()))
    ft = out["single"].get("ft", {})
    seq = out["sequential"]
    memit_last = (seq.get("memit_batch") or [{}])[-1]
    rome_last = (seq.get("rome") or [{}])[-1]
    alpha_last = (seq.get("alphaedit") or [{}])[-1]
    n_cal = len(out.get("calib_cases", []))
    split = (f"the edit layer {tr['layer_used']} is the causal-tracing argmax (layers 3..L/2) "
             f"over {n_cal} calibration facts that are never edited or scored; every score "
             "here is on the other, disjoint facts")

    def _ret(row):
        return (f"{row.get('retain', float('nan')):.2f} [{row.get('retain_lo', float('nan')):.2f},"
                f" {row.get('retain_hi', float('nan')):.2f}]")

    has_ret = all("retain_lo" in x for x in (rome_last, alpha_last, memit_last))
    claims = [
        Claim("locate-and-edit (ROME) rewrites single known facts: efficacy >= 0.9, "
              "paraphrase >= 0.5, neighbourhood specificity >= 0.9",
              measured=bool(r), ci_or_exact=bool(ci_yes or ci_no), own_paper=True,
              circular=False, holds=rome_ok if r else None,
              result=f"{n} held-out edits at layer {tr['layer_used']}: ES {_ci(r, 'es')}, PS "
              f"{_ci(r, 'ps')}, NS {_ci(r, 'ns')} (Wilson 95%"
              + ("" if ci_yes or ci_no else "; the CIs do not decide it") + f"); {split}"),
        Claim("constrained fine-tuning (FT-L) generalises and localises worse than ROME "
              "(lower PS and NS)", measured=bool(ft and r), ci_or_exact=False, own_paper=True,
              circular=False, headline=False,
              holds=(bool(ft["ps"] < r["ps"] and ft["ns"] < r["ns"]) if ft and r else None),
              result=(f"FT-L PS {_ci(ft, 'ps')}, NS {_ci(ft, 'ns')}" if ft else "not run")),
        Claim("MEMIT scales to batches where sequential ROME degrades earlier edits "
              "(retained known facts after the last checkpoint: MEMIT batch > sequential ROME)",
              measured=bool("retain" in memit_last and "retain" in rome_last),
              ci_or_exact=False, own_paper=True, circular=False, headline=False,
              holds=(bool(memit_last["retain"] > rome_last["retain"])
                     if "retain" in memit_last and "retain" in rome_last else None),
              result=(f"after {rome_last.get('edits')} edits retain: sequential ROME "
                      f"{_ret(rome_last)}, MEMIT batch {_ret(memit_last)} (95% bootstrap "
                      "over the unedited facts)")),
        Claim("AlphaEdit (Fang et al., ICLR 2025): null-space-projected sequential edits keep "
              "more unedited facts than sequential ROME", measured=has_ret,
              ci_or_exact=bool(has_ret and (alpha_last["retain_lo"] > rome_last["retain_hi"]
                                            or alpha_last["retain_hi"] < rome_last["retain_lo"])),
              own_paper=False, circular=False, headline=False,
              holds=(bool(alpha_last["retain"] > rome_last["retain"]) if has_ret else None),
              result=(f"after {alpha_last.get('edits')} sequential edits retain: AlphaEdit "
                      f"{_ret(alpha_last)} (ES {alpha_last.get('es', float('nan')):.2f}), "
                      f"ROME {_ret(rome_last)} (ES {rome_last.get('es', float('nan')):.2f}); "
                      f"null-space dims {out.get('alpha_null_dims')}")),
        Claim("our target: one ROME edit <= 30 s on 2 shared CPU cores", measured=bool(r),
              ci_or_exact=False, own_paper=False, circular=False,
              holds=bool(t_rome <= 30) if r else None,
              result=f"median {t_rome:.1f} s/edit, edit only, first includes XLA compilation"),
    ]
    measured = (f"ROME (C = I) on {n} held-out known facts at layer {tr['layer_used']} "
                f"(traced on {n_cal} calibration facts): ES "
                f"{r.get('es', float('nan')):.2f}, PS {r.get('ps', float('nan')):.2f}, NS "
                f"{r.get('ns', float('nan')):.2f}; median {t_rome:.1f} s/edit")
    note = ("Layer selection and evaluation use disjoint facts: " + split + "."
            + (" Quick run: very few edits, so the CIs are wide." if ctx.quick else ""))
    extra = (
        "**Facts the model knows** (measured, top-1 correct): "
        + ", ".join(f"{k}: {v['known']}/{v['candidates']}" for k, v in out["facts"].items())
        + f" ({len(out['cases_all'])} single-token known facts in all; the issue's 50 "
        "sequential edits are capped at that number). "
        f"Edit layer {tr['layer_used']}; causal-tracing argmax (layers 3..L/2) over the "
        f"{n_cal} calibration facts ({', '.join(c['subject'] for c in out.get('calib_cases', []))}"
        f"): {tr['argmax_first_half']}; tracing curve (normalised indirect effect by layer): "
        f"{[round(x, 3) for x in tr['curve']]}. Context prefixes: {out['contexts'][1:]}.\n\n"
        "Timing: ROME with estimated C reuses the k*/v* optimisation of the C = I edit (they "
        "do not depend on C), so its s/edit is that optimisation plus its own update; MEMIT "
        "deltas are cached per request and shared by its single edits and batches. Fluency "
        f"of single edits: mean over the first {out['config']['fluency_edits']} edits.\n\n"
        "**Sequential edits** (ROME/FT/AlphaEdit applied one after another; MEMIT as one "
        "batch of that size; retrieval memory of that size). NS counts only neighbours not edited so far; "
        "retain = top-1 accuracy on the known facts not edited yet (both undefined once all "
        "are edited). Fluency = ROME n-gram entropy of greedy "
        f"continuations (unedited {out['fluency_pre']:.3f}).\n\n" + markdown_table(seq_rows)
    )
    sweep = out.get("layer_sweep") or {}
    if sweep:
        extra += (
            f"\n\n**ROME (C = I) by edit layer** ({out['config']['sweep_n']} calibration facts; the "
            "causal-tracing curve above says where the fact is recalled, this says where an "
            "edit works):\n\n" + markdown_table([
                {"layer": k, "ES": _ci(v, "es"), "PS": _ci(v, "ps"), "NS": _ci(v, "ns"),
                 "NM": round(v["nm"], 3)} for k, v in sorted(sweep.items(), key=lambda x: int(x[0]))
            ]))
    return Section(
        title=TITLE,
        claim=("Locate-and-edit methods rewrite single facts: ROME on known facts reaches "
               "efficacy >= 90%, paraphrase >= 50%, neighbourhood specificity >= 90%; MEMIT "
               "scales to batches; constrained fine-tuning generalises and localises worse; "
               "retrieval edits without touching weights. One ROME edit should take <= 30 s "
               "on 2 CPU cores."),
        setup=(f"SmolLM2-135M-Instruct (Q4_1 GGUF, fp32), counterfactual single-token edits of "
               f"facts the model gets right (capitals -> Vienna/Dublin/Prague/Oslo, official "
               f"languages -> Swahili/Latin/Hebrew/Icelandic). {n} single edits per method, "
               f"sequential checkpoints {list(ecfg.seq_points)}; ROME layer {tr['layer_used']}, "
               f"{ecfg.n_contexts} context prefixes, {ecfg.value_steps} Adam steps max; C from "
               f"{ecfg.cov_tokens} pydoc tokens (shrink {ecfg.cov_shrink}); MEMIT layers "
               f"{list(ecfg.memit_layers) or 'layer-1..layer+1'}, lambda {ecfg.memit_lambda}. "
               "ES/PS/NS with 95% Wilson CIs over edits (PS/NS per edit are means over prompts)."),
        table=rows,
        claims=claims,
        measured=measured,
        note=note,
        command=("python -m experiments.reproduce --only=refresh_knowledge"
                 + (" --quick" if ctx.quick else "")),
        plots=plots,
        metrics={"single": out["single"], "sequential": out["sequential"],
                 "edit_seconds": {k: v["median"] for k, v in out["edit_seconds"].items()},
                 "trace_curve": tr["curve"], "layer": tr["layer_used"],
                 "calib_subjects": [c["subject"] for c in out.get("calib_cases", [])],
                 "alpha_null_dims": out.get("alpha_null_dims"),
                 "total_seconds": out["timings"]["total"]},
        extra=extra,
    )
