"""Reproduction entry: knowledge editing (ROME, MEMIT) vs FT-L and retrieval on SmolLM2."""

from __future__ import annotations

from jaxlm.utils.report import RunContext, Section, markdown_table

NAME = "refresh_knowledge"
TITLE = "Refreshing knowledge: ROME / MEMIT edits vs fine-tuning and retrieval (SmolLM2-135M)"


def _ci(s: dict, k: str) -> str:
    if k + "_lo" not in s:
        return "n/a"
    return f"{s[k]:.2f} [{s[k + '_lo']:.2f}, {s[k + '_hi']:.2f}]"


def run(ctx: RunContext) -> Section:
    from jaxlm.editing import experiment

    ecfg = experiment.EXPERIMENTS.get("smollm2_test" if ctx.quick else "smollm2")
    out = experiment.run(ecfg, ctx.outdir, seed=ctx.seed, bar=ctx.bar, log=lambda s: None)
    plots = experiment.plots(out, ctx.outdir)
    rows = [{"method": "unedited", "ES": _ci(out["pre"], "es"), "PS": _ci(out["pre"], "ps"),
             "NS": _ci(out["pre"], "ns"), "top-1 new": f"{out['pre']['top1']:.2f}",
             "fluency": f"{out['fluency_pre']:.3f}", "s/edit (median; first)": "-"}]
    labels = {"rome": "ROME, C = I", "rome_cov": "ROME, estimated C",
              "memit": "MEMIT (batch of 1)", "ft": "FT-L", "retrieval": "retrieval"}
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
                             "retain": round(r.get("retain", float("nan")), 3),
                             "fluency": round(r.get("fluency", float("nan")), 3)})
    r = out["single"].get("rome", {})
    t_rome = out["edit_seconds"].get("rome", {}).get("median", float("inf"))
    ok = {"ES>=0.9": r.get("es", 0) >= 0.9, "PS>=0.5": r.get("ps", 0) >= 0.5,
          "NS>=0.9": r.get("ns", 0) >= 0.9, "<=30s/edit": t_rome <= 30}
    n = int(out["single"].get("rome", {}).get("n", 0))
    verdict = "reproduced" if all(ok.values()) and n >= 10 else (
        "partially reproduced" if any(ok.values()) else "not reproduced")
    note = (f"ROME (C = I) on {n} known facts: " + ", ".join(
        f"{k} {'met' if v else 'missed'}" for k, v in ok.items())
        + f" (median {t_rome:.1f} s/edit, edit only, evaluation excluded, on a shared 2-core "
        "CPU; the first edit includes "
        "XLA compilation)." + (" Quick run: too few edits for a verdict beyond 'partial'."
                               if ctx.quick else ""))
    tr = out["trace"]
    extra = (
        "**Facts the model knows** (measured, top-1 correct): "
        + ", ".join(f"{k}: {v['known']}/{v['candidates']}" for k, v in out["facts"].items())
        + f" ({len(out['cases_all'])} single-token known facts in all; the issue's 50 "
        "sequential edits are capped at that number). "
        f"Edit layer {tr['layer_used']}; causal-tracing argmax (layers 3..L/2): "
        f"{tr['argmax_first_half']}. Context prefixes: {out['contexts'][1:]}.\n\n"
        "Timing: ROME with estimated C reuses the k*/v* optimisation of the C = I edit (they "
        "do not depend on C), so its s/edit is that optimisation plus its own update; MEMIT "
        "deltas are cached per request and shared by its single edits and batches. Fluency "
        f"of single edits: mean over the first {out['config']['fluency_edits']} edits.\n\n"
        "**Sequential edits** (ROME/FT applied one after another; MEMIT as one batch of that "
        "size; retrieval memory of that size). NS counts only neighbours not edited so far; "
        "retain = top-1 accuracy on the known facts not edited yet (both undefined once all "
        "are edited). Fluency = ROME n-gram entropy of greedy "
        f"continuations (unedited {out['fluency_pre']:.3f}).\n\n" + markdown_table(seq_rows)
    )
    sweep = out.get("layer_sweep") or {}
    if sweep:
        extra += (
            f"\n\n**ROME (C = I) by edit layer** (first {out['config']['sweep_n']} facts; the "
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
        verdict=verdict,
        verdict_note=note,
        command=("python -m experiments.reproduce --only=refresh_knowledge"
                 + (" --quick" if ctx.quick else "")),
        plots=plots,
        metrics={"single": out["single"], "sequential": out["sequential"],
                 "edit_seconds": {k: v["median"] for k, v in out["edit_seconds"].items()},
                 "trace_curve": tr["curve"], "layer": tr["layer_used"],
                 "total_seconds": out["timings"]["total"]},
        extra=extra,
    )
