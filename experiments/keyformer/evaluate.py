"""Accuracy of fixed-budget caches against the full-cache output of the same model.

Tasks are built offline from ``pydoc_data.topics`` (Python's bundled docs):

* ``summarize`` / ``continue``: ChatML instruction + a passage of exactly
  ``prompt_tokens`` tokens (the passage is cut in token space);
* ``passkey``: "The pass key is NNNNN. Remember it." at a depth in a pydoc
  haystack, question inside the prompt (compressed with it);
* ``conversation``: a multi-turn chat over several documents, asking about the
  first one at the end.

Every prompt is prefilled once; each (policy, budget, seed) row derives its
cache from that prefill and decodes greedily (free run), then again under
teacher forcing with the full-cache continuation. Metrics against the full
output: ROUGE-1/2/L (``rouge-score``, stemmer), first-divergence position,
teacher-forced top-1 agreement and mean KL(p_full || p_policy) over the decode
steps; passkey accuracy. Confidence intervals are percentile bootstraps over
prompts (paired for differences).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.core import MODELS
from jaxlm.core.generate import pad_prompts
from jaxlm.kvcache import policy as P
from jaxlm.kvcache.cache import compress, prefill
from jaxlm.kvcache.engine import decode
from jaxlm.utils.config import Registry
from jaxlm.weights.tokenizer import ByteTokenizer

POLICY_SPECS = ("window", "streaming", "h2o", "tova", "snapkv", "keyformer-paper",
                "keyformer-reference", "keyformer-nonoise", "random")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """One accuracy-vs-budget experiment.

    Attributes:
        model: a packaged pretrained name, or a ``*_test`` preset (random weights,
            byte tokenizer) for smoke tests.
        prompt_tokens: passage / haystack length in tokens (prompts are a bit longer).
        n_text, n_passkey, n_conv: prompts per task (``n_text`` alternates summarize
            and continue).
        new_tokens: T, greedy tokens per prompt.
        budgets: cache budgets as fractions of each prompt.
        policies: names from POLICY_SPECS.
        seeds: Gumbel seeds for the Keyformer rows (and the random baseline).
        rows_per_batch: decode batch (rows = prompt x policy x budget x seed).
        prefill_batch: prompts per prefill call.
        bootstrap: bootstrap resamples.
    """

    model: str = "smollm2-135m-instruct"
    prompt_tokens: int = 1024
    n_text: int = 8
    n_passkey: int = 8
    n_conv: int = 4
    new_tokens: int = 64
    budgets: tuple[float, ...] = (0.25, 0.5, 0.75)
    policies: tuple[str, ...] = ("streaming", "h2o", "tova", "snapkv", "keyformer-paper",
                                 "keyformer-reference", "window")
    seeds: tuple[int, ...] = (0, 1, 2)
    rows_per_batch: int = 32
    prefill_batch: int = 4
    bootstrap: int = 1000

    def __post_init__(self):
        bad = [p for p in self.policies if p not in POLICY_SPECS]
        if bad:
            raise ValueError(f"EvalConfig.policies: unknown {bad}; choose from {POLICY_SPECS}")
        if any(not 0.0 < b <= 1.0 for b in self.budgets):
            raise ValueError(f"EvalConfig.budgets must be fractions in (0, 1], got {self.budgets}")
        if self.new_tokens < 2 or self.prompt_tokens < 32:
            raise ValueError("EvalConfig: need new_tokens >= 2 and prompt_tokens >= 32")
        if not self.seeds:
            raise ValueError("EvalConfig.seeds must not be empty")


EVALS: Registry[EvalConfig] = Registry("kvcache eval")
EVALS.add("keyformer", EvalConfig())
EVALS.add("keyformer_quick", EvalConfig(prompt_tokens=320, n_text=2, n_passkey=2, n_conv=1,
                                        new_tokens=32, seeds=(0,), prefill_batch=5,
                                        policies=("streaming", "h2o", "tova", "snapkv",
                                                  "keyformer-paper", "keyformer-reference")))
_TEST = dict(model="smollm2-135m_test", prompt_tokens=48, n_text=2, n_passkey=1, n_conv=1,
             new_tokens=6, budgets=(0.5,), seeds=(0,), rows_per_batch=8, bootstrap=50,
             policies=("streaming", "h2o", "keyformer-paper"))
EVALS.add("keyformer_quick_test", EvalConfig(**_TEST))
EVALS.add("keyformer_test", EvalConfig(model="smollm2-135m_test", prompt_tokens=48, n_text=2,
                                       n_passkey=1, n_conv=1, new_tokens=6, budgets=(0.5,),
                                       seeds=(0,), rows_per_batch=8, bootstrap=50,
                                       policies=("streaming", "h2o", "keyformer-paper")))


def make_policy(spec: str, budget: float, seed: int = 0) -> P.Policy:
    """Policy for a POLICY_SPECS name at ``budget`` with the per-method defaults of the spec."""
    if spec.startswith("keyformer"):
        mode = "reference" if spec.endswith("reference") else "paper"
        return P.Policy("keyformer", budget, mode=mode, seed=seed,
                        noise=not spec.endswith("nonoise"))
    return P.Policy(spec, budget, seed=seed)


# --------------------------------------------------------------------------- tokenizers/model
def load_model(name: str):
    """(cfg, params, tokenizer) for a pretrained name or a random ``*_test`` preset."""
    if name.endswith("_test"):
        from jaxlm.core import init

        cfg = dataclasses.replace(MODELS.get(name), init_std=0.3)
        # bytes from id 3 up (ids 0..2 stay reserved, as in a real vocabulary), no EOS
        tok = ByteTokenizer(vocab_size=cfg.vocab_size, offset=3, eos_id=None, stop_ids=())
        return cfg, init(jax.random.PRNGKey(0), cfg), tok
    from jaxlm import weights

    m = weights.load(name)
    return m.cfg, jax.tree.map(jnp.asarray, m.params), m.tokenizer


# --------------------------------------------------------------------------- tasks
def _corpus() -> list[str]:
    import pydoc_data.topics as t

    return [re.sub(r"\s+", " ", t.topics[k]).strip() for k in sorted(t.topics)]


def _chat_ids(tok, before: str, passage_ids: list[int], after: str) -> list[int]:
    """ChatML user turn ``before + passage + after`` with the passage inserted as token ids."""
    mark = "\u2063PASSAGE\u2063"
    ids = tok.encode_chat([{"role": "user", "content": before + mark + after}])
    mark_ids = tok.encode(mark)
    for i in range(len(ids) - len(mark_ids) + 1):
        if ids[i:i + len(mark_ids)] == mark_ids:
            return ids[:i] + passage_ids + ids[i + len(mark_ids):]
    head = tok.encode_chat([{"role": "user", "content": before}])
    return head + passage_ids + tok.encode(after)


def build_tasks(cfg: EvalConfig, tok, seed: int = 0) -> list[dict[str, Any]]:
    """The prompts: dicts with ``task``, ``ids`` and (passkey) ``answer``."""
    rng = np.random.default_rng(seed)
    docs = _corpus()
    long_text = " ".join(docs)
    stream = tok.encode(long_text[: 12 * cfg.prompt_tokens * (cfg.n_text + cfg.n_passkey + 4)])
    if len(stream) < 2 * cfg.prompt_tokens:
        raise ValueError("build_tasks: pydoc corpus too short for prompt_tokens")
    tasks = []
    for i in range(cfg.n_text):
        start = int(rng.integers(0, len(stream) - cfg.prompt_tokens))
        passage = stream[start:start + cfg.prompt_tokens]
        if i % 2 == 0:
            ids = _chat_ids(tok, "Summarize the following text:\n\n", passage, "")
            tasks.append({"task": "summarize", "ids": ids})
        else:
            ids = _chat_ids(tok, "Continue the following text in the same style:\n\n", passage,
                            "")
            tasks.append({"task": "continue", "ids": ids})
    depths = np.linspace(0.0, 1.0, max(cfg.n_passkey, 1))
    for i in range(cfg.n_passkey):
        key = str(int(rng.integers(10000, 100000)))
        needle = tok.encode(f" The pass key is {key}. Remember it. {key} is the pass key. ")
        start = int(rng.integers(0, len(stream) - cfg.prompt_tokens))
        hay = stream[start:start + cfg.prompt_tokens - len(needle)]
        at = int(round(depths[i] * len(hay)))
        passage = hay[:at] + needle + hay[at:]
        ids = _chat_ids(tok, "There is a pass key hidden in this text. Find it.\n\n", passage,
                        "\n\nWhat is the pass key? Answer with the number only.")
        tasks.append({"task": "passkey", "ids": ids, "answer": key, "depth": float(depths[i])})
    for _ in range(cfg.n_conv):
        k = 3
        per = cfg.prompt_tokens // k
        pick = rng.choice(len(docs), size=k, replace=False)
        msgs = []
        for j, d in enumerate(pick):
            body = tok.decode(tok.encode(docs[d])[:per])
            lead = "Here is a piece of Python documentation:\n\n" if j == 0 else \
                "Thanks. Here is another one:\n\n"
            msgs.append({"role": "user", "content": lead + body})
            msgs.append({"role": "assistant", "content": "I have read it. What would you like "
                         "to know about it?"})
        msgs.append({"role": "user", "content": "Explain in a few sentences what the first "
                     "document was about."})
        tasks.append({"task": "conversation", "ids": tok.encode_chat(msgs)})
    return tasks


# --------------------------------------------------------------------------- metrics
def _truncate(ids: Sequence[int], stop_ids: Sequence[int]) -> list[int]:
    out = []
    for t in ids:
        if int(t) in stop_ids:
            break
        out.append(int(t))
    return out


def rouge(ref: str, hyp: str) -> dict[str, float]:
    from rouge_score import rouge_scorer

    sc = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    if not ref.strip() and not hyp.strip():
        return {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    s = sc.score(ref, hyp)
    return {k: float(v.fmeasure) for k, v in s.items()}


def log_softmax_np(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def bootstrap_ci(values: np.ndarray, n: int, seed: int = 0, alpha: float = 0.05):
    """(mean, lo, hi) percentile bootstrap over the first axis."""
    values = np.asarray(values, np.float64)
    if values.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n, len(values)))
    means = values[idx].mean(axis=1)
    return (float(values.mean()), float(np.quantile(means, alpha / 2)),
            float(np.quantile(means, 1 - alpha / 2)))


# --------------------------------------------------------------------------- the run
def _row_specs(cfg: EvalConfig) -> list[tuple[str, float, int]]:
    """(policy spec, budget, seed) for every non-full row of one prompt."""
    rows = []
    for b in cfg.budgets:
        for spec in cfg.policies:
            seeds = cfg.seeds if spec.startswith("keyformer") and spec != "keyformer-nonoise" \
                or spec == "random" else (0,)
            rows += [(spec, b, s) for s in seeds]
    return rows


def run_eval(cfg: EvalConfig, *, progress: Callable[[int, str], Any] | None = None,
             outdir: str | pathlib.Path | None = None, seed: int = 0) -> dict[str, Any]:
    """Runs the experiment; returns per-row records, the aggregated table and the setup.

    Args:
        cfg: the EvalConfig.
        progress: ``progress(total, desc)`` -> tqdm-like bar.
        outdir: if given, per-row outputs go to ``<outdir>/outputs.jsonl``.
        seed: task-construction seed.
    """
    mcfg, params, tok = load_model(cfg.model)
    stop_ids = tuple(getattr(tok, "stop_ids", ()) or ())
    tasks = build_tasks(cfg, tok, seed)
    t_new = cfg.new_tokens
    specs = _row_specs(cfg)
    variants = tuple((s, 1.0, True) for s in cfg.seeds if any(
        sp.startswith("keyformer") and sp != "keyformer-nonoise" for sp in cfg.policies))
    if "keyformer-nonoise" in cfg.policies:
        variants += ((0, 1.0, False),)
    plens = [len(t["ids"]) for t in tasks]
    bucket = 16
    pad_len = -(-max(plens) // bucket) * bucket
    capacity = pad_len + t_new  # the full rows; budget rows use their own C <= capacity
    n_groups = -(-len(tasks) // cfg.prefill_batch)
    rows_per_group = cfg.prefill_batch * (1 + 2 * len(specs))
    n_chunks = n_groups * -(-rows_per_group // cfg.rows_per_batch)
    bar = progress(n_groups + n_chunks, "keyformer eval") if progress else None
    records: list[dict[str, Any]] = []
    r = cfg.rows_per_batch

    def run_rows(pre, gl, rows, forced_np):
        """rows: list of (prompt-in-group idx, Policy, forced?) -> tokens, logits."""
        toks_out, logits_out = [], []
        for c0 in range(0, len(rows), r):
            chunk = rows[c0:c0 + r]
            padded = chunk + [chunk[0]] * (r - len(chunk))
            src = np.array([x[0] for x in padded], np.int32)
            pp = P.resolve_rows([x[1] for x in padded], [gl[x[0]] for x in padded], t_new,
                                variants)
            use = np.array([x[2] for x in padded], bool)
            forced = np.stack([forced_np[x[0]] for x in padded]).astype(np.int32)
            state = compress(pre, src, pp, capacity)
            out = decode(params, mcfg, state, pre.logits[src], pp, t_new, forced=forced,
                         use_forced=use, return_logits=True)
            toks_out.append(np.asarray(out.tokens)[: len(chunk)])
            logits_out.append(np.asarray(out.logits)[: len(chunk)])
            if bar is not None:
                bar.update(1)
        return np.concatenate(toks_out), np.concatenate(logits_out)

    for g in range(n_groups):
        group = tasks[g * cfg.prefill_batch:(g + 1) * cfg.prefill_batch]
        n_real = len(group)
        group_ids = [t["ids"] for t in group]
        group_ids += [group_ids[0]] * (cfg.prefill_batch - n_real)
        toks, mask = pad_prompts(group_ids, 0, pad_len)
        gl = [len(x) for x in group_ids]
        pre = prefill(params, mcfg, toks, mask, variants=variants, obs_rows=64)
        if bar is not None:
            bar.update(1)
        dummy = np.zeros((len(group_ids), t_new), np.int32)
        free_rows = [(i, P.Policy("full"), False) for i in range(n_real)]
        free_rows += [(i, make_policy(s, b, sd), False) for i in range(n_real)
                      for s, b, sd in specs]
        ftoks, flogits = run_rows(pre, gl, free_rows, dummy)
        full_toks = ftoks[:n_real]
        full_lp = log_softmax_np(flogits[:n_real])  # [n, T, V]
        forced_np = np.zeros_like(dummy)
        forced_np[:n_real] = full_toks
        forced_rows = [(i, make_policy(s, b, sd), True) for i in range(n_real)
                       for s, b, sd in specs]
        tf_toks, tf_logits = run_rows(pre, gl, forced_rows, forced_np)
        free_by_key = {(x[0], x[1]): ftoks[j] for j, x in enumerate(free_rows)}
        for j, (i, pol, _) in enumerate(forced_rows):
            task = group[i]
            ref_ids = _truncate(full_toks[i], stop_ids)
            hyp_ids = _truncate(free_by_key[(i, pol)], stop_ids)
            ref_txt, hyp_txt = tok.decode(ref_ids), tok.decode(hyp_ids)
            lp = log_softmax_np(tf_logits[j][1:])
            pf = full_lp[i][1:]
            kl = float((np.exp(pf) * (pf - lp)).sum(-1).mean())
            agree = float((tf_toks[j][1:] == full_toks[i][1:]).mean())
            same = np.asarray(free_by_key[(i, pol)]) == full_toks[i]
            first_div = int(np.argmin(same)) if not same.all() else t_new
            rec = {"prompt": g * cfg.prefill_batch + i, "task": task["task"],
                   "prompt_len": len(task["ids"]), "policy": _spec_name(pol),
                   "budget": float(pol.budget), "capacity": pol.capacity(len(task["ids"]), t_new),
                   "seed": pol.seed, **rouge(ref_txt, hyp_txt), "tf_agree": agree, "kl": kl,
                   "first_div": first_div, "exact": bool(same.all()), "output": hyp_txt,
                   "full_output": ref_txt}
            if task["task"] == "passkey":
                rec["passkey_ok"] = task["answer"] in hyp_txt
                rec["passkey_full_ok"] = task["answer"] in ref_txt
            records.append(rec)
    if bar is not None:
        bar.close()
    if outdir is not None:
        p = pathlib.Path(outdir)
        p.mkdir(parents=True, exist_ok=True)
        with open(p / "outputs.jsonl", "w") as f:
            for rec in records:
                f.write(json.dumps(rec) + "\n")
    table = aggregate(records, cfg)
    setup = {"model": cfg.model, "n_prompts": len(tasks), "prompt_lens": plens,
             "tasks": {t: sum(x["task"] == t for x in tasks) for t in
                       ("summarize", "continue", "passkey", "conversation")},
             "new_tokens": t_new, "budgets": list(cfg.budgets), "seeds": list(cfg.seeds),
             "policies": list(cfg.policies), "capacity": capacity, "passkey_full_acc": None}
    pk = [x for x in records if x["task"] == "passkey"]
    if pk:
        by_prompt = {x["prompt"]: x["passkey_full_ok"] for x in pk}
        setup["passkey_full_acc"] = float(np.mean(list(by_prompt.values())))
    return {"records": records, "table": table, "setup": setup,
            "comparisons": compare(records, cfg)}


def _spec_name(pol: P.Policy) -> str:
    if pol.name == "keyformer":
        return "keyformer-" + (pol.mode if pol.noise else "nonoise")
    return pol.name


def _per_prompt(records, policy, budget, key, task=None):
    """Per-prompt values (mean over seeds), sorted by prompt id."""
    vals: dict[int, list[float]] = {}
    for x in records:
        if x["policy"] == policy and x["budget"] == budget and key in x \
                and (task is None or x["task"] == task):
            vals.setdefault(x["prompt"], []).append(float(x[key]))
    ids = sorted(vals)
    return ids, np.array([np.mean(vals[i]) for i in ids])


def aggregate(records: list[dict[str, Any]], cfg: EvalConfig) -> list[dict[str, Any]]:
    """One row per (policy, budget): means with bootstrap CIs over prompts."""
    rows = []
    for b in cfg.budgets:
        for spec in cfg.policies:
            row: dict[str, Any] = {"policy": spec, "budget": f"{b:.0%}"}
            for key in ("rougeL", "rouge1", "rouge2", "tf_agree", "kl"):
                _, v = _per_prompt(records, spec, b, key)
                m, lo, hi = bootstrap_ci(v, cfg.bootstrap)
                row[key] = m
                if key in ("rougeL", "tf_agree"):
                    row[f"{key}_ci"] = f"[{lo:.3f}, {hi:.3f}]"
            _, fd = _per_prompt(records, spec, b, "first_div")
            row["first_div"] = float(fd.mean()) if fd.size else float("nan")
            _, pk = _per_prompt(records, spec, b, "passkey_ok")
            row["passkey"] = float(pk.mean()) if pk.size else float("nan")
            seeds = sorted({x["seed"] for x in records if x["policy"] == spec})
            if len(seeds) > 1:
                per_seed = [np.mean([x["rougeL"] for x in records if x["policy"] == spec
                                     and x["budget"] == b and x["seed"] == s]) for s in seeds]
                row["rougeL_seed_std"] = float(np.std(per_seed))
            rows.append(row)
    return rows


def compare(records, cfg: EvalConfig, a: str = "keyformer-paper",
            others: Sequence[str] = ("h2o", "streaming")) -> list[dict[str, Any]]:
    """Paired bootstrap of ROUGE-L(a) - ROUGE-L(other) per budget."""
    out = []
    if a not in cfg.policies:
        return out
    for b in cfg.budgets:
        ia, va = _per_prompt(records, a, b, "rougeL")
        for o in others:
            if o not in cfg.policies:
                continue
            io, vo = _per_prompt(records, o, b, "rougeL")
            assert ia == io
            m, lo, hi = bootstrap_ci(va - vo, cfg.bootstrap, seed=1)
            out.append({"budget": f"{b:.0%}", "comparison": f"{a} - {o}", "mean_diff": m,
                        "ci95": f"[{lo:.3f}, {hi:.3f}]", "a": float(va.mean()),
                        "b": float(vo.mean()), "a_ge_b": bool(va.mean() >= vo.mean())})
    return out


def plot(table: list[dict[str, Any]], cfg: EvalConfig, path: str | pathlib.Path) -> str:
    """Accuracy vs budget per policy (ROUGE-L, teacher-forced agreement, passkey)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("rougeL", "ROUGE-L vs full"), ("tf_agree", "teacher-forced top-1 agreement"),
            ("passkey", "passkey accuracy")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (k, title) in zip(axes, keys, strict=True):
        for spec in cfg.policies:
            xs = [100 * b for b in cfg.budgets]
            ys = [next(r[k] for r in table if r["policy"] == spec and r["budget"] == f"{b:.0%}")
                  for b in cfg.budgets]
            ax.plot(xs, ys, marker="o", label=spec)
        ax.set_xlabel("KV budget (% of prompt)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
