"""LLMSRec-Syn experiment on synthetic ML-1M-format data: LLM prompting strategies (scored by
log-probability) against random / popularity / Markov / item-kNN / SASRec baselines and the
generator oracle, with the scrambled-titles control. Used by experiments/llmsrec_syn.py and
the ``llmsrec_syn`` reproduction entry."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxlm.agents.recsys.data import (
    RecData, SynthConfig, generate_synthetic, leave_one_out, make_candidates, scramble_titles)
from jaxlm.agents.recsys.metrics import (
    KS, ItemKNN, Markov, Oracle, Popularity, paired_diff, random_floor, rank_metrics, summarize)
from jaxlm.agents.recsys.prompting import (
    DemoPool, PromptConfig, build_prompt, count_tokens, rank_by_generation, score_candidates)


@dataclasses.dataclass(frozen=True)
class RecExpConfig:
    """Experiment sizes and methods.

    Attributes:
        synth: the synthetic world.
        n_test: test users evaluated (a seeded random subset of split users).
        methods: LLM methods as "strategy:k" (k ignored by zero/fixed).
        scrambled_methods: methods rerun on the scrambled-titles copy.
        norm: ranking value from scoring: "sum", "mean" or "pmi" (all three are recorded).
            Default "sum": the context-free PMI ranks below random on this data (the ground
            truth's context-free log-prob is higher than the negatives'; see README).
        mode: "score" (scoring tier) or "generate" (text tier + parser).
        answer_lines: in generate mode, > 0 decodes the answer under
            ``answer_format(titles, answer_lines)`` (every line names a candidate; the
            backend must enforce ``response_format``); 0 = free text.
        n_candidates, max_his_len: task sizes (20, 10).
        sasrec_steps: SASRec training steps (0 = skip).
        score_rows: prompts per jitted scoring call (1 on CPU; more on a GPU).
        score_len_step: scoring rows are padded to a multiple of this (coarser = fewer
            compiled shapes, more padding).
        n_llm_users: LLM methods run on the first this-many test users (None = all);
            the classic baselines always use all ``n_test``.
        subset_methods: further LLM methods run only on the first ``n_subset_users`` LLM
            users (e.g. expensive many-demonstration prompts).
        score_engine: "auto" | "fast" | "core" (see ``RecScorer``).
        score_mm_dtype, score_attn_dtype: fast-engine matmul / attention input dtypes
            ("float32" or "bfloat16"; accumulation, norms and softmax stay float32).
        score_row_buckets: pad each scoring row to its own length bucket (less padding).
        partial_every: score LLM users in blocks of this many and write ``partial.json``
            after each block (0 = one block).
        seed: candidate/demo seed.
    """

    synth: SynthConfig = SynthConfig(n_users=1000, n_items=400)
    n_test: int = 500
    methods: tuple[str, ...] = ("zero", "fixed", "random:1", "recency:1", "nearest:1",
                                "nearest:3", "aggregated:2", "aggregated:5")
    scrambled_methods: tuple[str, ...] = ("zero", "aggregated:2")
    norm: str = "sum"
    mode: str = "score"
    answer_lines: int = 0
    n_candidates: int = 20
    max_his_len: int = 10
    sasrec_steps: int = 300
    score_rows: int = 1
    score_len_step: int = 64
    n_llm_users: int | None = None
    subset_methods: tuple[str, ...] = ()
    n_subset_users: int = 48
    score_engine: str = "auto"
    score_mm_dtype: str = "float32"
    score_attn_dtype: str = "float32"
    score_row_buckets: bool = False
    partial_every: int = 100
    seed: int = 0


QUICK = RecExpConfig(synth=SynthConfig(n_users=300, n_items=200, min_len=12, max_len=30),
                     n_test=8, methods=("zero", "nearest:1", "aggregated:2"),
                     scrambled_methods=("aggregated:2",), n_candidates=10,
                     max_his_len=5, sasrec_steps=100, score_len_step=256)


NULL_PROMPT = "Answer:\n1."


def parse_method(m: str) -> PromptConfig:
    s, _, k = m.partition(":")
    return PromptConfig(strategy=s, k=int(k) if k else 1)


def run_experiment(backend: Any, cfg: RecExpConfig, outdir: str | pathlib.Path | None = None,
                   bar: Callable[..., Any] | None = None, data: RecData | None = None
                   ) -> dict[str, Any]:
    """Runs every method on the same test users/candidates.

    Args:
        backend: LLM backend (scoring tier for mode="score", text tier for "generate").
        cfg: sizes and methods.
        outdir: where llmsrec_syn.json and the NDCG@10 plot go (None = nowhere).
        bar: ``bar(total, desc)`` progress factory.
        data: a loaded dataset (e.g. ``load_ml1m``); default: ``generate_synthetic(cfg.synth)``.

    Returns:
        {"table": rows (method, data, n, metric means and CIs, prompt tokens),
         "per_user": {method: [metrics]}, "paired": {...}, "timing": {...}}.
    """
    if cfg.norm not in ("pmi", "mean", "sum") or cfg.mode not in ("score", "generate"):
        raise ValueError(f"norm must be pmi|mean|sum and mode score|generate, got {cfg}")
    t0 = time.time()
    data = data if data is not None else generate_synthetic(cfg.synth)
    split = leave_one_out(data)
    rng = np.random.default_rng(cfg.seed)
    users = [split.users[j] for j in rng.permutation(len(split.users))[: cfg.n_test]]
    cands = {}
    for u in users:
        cands[u] = make_candidates(data, split.test[u], split.test_hist[u], cfg.n_candidates,
                                   np.random.default_rng([cfg.seed, u]))
    per_user: dict[str, list[dict[str, float]]] = {}
    tokens: dict[str, list[int]] = {}
    extra: dict[str, list[dict[str, float]]] = {}

    def record(name, u, scores):
        per_user.setdefault(name, []).append(rank_metrics(scores, cands[u][1]))

    # classic baselines (same splits / candidates)
    pop, markov = Popularity(split), Markov(split)
    knn = ItemKNN(split, max(data.titles))
    oracle = Oracle(data) if data.world is not None else None
    for u in users:
        h, (c, _) = split.test_hist[u], cands[u]
        record("random", u, np.zeros(len(c)))
        record("popularity", u, pop.score(h, c))
        record("markov", u, markov.score(h, c))
        record("item-kNN", u, knn.score(h, c))
        if oracle is not None:
            record("oracle", u, oracle.score(h, c, u))
    timing = {"data+baselines_s": time.time() - t0}
    if cfg.sasrec_steps > 0:
        from jaxlm.agents.recsys.sasrec import SASRecConfig, train_sasrec

        t1 = time.time()
        model = train_sasrec(split, max(data.titles),
                             SASRecConfig(steps=cfg.sasrec_steps, seed=cfg.seed))
        timing["sasrec_train_s"] = time.time() - t1
        for u in users:
            record("SASRec", u, model.score(split.test_hist[u], cands[u][0]))

    llm_users = users[: cfg.n_llm_users] if cfg.n_llm_users else users
    if len(llm_users) < len(users):  # baselines on exactly the LLM users, for comparison
        for name in list(per_user):
            per_user[f"{name} [LLM users]"] = per_user[name][: len(llm_users)]
    runs = ([(m, False, llm_users) for m in cfg.methods]
            + [(m, False, llm_users[: cfg.n_subset_users]) for m in cfg.subset_methods]
            + [(m, True, llm_users) for m in cfg.scrambled_methods])
    sdata = scramble_titles(data, cfg.seed)
    scorer = None
    if cfg.mode == "score" and "forward" in getattr(backend, "capabilities", ()):
        # white-box tier (params, cfg, tokenizer): the packed scorer; other backends score
        # through the scoring tier (``score_candidates``)
        from jaxlm.agents.recsys.scoring import RecScorer

        scorer = RecScorer.from_backend(
            backend, rows=cfg.score_rows, len_step=cfg.score_len_step, engine=cfg.score_engine,
            mm_dtype=cfg.score_mm_dtype, attn_dtype=cfg.score_attn_dtype,
            row_buckets=cfg.score_row_buckets)
    null_cache: dict[str, float] = {}
    if scorer is not None:
        t1 = time.time()
        need = sorted({f" {d.titles[i]}\n" for d in ([data] + ([sdata] if cfg.scrambled_methods
                                                                 else []))
                       for u in llm_users for i in cands[u][0]})
        chunks = [need[j: j + cfg.n_candidates] for j in range(0, len(need), cfg.n_candidates)]
        res = scorer.score([NULL_PROMPT] * len(chunks), chunks, bar=bar, desc="null prompt")
        for ch, (s, _) in zip(chunks, res, strict=True):
            null_cache.update(zip(ch, s, strict=True))
        timing["null_prompt_s"] = time.time() - t1
    for m, scr, m_users in runs:
        pc = dataclasses.replace(parse_method(m), max_his_len=cfg.max_his_len,
                                 n_candidates=cfg.n_candidates)
        d = sdata if scr else data
        pool = DemoPool(d, split, pc, seed=cfg.seed)
        name = f"{m}{' (scrambled)' if scr else ''}"
        t1 = time.time()
        tok0 = scorer.stats.real_tokens if scorer is not None else 0
        prompts, titles, groups = [], [], []
        for u in m_users:
            hist = split.test_hist[u][-pc.max_his_len:]
            c = cands[u][0]
            demos = pool.demos_for(u, split.test_hist[u])
            prompts.append(build_prompt(d, hist, c, demos))
            titles.append([d.titles[i] for i in c])
            groups.append(tuple(x for dm in demos for x in dm.users)
                          if pc.strategy in ("fixed", "recency") else None)
            tokens.setdefault(name, []).append(count_tokens(backend, prompts[-1]))
        if scorer is not None:
            conts = [[f" {t}\n" for t in ts] for ts in titles]
            allvals = []
            step = cfg.partial_every or len(prompts)
            for b0 in range(0, len(prompts), step):  # blocks of users; partial results saved
                sl = slice(b0, b0 + step)
                res = scorer.score([p + "1." for p in prompts[sl]], conts[sl], bar=bar,
                                   desc=name, groups=groups[sl])
                for (s, n), cs in zip(res, conts[sl], strict=True):
                    allvals.append({"sum": s, "mean": s / np.maximum(n, 1),
                                    "pmi": s - np.array([null_cache[c] for c in cs])})
                if outdir is not None and len(allvals) < len(prompts):
                    part = [rank_metrics(v[cfg.norm], cands[u][1])
                            for u, v in zip(m_users, allvals, strict=False)]
                    _write_partial(outdir, cfg, timing, per_user,
                                   {f"{name} (first {len(part)} users)": part},
                                   time.time() - t1)
        elif cfg.mode == "score":
            allvals = [score_candidates(backend, p, ts, null_prompt=NULL_PROMPT,
                                        null_cache=null_cache)
                       for p, ts in zip(prompts, titles, strict=True)]
        else:
            allvals = []
            for p, ts in zip(prompts, titles, strict=True):
                s, matched = rank_by_generation(backend, p, ts,
                                                constrained=cfg.answer_lines > 0,
                                                lines=max(cfg.answer_lines, 1))
                allvals.append({"gen": s})
                extra.setdefault(f"{name}|parsed", []).append({"parsed": float(matched > 0)})
        for u, vals in zip(m_users, allvals, strict=True):
            if cfg.mode == "score":
                record(name, u, vals[cfg.norm])
                for nm in ("sum", "mean", "pmi"):
                    extra.setdefault(f"{name}|{nm}", []).append(
                        rank_metrics(vals[nm], cands[u][1]))
            else:
                record(name, u, vals["gen"])
        timing[f"{name}_s"] = time.time() - t1
        if outdir is not None:  # partial results survive an interrupted long run
            _write_partial(outdir, cfg, timing, per_user, {}, 0.0)
        if scorer is not None:
            timing[f"{name}_scored_tokens"] = scorer.stats.real_tokens - tok0
        timing[f"{name}_s_per_user"] = (time.time() - t1) / len(m_users)
    if scorer is not None:
        st = scorer.stats
        timing.update({"score_calls": st.calls, "score_compiled_shapes": len(st.shapes),
                       "score_forward_tokens": st.padded_tokens,
                       "score_real_tokens": st.real_tokens,
                       "score_shared_prefix_tokens_saved": st.shared_saved})

    table = []
    for name, rows in per_user.items():
        summ = summarize(rows, seed=cfg.seed)
        row = {"method": name, "data": "scrambled" if "scrambled" in name else data.name,
               "n": len(rows)}
        for k in KS:
            for met in ("NDCG", "HR"):
                mean, lo, hi = summ[f"{met}@{k}"]
                row[f"{met}@{k}"] = mean
                if k == 10 and met == "NDCG":
                    row["NDCG@10 CI"] = f"[{lo:.3f}, {hi:.3f}]"
        if name in tokens:
            row["prompt tokens"] = float(np.mean(tokens[name]))
        table.append(row)
    norms = {name: {k: float(np.mean([r["NDCG@10"] for r in rows]))}
             for name, rows in extra.items() for k in ["NDCG@10"] if "NDCG@10" in rows[0]}
    paired = {}
    n10 = {name: [r["NDCG@10"] for r in rows] for name, rows in per_user.items()}
    for a, b in [("aggregated:2", "nearest:1"), ("aggregated:2", "zero"),
                 ("aggregated:2", "fixed"), ("fixed", "zero"), ("nearest:2", "nearest:1"),
                 ("nearest:4", "nearest:1"), ("nearest:4", "nearest:2"),
                 ("nearest:1", "zero"), ("nearest:3", "nearest:1"), ("aggregated:2", "nearest:2"),
                 ("aggregated:4", "aggregated:2"), ("aggregated:4", "nearest:4"),
                 ("aggregated:5", "aggregated:2"), ("zero", "zero (scrambled)"),
                 ("aggregated:2", "aggregated:2 (scrambled)")]:
        if a in n10 and b in n10:  # methods on a user subset: pair on the common users
            k = min(len(n10[a]), len(n10[b]))  # (every method's users prefix the LLM users)
            paired[f"{a} - {b}"] = paired_diff(n10[a][:k], n10[b][:k], seed=cfg.seed)
    res = {"table": table, "per_user": per_user, "norms": norms, "paired": paired,
           "timing": timing, "random_floor": random_floor(cfg.n_candidates),
           "n_users": len(users), "n_llm_users": len(llm_users), "config": repr(cfg),
           "backend": getattr(backend, "name", "?")}
    if outdir is not None:
        outdir = pathlib.Path(outdir)
        outdir.mkdir(parents=True, exist_ok=True)
        (outdir / "llmsrec_syn.json").write_text(json.dumps(
            {k: v for k, v in res.items() if k != "per_user"}, indent=1, default=str))
        res["plot"] = str(plot_table(table, outdir / "llmsrec_ndcg10.png"))
    return res


def _write_partial(outdir, cfg: RecExpConfig, timing: dict, per_user: dict, extra: dict,
                   running_s: float) -> None:
    """NDCG@10 (mean, 95% CI) of everything finished so far -> ``outdir/partial.json``."""
    pathlib.Path(outdir).mkdir(parents=True, exist_ok=True)
    rows = {**per_user, **extra}
    (pathlib.Path(outdir) / "partial.json").write_text(json.dumps(
        {"timing": timing, "running_method_s": running_s,
         "NDCG@10": {k: summarize(v, n_boot=500, seed=cfg.seed).get("NDCG@10")
                     for k, v in rows.items()}}, indent=1, default=str))


def plot_table(table: Sequence[dict[str, Any]], path: pathlib.Path) -> pathlib.Path:
    """Bar chart of NDCG@10 with 95% CIs per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["method"] for r in table]
    means = np.array([r["NDCG@10"] for r in table])
    ci = [tuple(float(x) for x in r["NDCG@10 CI"].strip("[]").split(",")) for r in table]
    err = np.clip([[m - lo for m, (lo, _) in zip(means, ci, strict=True)],
                   [hi - m for m, (_, hi) in zip(means, ci, strict=True)]], 0, None)
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(names)), 3.5))
    ax.bar(range(len(names)), means, yerr=err, capsize=3, color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("NDCG@10")
    ax.set_title("Next-item ranking, 20 candidates (95% CI over users)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
