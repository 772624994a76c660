"""Reproduction entry: Keyformer (MLSys 2024) at a 50% KV cache on SmolLM2-135M-Instruct.

Claims checked at small scale: (1) at a 50% budget Keyformer (``paper`` mode) stays
closer to the full-cache output than H2O and StreamingLLM (ROUGE-L vs the
full-cache greedy output, paired bootstrap CIs); (2) a 50% cache speeds decoding
up by what the memory-bandwidth model predicts (our substitute for the paper's
2.1x latency / 2.4x throughput, which were measured on GPUs with 6-7B models).
"""

from __future__ import annotations

import json
import pathlib

from jaxlm.utils.report import Claim, RunContext, Section, markdown_table

NAME = "keyformer"
TITLE = "Keyformer: 50% cache, accuracy vs full and vs baselines; throughput gain"

CLAIM = (
    "Keyformer keeps only 'key' tokens chosen by an accumulated Gumbel-softmax score "
    "softmax((x+zeta)/tau), tau annealed 1 -> 2, plus a recent window (30% of the budget). "
    "Paper: with 50% of the KV cache, accuracy is preserved (ROUGE within 99% of full at 70% "
    "KV for summarisation, 90% for conversation; Keyformer above H2O, window attention "
    "collapses), with 2.1x lower latency and 2.4x higher token throughput (GPT-J-6B, "
    "Cerebras-GPT-6.7B, MPT-7B on A100; Fig. 5: 1.3x at 1k+1k, 1.6x at 2k+2k, 2.05x at 4k+4k)."
)


def _throughput(ctx: RunContext, quick: bool) -> dict:
    """Full cache vs Keyformer@50% decode at one or two (P, B) points, with the model."""
    from jaxlm.core import MODELS
    from jaxlm.kvcache import Policy
    from experiments.keyformer import bench as B

    cfg = MODELS.get("smollm2-135m")
    params = B.random_params(cfg)
    wbytes = B.param_bytes(params)
    points = [(1024, 8)] if quick else [(1024, 1), (2048, 1), (2048, 16)]
    steps, repeats = (4, 2) if quick else (16, 5)
    rows = []
    for plen, b in points:
        pol = Policy("keyformer", 0.5)
        run_pol, cap = B.policy_runner(params, cfg, pol, plen, batch=b, steps=steps)
        full_slots = plen + steps + 1
        t = B.time_interleaved({"full": B.core_runner(params, cfg, b, full_slots, plen,
                                                      steps=steps), "kf": run_pol},
                               steps=steps, repeats=repeats)
        meas = B.paired_ratio(t["full"], t["kf"])
        pred = (B.step_bytes(cfg, wbytes, b, full_slots, False)
                / B.step_bytes(cfg, wbytes, b, cap, True))
        rows.append({"prompt": plen, "batch": b, "full ms/token": 1e3 * t["full"]["median_s"],
                     "keyformer@50% ms/token": 1e3 * t["kf"]["median_s"],
                     "speedup": meas, "bandwidth model": pred, "measured/model": meas / pred})
    return {"rows": rows, "steps": steps, "repeats": repeats}


# Quick: only the 50% budget, the one every claim below is judged at (the full preset keeps
# the 25/50/75% curve). With 6 policies x 5 prompts that is 35 free-running and 30
# teacher-forced rows: one decode batch each instead of six 32-row batches for three budgets.
QUICK_OVERRIDES = ("budgets=0.5",)

H200_BENCH = pathlib.Path(__file__).parents[1] / "docs" / "bench_kvcache_h200.json"

# How the eviction overhead (score bookkeeping + slot choice per decode step) is to be cut
# below the 5% target; stated in the report next to the measured overhead.
OVERHEAD_PLAN = (
    "Most of it is common to every policy (the sliding window, which scores nothing, costs "
    "nearly as much), so it is the evicting loop, not Keyformer's scoring. Plan to cut it "
    "below 5%: (1) evict in blocks: append new tokens contiguously and choose k victims every "
    "k steps, so the per-step work is the core step's and the arg-min and slot scatter are "
    "amortised; (2) for Keyformer, draw the Gumbel noise for a block of steps at once and "
    "accumulate the score increments from the probabilities attention already computes (no "
    "second [B, H, S] pass per layer); then re-measure with "
    "`python -m experiments.bench_kvcache --gpu_sizes`."
)


def _h200_overhead() -> dict | None:
    """Keyformer's measured eviction overhead on the H200 (committed benchmark JSON)."""
    if not H200_BENCH.exists():
        return None
    res = json.loads(H200_BENCH.read_text())["results"]
    kf, win = "keyformer-paper@50%", "window@50%"
    pts = [{"prompt": p["prompt_len"], "batch": p["batch"],
            "overhead": p["policies"][kf]["overhead"],
            "window_overhead": p["policies"].get(win, {}).get("overhead")}
           for p in res["points"] if kf in p.get("policies", {})]
    if not pts:
        return None
    return {"points": pts, "min": min(p["overhead"] for p in pts),
            "max": max(p["overhead"] for p in pts), "target": 0.05}


