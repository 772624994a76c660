"""Reproduction entry ``tacs``: truth-aware context selection on capital facts (SmolLM2-135M)."""

from __future__ import annotations

from jaxlm.utils.report import Claim, RunContext, Section

NAME = "tacs"
TITLE = "TACS: truth-aware context selection (Yu, Zhang, Feng 2024)"


def run(ctx: RunContext) -> Section:
    from experiments.tacs.experiment import run_pretrained

    res = run_pretrained(ctx.quick, ctx.seed, ctx.outdir, progress=ctx.progress)
    rows = []
    for r in res["table"]:
        row = {"method": r["method"]}
        for k in ("TA", "UR", "DA"):
            row[k] = r[k]
        if "DA_lo" in r:
            row["DA 95% CI"] = f"[{r['DA_lo']:.2f}, {r['DA_hi']:.2f}]"
            row["mixed DA"] = r["mixed_DA"]
            row["foil answers (untruthful)"] = r["foil_rate_untruthful"]
        if "mask_precision" in r:
            row["mask P/R"] = f"{r['mask_precision']:.2f}/{r['mask_recall']:.2f}"
        rows.append(row)
    by = {r["method"]: r for r in res["table"]}
    tacs_best = max(by["tacs_token"]["DA"], by["tacs_sentence"]["DA"])
    base = by["no_selection"]
    wins = [m for m in ("tacs_token", "tacs_sentence") if by[m]["DA_lo"] > base["DA_hi"]]
    la = res["layer_acc"]
    sk = la["sentence_known"]
    best = int(sk["acc"].argmax())
    probe_note = (
        f"Sentence probe on held-out known countries peaks at layer {best}: "
        f"{sk['acc'][best]:.2f} [{sk['lo'][best]:.2f}, {sk['hi'][best]:.2f}] vs chance "
        f"{sk['chance']:.2f}; bag-of-words control {res['bow_sentence_acc']:.2f}."
    )
    if "sentence_unknown" in la:
        su = la["sentence_unknown"]
        probe_note += (f" On facts the model does not know the same probe reaches "
                       f"{su['acc'].max():.2f} at best (chance {su['chance']:.2f}).")
    best_m = max(("tacs_token", "tacs_sentence"), key=lambda k: by[k]["DA"])
    sk_lo = float(sk["lo"][best])
    claims = [
        Claim("masking the context positions the probe vote judges untruthful raises DA over "
              "no selection", measured=True, ci_or_exact=bool(wins), own_paper=True,
              circular=False, holds=bool(tacs_best > base["DA"]),
              result=(f"{best_m} DA {tacs_best:.2f} [{by[best_m]['DA_lo']:.2f}, "
                      f"{by[best_m]['DA_hi']:.2f}] vs no selection {base['DA']:.2f} "
                      f"[{base['DA_lo']:.2f}, {base['DA_hi']:.2f}] on held-out countries"
                      + (f"; CIs separate for {', '.join(wins)}" if wins else
                         "; the 95% CIs overlap"))),
        Claim("truthfulness is linearly readable from per-layer attention outputs (probe above "
              "chance)", measured=True, ci_or_exact=True, own_paper=True, circular=False,
              holds=bool(sk_lo > sk["chance"]), headline=False,
              result=(f"layer {best}: {sk['acc'][best]:.2f} [{sk_lo:.2f}, {sk['hi'][best]:.2f}] "
                      f"vs chance {sk['chance']:.2f}")),
    ]
    note = (f"Oracle mask DA {by['oracle']['DA']:.2f}, drop-everything "
            f"{by['drop_all']['DA']:.2f}. " + probe_note + " The paper's numbers (Llama-2-Chat "
            "7B, ConflictQA/TruthfulQA) are not comparable at 135M on capital facts; the "
            "direction of the effect is what is tested.")
    sp = res["splits"]
    return Section(
        title=TITLE,
        claim=("Truth can be read from an LLM's per-layer attention outputs; masking the context "
               "positions a per-layer probe vote judges untruthful raises the Disturbance "
               "Adaption rate DA = (TA + UR)/2 (Llama-2-Chat 7B, ConflictQA: 55.3 -> 60.8 token "
               "level, 74.0 sentence level; TruthfulQA 48.5 -> 65.9), mostly by raising UR."),
        setup=(f"SmolLM2-135M-Instruct (Q4_1 GGUF, fp32). {res['n_facts']} capital facts, "
               f"{res['n_known']} known closed-book (greedy first token), {res['n_unknown']} "
               f"unknown. Probe countries {sp['train']} train / {sp['val']} val; test on unseen "
               f"countries: {sp['test_known']} known (UR) + {sp['test_unknown']} unknown (TA). "
               "Contexts: one truthful sentence, one untruthful (another country's capital), or "
               "both. Features: per-layer attn_out (576-d, after W_o). Logistic probes per layer, "
               "top-5 layers by validation accuracy, 3-of-5 vote, token window 7. Mask via "
               f"additive attention bias, positions '{res['position_mode']}'. Answer = greedy "
               "next token vs the capital's first token. 95% bootstrap CIs."),
        table=rows,
        plots=res["plots"],
        measured=(f"DA {tacs_best:.2f} with TACS ({best_m}) vs {base['DA']:.2f} without, on "
                  f"{sp['test_known']} + {sp['test_unknown']} held-out facts."),
        claims=claims,
        note=note,
        command="python -m experiments.reproduce --only=tacs" + (" --quick" if ctx.quick else ""),
        metrics={"table": res["table"], "splits": sp, "layers": res["layers"],
                 "bow_sentence_acc": res["bow_sentence_acc"],
                 "probe_best_layer_sentence_known": best,
                 "probe_best_acc_sentence_known": float(sk["acc"][best])},
        extra="Examples:\n\n" + "\n".join(
            f"- `{e['prompt']!r}` ({e['condition']}): " + ", ".join(
                f"{m}={e[m]!r}" for m in ("no_selection", "tacs_token", "tacs_sentence"))
            for e in res["examples"]),
    )
