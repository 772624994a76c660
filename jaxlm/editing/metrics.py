"""Edit metrics: CounterFact-style ES/PS/NS (+ magnitudes), top-1 accuracy, fluency, CIs.

All probabilities are next-token probabilities of single-token objects:
- Efficacy ES = 1[P(new) > P(true)] on the rewrite prompt; EM = P(new) - P(true);
  top-1 = 1[argmax = new] (the EasyEdit-style token accuracy for one token).
- Paraphrase PS = mean over the case's paraphrases of 1[P(new) > P(true)].
- Neighbourhood NS = mean over neighbour prompts of 1[P(their true) > P(new)].
- Fluency: n-gram entropy of greedy generations, ROME's weighting
  (2/3 * bigram + 4/3 * trigram entropy, averaged; weights as recalled from the ROME
  code, [unverified] in the spec).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from jaxlm.core import ModelConfig
from jaxlm.editing import hooks
from jaxlm.editing.data import EditCase
from jaxlm.editing.requests import TokenizerLike, encode_target

Params = dict[str, Any]
Rewrite = Callable[[str, EditCase | None], str]


def _tid(tok: TokenizerLike, prompt: str, obj: str) -> int:
    ids = encode_target(tok, prompt, obj)
    if len(ids) != 1:
        raise ValueError(f"object {obj!r} is {len(ids)} tokens; the metrics need single tokens")
    return ids[0]


def evaluate_cases(
    params: Params,
    cfg: ModelConfig,
    tok: TokenizerLike,
    cases: Sequence[EditCase],
    *,
    rewrite: Rewrite | None = None,
) -> list[dict[str, float]]:
    """Per-case ES/EM/top1, PS/PM, NS/NM for the model ``params``.

    Args:
        rewrite: optional ``f(prompt, case) -> prompt`` applied to every evaluated
            prompt (the retrieval baseline prepends retrieved facts); ``case`` is the
            case the prompt belongs to (for oracle scope checks; None is never passed).
    """
    rewrite = rewrite or (lambda p, c: p)
    items = []  # (case index, kind, prompt, obj_a, obj_b)
    for i, c in enumerate(cases):
        r = c.request
        items.append((i, "rw", r.text, r.target_new, r.target_true))
        for p in c.paraphrases:
            items.append((i, "para", p, r.target_new, r.target_true))
        for p, true in c.neighbours:
            items.append((i, "nb", p, true, r.target_new))
    texts = [rewrite(p, cases[i]) for i, _, p, _, _ in items]
    lp = hooks.next_token_logprobs(params, cfg, [tok.encode(t) for t in texts])
    res: list[dict[str, list[float]]] = [
        {k: [] for k in ("es", "em", "top1", "ps", "pm", "ns", "nm")} for _ in cases
    ]
    for (i, kind, p, a, b), row in zip(items, lp, strict=True):
        ta, tb = _tid(tok, p, a), _tid(tok, p, b)
        pa, pb = float(np.exp(row[ta])), float(np.exp(row[tb]))
        if kind == "rw":
            res[i]["es"].append(float(pa > pb))
            res[i]["em"].append(pa - pb)
            res[i]["top1"].append(float(int(np.argmax(row)) == ta))
        elif kind == "para":
            res[i]["ps"].append(float(pa > pb))
            res[i]["pm"].append(pa - pb)
        else:
            res[i]["ns"].append(float(pa > pb))
            res[i]["nm"].append(pa - pb)
    return [{k: (float(np.mean(v)) if v else float("nan")) for k, v in r.items()} for r in res]


def summarize(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Means over cases (NaN entries skipped), with 95% Wilson CIs for ES/PS/NS/top1."""
    out: dict[str, float] = {"n": float(len(rows))}
    for k in ("es", "em", "top1", "ps", "pm", "ns", "nm"):
        v = np.array([r[k] for r in rows if not math.isnan(r[k])])
        out[k] = float(v.mean()) if len(v) else float("nan")
        if k in ("es", "ps", "ns", "top1") and len(v):
            lo, hi = wilson(float(v.sum()), len(v))
            out[k + "_lo"], out[k + "_hi"] = lo, hi
    return out


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (fractional successes allowed)."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def ngram_entropy(text: str, ns: Sequence[int] = (2, 3),
                  weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """Weighted mean of word n-gram entropies (bits), ROME's generation-entropy recipe."""
    words = text.split()
    ents = []
    for n, w in zip(ns, weights, strict=True):
        grams = Counter(tuple(words[i : i + n]) for i in range(max(len(words) - n + 1, 0)))
        total = sum(grams.values())
        if total == 0:
            ents.append(0.0)
            continue
        f = np.array(list(grams.values()), np.float64) / total
        ents.append(w * float(-(f * np.log2(f)).sum()))
    return float(np.mean(ents))


def fluency(
    params: Params, cfg: ModelConfig, tok: TokenizerLike, prompts: Sequence[str], *,
    max_new_tokens: int = 40,
) -> tuple[float, list[str]]:
    """Mean n-gram entropy of greedy continuations of ``prompts`` (and the texts)."""
    from jaxlm.core.generate import generate

    out = generate(params, cfg, [tok.encode(p) for p in prompts], max_new_tokens=max_new_tokens,
                   key=jax.random.PRNGKey(0), stop_ids=tuple(getattr(tok, "stop_ids", ())),
                   pad_id=0)
    toks, lens = np.asarray(out.tokens), np.asarray(out.lengths)
    texts = [p + tok.decode([int(t) for t in row[:n]]) for p, row, n in zip(prompts, toks, lens,
                                                                             strict=True)]
    return float(np.mean([ngram_entropy(t) for t in texts])), texts