def _ci(text: str) -> tuple[float, float]:
    lo, hi = (float(x) for x in text.strip("[] ").split(","))
    return lo, hi


def run(ctx: RunContext) -> Section:
    from experiments.keyformer import evaluate as E

    name = "keyformer_quick" if ctx.quick else "keyformer"
    cfg = E.EVALS.get(name, QUICK_OVERRIDES if ctx.quick else ())
    res = E.run_eval(cfg, progress=ctx.bar, outdir=ctx.outdir, seed=ctx.seed)
    plot = E.plot(res["table"], cfg, pathlib.Path(ctx.outdir) / "accuracy_vs_budget.png")
    thr = _throughput(ctx, ctx.quick)
    (pathlib.Path(ctx.outdir) / "results.json").write_text(json.dumps(
        {"table": res["table"], "setup": res["setup"], "comparisons": res["comparisons"],
         "throughput": thr}, indent=2))

    table = [r for r in res["table"] if r["budget"] == "50%"]
    comps = [c for c in res["comparisons"] if c["budget"] == "50%"]
    kf_wins = all(c["a_ge_b"] for c in comps)
    thr_ok = all(r["measured/model"] >= 0.9 for r in thr["rows"])
    s = res["setup"]
    setup = (
        f"SmolLM2-135M-Instruct (Q4_1 GGUF, fp32), greedy, {s['n_prompts']} prompts "
        f"({s['tasks']}) of {min(s['prompt_lens'])}-{max(s['prompt_lens'])} tokens from "
        f"pydoc_data.topics, {s['new_tokens']} new tokens, budgets {s['budgets']} of each "
        f"prompt (C in tokens per row in outputs.jsonl), Keyformer Gumbel seeds {s['seeds']}, "
        f"recent window 30% of C, tau 1->2; H2O 50/50; StreamingLLM 4 sinks; SnapKV window "
        f"25% of C, kernel 5; TOVA layer-wise. Reference = the full-cache greedy output of "
        f"the same model and code path. GQA: scores summed over the 3 query heads of each KV "
        f"head. Throughput: random-weight SmolLM2 shapes, caches of the right width, "
        f"{thr['repeats']} interleaved rounds of {thr['steps']} steps; this CPU is shared, "
        f"so timings are noisy.")
    if ctx.quick:
        setup += (" QUICK scale: a handful of short prompts, the 50% budget only (the full "
                  "preset sweeps 25/50/75%); the CIs are wide.")
    extra = ["**Paired differences in ROUGE-L at 50% (bootstrap 95% CI over prompts).**\n",
             markdown_table(comps) if comps else "_(none)_\n",
             "**All budgets.**\n", markdown_table(res["table"]),
             "**Decode throughput (full cache vs Keyformer@50%).**\n",
             markdown_table(thr["rows"]),
             "| | paper | ours |\n|---|---|---|\n"
             f"| accuracy at 50% | preserved; Keyformer > H2O | ROUGE-L vs full: "
             + ", ".join(f"{r['policy']} {r['rougeL']:.3f}" for r in table) + " |\n"
             f"| speed at 50% | 2.1x latency, 2.4x throughput (A100, 6-7B, long seqs) | "
             + ", ".join(f"P={r['prompt']} B={r['batch']}: {r['speedup']:.2f}x "
                         f"(model {r['bandwidth model']:.2f}x)" for r in thr["rows"]) + " |\n"]
    pk = s.get("passkey_full_acc")
    if pk is not None:
        extra.append(f"Full-cache passkey accuracy: {pk:.2f} (policies are scored as raw "
                     f"accuracy; compare against this).\n")
    kf = next((r for r in table if r["policy"] == "keyformer-paper"), None)
    kf_lo, kf_hi = _ci(kf["rougeL_ci"]) if kf else (float("nan"), float("nan"))
    kf_close = bool(kf and kf["rougeL"] >= 0.9)
    decided = bool(comps) and all(_ci(c["ci95"])[0] > 0 or _ci(c["ci95"])[1] < 0
                                  for c in comps)
    ovh = _h200_overhead()
    speed_txt = ", ".join(f"P={r['prompt']} B={r['batch']}: {r['speedup']:.2f}x (model "
                          f"{r['bandwidth model']:.2f}x)" for r in thr["rows"])
    pk_kf = kf.get("passkey", float("nan")) if kf else float("nan")
    have_pk = pk is not None and kf is not None and pk_kf == pk_kf  # not NaN
    claims = [
        Claim("at 50% KV Keyformer keeps the full cache's accuracy against reference answers "
              "(passkey retrieval here)", measured=have_pk, ci_or_exact=False, own_paper=True,
              circular=False, holds=bool(pk_kf >= pk) if have_pk else None,
              result=(f"passkey accuracy {pk_kf:.2f} vs full cache {pk:.2f} over "
                      f"{s['tasks'].get('passkey', '?')} prompts (no CI at this n)" if have_pk else
                      "no passkey prompts in this preset")),
        Claim("our proxy: Keyformer's output stays close to the full cache's (ROUGE-L vs the "
              "full-cache output >= 0.9)", measured=kf is not None,
              ci_or_exact=bool(kf_lo >= 0.9) if kf_close else bool(kf_hi < 0.9),
              own_paper=False, circular=False, holds=kf_close if kf else None,
              result=(f"ROUGE-L vs full {kf['rougeL']:.3f} {kf['rougeL_ci']} (greedy outputs "
                      "diverge and the difference compounds; not the paper's metric)"
                      if kf else "keyformer-paper not in the policies")),
        Claim("at 50% KV Keyformer is above H2O and StreamingLLM (ROUGE-L vs the full-cache "
              "output, paired bootstrap)", measured=bool(comps),
              ci_or_exact=decided, own_paper=True, circular=False,
              holds=bool(kf_wins) if comps else None,
              result="; ".join(f"{c['comparison']} {c['mean_diff']:+.3f} {c['ci95']}"
                               for c in comps) or "no comparison"),
        Claim("2.1x lower latency / 2.4x higher throughput at 50% KV (6-7B models, A100)",
              measured=False, ci_or_exact=False, own_paper=True, circular=False, holds=None,
              result=("not testable at 135M on CPU: the weights dominate the bytes read per "
                      f"step, so the bandwidth model caps the gain well below 2x; measured "
                      f"{speed_txt}")),
        Claim("our substitute: the measured 50% speedup reaches >= 90% of the bandwidth "
              "model's prediction", measured=True, ci_or_exact=False, own_paper=False,
              circular=False, holds=bool(thr_ok), result=speed_txt),
    ]
    if ovh:
        claims.append(Claim(
            "project target: eviction overhead < 5% of a decode step (H200, bench_kvcache)",
            measured=True, ci_or_exact=False, own_paper=False, circular=False,
            holds=bool(ovh["max"] < ovh["target"]),
            result=f"{ovh['min']:.0%}-{ovh['max']:.0%} of a step"))
        extra.append("**Eviction overhead (H200, `docs/bench_kvcache_h200.json`).** "
                     + ", ".join(f"P={p['prompt']} B={p['batch']}: {p['overhead']:.1%}"
                                 + (f" (window, no scoring: {p['window_overhead']:.1%})"
                                    if p["window_overhead"] is not None else "")
                                 for p in ovh["points"])
                     + " of a decode step for Keyformer over the core step at the same width "
                     "(target < 5%: "
                     + ("met" if ovh["max"] < ovh["target"] else "not met") + "). "
                     + OVERHEAD_PLAN + "\n")
    note = ("Accuracy here is ROUGE-L against the full-cache greedy output of the same model "
            "plus passkey retrieval against its reference answer"
            + (" (quick: a handful of prompts, wide CIs)" if ctx.quick else "") + ".")
    metrics = {
        "rougeL_50": {r["policy"]: r["rougeL"] for r in table},
        "tf_agree_50": {r["policy"]: r["tf_agree"] for r in table},
        "kl_50": {r["policy"]: r["kl"] for r in table},
        "comparisons_50": comps,
        "throughput": thr["rows"],
        "passkey_full_acc": pk,
        "passkey_50": {r["policy"]: r.get("passkey") for r in table},
        "h200_eviction_overhead": ovh,
    }
    rows = [{k: v for k, v in r.items() if k in ("policy", "budget", "rougeL", "rougeL_ci",
                                                  "rouge1", "rouge2", "tf_agree", "kl",
                                                  "passkey")} for r in table]
    return Section(
        title=TITLE, claim=CLAIM, setup=setup, table=rows, claims=claims, note=note,
        measured=(f"at 50% KV: ROUGE-L vs full " + ", ".join(f"{r['policy']} {r['rougeL']:.3f}"
                                                          for r in table)
                  + f"; decode speedup {speed_txt}"
                  + (f"; H200 eviction overhead {ovh['min']:.0%}-{ovh['max']:.0%} of a step "
                     "(target < 5%)" if ovh else "") + "."),
        command=f"python -m experiments.reproduce --only={NAME}" + (" --quick" if ctx.quick
                                                                    else ""),
        plots=[plot], metrics=metrics, extra="\n".join(extra))
