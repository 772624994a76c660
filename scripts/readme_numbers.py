"""The README's status table, generated from the committed evidence (docs/report/metrics.json).

    python scripts/readme_numbers.py            # check: exit 1 and list what drifted
    python scripts/readme_numbers.py --write    # rewrite the table from metrics.json

The table sits between ``BEGIN`` and ``END`` markers in README.md. Every number in it
is formatted here from ``docs/report/metrics.json`` (the last published quick run), so a
number typed by hand, or left behind when the report changes, fails the check
(``tests/test_readme_numbers.py``). Results recorded elsewhere (full runs, GPU
benchmarks under docs/) belong in the per-paper sections below the table.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import re
import sys
from collections.abc import Callable

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
METRICS = ROOT / "docs" / "report" / "metrics.json"
BEGIN = ("<!-- status table: generated from docs/report/metrics.json by "
         "scripts/readme_numbers.py --write; do not edit by hand -->")
END = "<!-- end of status table -->"
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?%?x?")


class MissingMetric(KeyError):
    pass


def _get(m: dict, path: str):
    """``m["a"]["b"]`` for path "a/b" (keys may contain dots, colons and dashes)."""
    cur = m
    for part in path.split("/"):
        if not isinstance(cur, dict) or part not in cur or cur[part] is None:
            raise MissingMetric(path)
        cur = cur[part]
    if isinstance(cur, float) and not math.isfinite(cur):
        raise MissingMetric(path)
    return cur


def _smollm2(m: dict) -> str:
    b1 = _get(m, "decode_b1_tok_s")
    s = (f"logits vs transformers: rel. error {_get(m, 'parity_rel_err'):.1e}; batch-1 decode "
         f"{b1:.1f} tok/s ({b1 / _get(m, 'floor_tok_s'):.2f} of the bandwidth floor"
         + (f", {m['b1_over_hf']:.2f}x HF" if m.get("b1_over_hf") else ", HF not measured")
         + f"); batch 16 {_get(m, 'decode_b16_tok_s'):.0f} tok/s; chat "
         f"{_get(m, 'chat_correct')}/4")
    return s


def _train_lm(m: dict) -> str:
    return (f"train loss {_get(m, 'first_train_loss'):.2f} -> {_get(m, 'last_train_loss'):.2f} "
            f"nats/byte in {_get(m, 'steps')} steps; held-out {_get(m, 'final_eval_loss'):.2f} "
            f"vs unigram {_get(m, 'unigram_entropy'):.2f}; MFU {_get(m, 'mfu'):.2f}")


def _keyformer(m: dict) -> str:
    r = _get(m, "rougeL_50")
    pk = m.get("passkey_50", {}).get("keyformer-paper")
    s = (f"passkey at 50% KV: Keyformer {pk:.2f} vs full {_get(m, 'passkey_full_acc'):.2f}; "
         if pk is not None and pk == pk else "")
    s += (f"ROUGE-L vs full at 50% KV: Keyformer {_get(r, 'keyformer-paper'):.2f}, H2O "
         f"{_get(r, 'h2o'):.2f}, StreamingLLM {_get(r, 'streaming'):.2f}; CPU decode speedup "
         + ", ".join(f"{t['speedup']:.2f}x (model {t['bandwidth model']:.2f}x)"
                     for t in _get(m, "throughput")))
    o = m.get("h200_eviction_overhead")
    if o:
        s += (f"; H200 eviction overhead {o['min']:.0%}-{o['max']:.0%} of a step (target < 5%, "
              "not met; plan in the report)" if o["max"] >= 0.05 else
              f"; H200 eviction overhead <= {o['max']:.0%} of a step")
    return s


def _mamba_nd(m: dict) -> str:
    parts = []
    for task, res in _get(m, "tasks").items():
        others = {k: v for k, v in res.items() if k != "mamba_nd" and v is not None}
        if "mamba_nd" not in res or not others:
            continue
        higher = _get(m, "higher_is_better").get(task, True)
        best = (max if higher else min)(others, key=others.get)
        parts.append(f"{task}: Mamba-ND {res['mamba_nd']:.3g} vs {best} {others[best]:.3g}")
    return "; ".join(parts) or "no task results"


def _meanfield(m: dict) -> str:
    c = _get(m, "claims")
    return (f"T2 ICL risk n=256: trained {_get(m, 'e2_trained_icl_n256'):.4f} vs optimum "
            f"{_get(m, 'e2_true_feats_n256'):.4f}, LSA alone {_get(m, 'e2_lsa_n256'):.3f}; "
            + ", ".join(f"{k} {v}" for k, v in c.items()))


def _tips(m: dict) -> str:
    d = _get(m, "diffs")
    parts = []
    for key, label in (("actor_vs_random", "actor - random"), ("S1_tips_vs_none", "S1 tips - none"),
                       ("S2_tips_vs_none", "S2 tips - none"), ("S3_tips_vs_none", "S3 tips - none"),
                       ("oracle_vs_none", "oracle tips - none")):
        if key in d:
            r = d[key]
            parts.append(f"{label} {r['mean']:+.2f} [{r['ci'][0]:+.2f}, {r['ci'][1]:+.2f}]")
    n = max(r.get("n_games", 0) for r in d.values())
    actor = "LoRA actor" if m.get("adapter") else "prompt-only actor"
    return (f"{actor}, {n} games: " + "; ".join(parts)
            + f"; replay exact {_get(m, 'replay_exact')}")


def _llmsrec(m: dict) -> str:
    n = _get(m, "ndcg10")
    return (f"NDCG@10 aggregated:2 {_get(n, 'aggregated:2'):.3f}, nearest:1 "
            f"{_get(n, 'nearest:1'):.3f}, zero-shot {_get(n, 'zero'):.3f}, item-kNN "
            f"{_get(n, 'item-kNN'):.3f}")


def _luminate(m: dict) -> str:
    return (f"distinct-2 {_get(m, 'diversity_structured/distinct-2'):.2f} structured vs "
            f"{_get(m, 'diversity_unstructured/distinct-2'):.2f} unstructured; coverage "
            f"{_get(m, 'coverage'):.2f}")


def _tacs(m: dict) -> str:
    by = {r["method"]: r for r in _get(m, "table")}
    best = max(("tacs_token", "tacs_sentence"), key=lambda k: _get(by, f"{k}/DA"))
    return (f"DA {_get(by, f'{best}/DA'):.2f} ({best}) vs {_get(by, 'no_selection/DA'):.2f} "
            f"without selection; probe peak {_get(m, 'probe_best_acc_sentence_known'):.2f} at "
            f"layer {_get(m, 'probe_best_layer_sentence_known')}")


def _atom(m: dict) -> str:
    s = (f"cost model vs the spec's tables: max abs diff {_get(m, 'max_table_abs_diff'):.2f} "
         "(circular)")
    sizes = (m.get("netns") or {}).get("sizes") or {}
    pts = []
    for name, sz in sizes.items():
        for r in sz.get("rows", []):
            pipe = max(r[k]["tokens_per_s"] for k in ("pipe_blocking", "pipe_overlap") if k in r)
            pts.append(f"{name} {r['rate_mbit']:g} Mbit/s {r['atom']['tokens_per_s'] / pipe:.2f}")
    s += ("; measured Atom / best pipeline over shaped links: " + ", ".join(pts) if pts
          else "; no shaped-link measurement in this run")
    return s + "; 20x simulated only"

def _antiunify(m: dict) -> str:
    nb = _get(m, "nullarity_bounded")
    return (f"BKLV pattern lgg: golden rows {'pass' if _get(m, 'golden_pass') else 'FAIL'}, "
            f"time slope {_get(m, 'slope_bucket'):.2f} (1 = linear); nullarity (seed paper): "
            f"chain G_m <= G_n iff m divides n {'holds' if _get(m, 'chain_lemma_holds') else 'FAILS'}, "
            f"none of {_get(nb, 'checked')} generalizations of size <= {_get(nb, 'k')} is "
            f"maximal: {'holds' if _get(nb, 'holds') else 'FAILS'}")


def _explain(m: dict) -> str:
    by = {r["method"]: r for r in _get(m, "table")}
    plaus = {r["method"]: r["_ci"][0] for r in _get(m, "plausibility")}
    rho = _get(m, "randomization_last_ci")
    return ("AOPC minus random: " + ", ".join(
        f"{k} {_get(by, f'{k}/_aopc_vs_random_ci')[0]:+.3f}"
        for k in ("occlusion", "kernel_shap", "lime", "integrated_gradients") if k in by)
        + "; Spearman after full randomization " + ", ".join(
            f"{k} {v[0]:.2f}" for k, v in rho.items())
        + f"; mass on the country (chance {_get(m, 'chance_mass'):.2f}) " + ", ".join(
            f"{k} {plaus[k]:.2f}" for k in ("integrated_gradients", "kernel_shap", "lime")
            if k in plaus))


def _refresh(m: dict) -> str:
    single = _get(m, "single")
    parts = [f"{label} ES/PS/NS {_get(single, f'{k}/es'):.2f}/{_get(single, f'{k}/ps'):.2f}/"
             f"{_get(single, f'{k}/ns'):.2f}"
             for k, label in (("rome", "ROME"), ("memit", "MEMIT"), ("alphaedit", "AlphaEdit"),
                              ("ft", "FT-L")) if k in single]
    s = f"edit layer {_get(m, 'layer')} (traced on calibration facts); " + "; ".join(parts)
    seq = m.get("sequential") or {}
    last = {k: v[-1] for k, v in seq.items() if isinstance(v, list) and v}
    keep = [f"{k} {v['retain']:.2f}" for k, v in last.items()
            if isinstance(v, dict) and isinstance(v.get("retain"), float)
            and math.isfinite(v["retain"])]
    if keep:
        n = max(v.get("edits", 0) for v in last.values() if isinstance(v, dict))
        s += f"; retained after {n} sequential edits: " + ", ".join(keep)
    return s


# entry -> (paper / component, numbers from its metrics); entries not listed get the verdict only
ROWS: dict[str, tuple[str, Callable[[dict], str] | None]] = {
    "smollm2": ("LM substrate (SmolLM2-135M)", _smollm2),
    "train_lm": ("training substrate", _train_lm),
    "keyformer": ("Keyformer (MLSys 2024)", _keyformer),
    "mamba_nd": ("Mamba-ND (2024)", _mamba_nd),
    "meanfield_icl": ("Kim & Suzuki (ICML 2024)", _meanfield),
    "antiunify": ("anti-unification / nullarity", _antiunify),
    "introspective_tips": ("Introspective Tips (2023)", _tips),
    "llmsrec_syn": ("LLMSRec-Syn (2024)", _llmsrec),
    "luminate": ("Luminate (CHI 2024)", _luminate),
    "explain": ("explainability survey", _explain),
    "tacs": ("TACS (2024)", _tacs),
    "refresh_knowledge": ("ROME / MEMIT", _refresh),
    "atom": ("Atom (2024)", _atom),
}


def render(metrics: dict) -> str:
    """The status table (between the markers) from a metrics.json dict."""
    lines = [BEGIN, "", "| entry | paper / component | verdict (quick run) | measured (quick run) "
             "| wall s |", "|---|---|---|---|---|"]
    names = list(ROWS) + [n for n in metrics if n not in ROWS]
    for name in names:
        paper, fn = ROWS.get(name, (name, None))
        m = metrics.get(name)
        if m is None:
            lines.append(f"| `{name}` | {paper} | not in docs/report | - | - |")
            continue
        try:
            numbers = fn(m) if fn else "see the report section"
        except (MissingMetric, KeyError, TypeError, ZeroDivisionError) as e:
            numbers = f"metric missing: {e}"
        anchor = "entry-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        lines.append(f"| [`{name}`](docs/report/report.md#{anchor}) | {paper} | {m['verdict']} "
                     f"| {numbers.replace('|', '/')} | {m.get('seconds', float('nan')):.0f} |")
    lines += ["", END]
    return "\n".join(lines)


def _split(readme: str) -> tuple[str, str, str]:
    if BEGIN not in readme or END not in readme:
        raise ValueError(f"README.md has no status-table markers; put\n{BEGIN}\n{END}\nwhere "
                         "the table goes and run `python scripts/readme_numbers.py --write`")
    head, rest = readme.split(BEGIN, 1)
    table, tail = rest.split(END, 1)
    return head, BEGIN + table + END, tail


def check(readme: str, metrics: dict) -> list[str]:
    """Differences between README's table and the one metrics.json gives (empty: in sync)."""
    _, have, _ = _split(readme)
    want = render(metrics)
    if have == want:
        return []
    problems = []
    h_rows = {r.split("|")[1].strip(): r for r in have.splitlines() if r.startswith("| ")}
    w_rows = {r.split("|")[1].strip(): r for r in want.splitlines() if r.startswith("| ")}
    for key in list(w_rows) + [k for k in h_rows if k not in w_rows]:
        h, w = h_rows.get(key), w_rows.get(key)
        if h == w:
            continue
        if h is None or w is None:
            where = "missing from README" if h is None else "not in metrics.json"
            problems.append(f"{key}: row {where}")
            continue
        hn, wn = _NUMBER.findall(h), _NUMBER.findall(w)
        extra = [x for x in hn if x not in wn]
        problems.append(f"{key}: README numbers not in metrics.json: {extra or 'none'}; "
                        f"expected row:\n  {w}")
    return problems or ["table text differs (markers or layout); rerun with --write"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="rewrite README's table")
    ap.add_argument("--readme", type=pathlib.Path, default=README)
    ap.add_argument("--metrics", type=pathlib.Path, default=METRICS)
    args = ap.parse_args(argv)
    if not args.metrics.exists():
        print(f"{args.metrics} missing: run `python -m experiments.reproduce --quick --publish`",
              file=sys.stderr)
        return 2
    metrics = json.loads(args.metrics.read_text())
    readme = args.readme.read_text()
    if args.write:
        head, _, tail = _split(readme)
        args.readme.write_text(head + render(metrics) + tail)
        print(f"wrote the status table of {args.readme}")
        return 0
    problems = check(readme, metrics)
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
