"""LLMSRec-Syn prompting: demonstration selection (fixed / random / recency / similarity),
the aggregated demonstration, the ML-1M / LastFM / Games prompt formats, and ranking by
log-probability scoring (scoring tier) or by generation + parsing (text tier).

Histories always use the **most recent** ``max_his_len`` items (the released code slices the
oldest items for demos and similarity vectors; ``repo_faithful=True`` reproduces that).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxlm.agents.recsys.data import RecData, Split, sample_negatives

STRATEGIES = ("zero", "fixed", "random", "recency", "nearest", "aggregated")

DOMAINS = {
    "movie": dict(profile="Movie Profile", hist="Watched Movies", cands="Candidate Movies",
                  noun="movies", item="Candidate Movie"),
    "music": dict(profile="Music Profile", hist="Recently Listened Music Artists (in sequential "
                  "order)", cands="Candidate Music Artists", noun="music artists",
                  item="Candidate Artist"),
    "game": dict(profile="Game Profile", hist="Previously Purchased Game Products (in order of "
                 "purchase)", cands="List of Candidate Game Products for Consideration",
                 noun="game products", item="Candidate Game"),
}


@dataclasses.dataclass(frozen=True)
class PromptConfig:
    """Prompt and demonstration settings.

    Attributes:
        strategy: one of STRATEGIES.
        k: demonstration users (few-shot demos, or users merged into one aggregated demo).
        max_his_len: history items shown per user (10 in the paper).
        n_candidates: candidate-set size (20).
        agg_max_len: cap of the aggregated history (50).
        repo_faithful: use the oldest ``max_his_len`` items for demos/similarity (repo bug).
        answer_len: gold-answer lines shown per demo (None = all candidates).
    """

    strategy: str = "zero"
    k: int = 1
    max_his_len: int = 10
    n_candidates: int = 20
    agg_max_len: int = 50
    repo_faithful: bool = False
    answer_len: int | None = None

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.k < 1 or self.max_his_len < 1 or self.n_candidates < 2:
            raise ValueError(f"PromptConfig {self}: need k >= 1, max_his_len >= 1, "
                             "n_candidates >= 2")
        if self.strategy == "aggregated" and self.k >= self.n_candidates:
            raise ValueError("aggregated: k must be < n_candidates")


@dataclasses.dataclass
class Demo:
    """One demonstration: history, candidates and the gold ranking (item ids)."""

    history: list[int]
    candidates: list[int]
    answer: list[int]
    users: tuple[int, ...] = ()


def recent(seq: Sequence[int], n: int, repo_faithful: bool = False) -> list[int]:
    """The last ``n`` items (or the first ``n`` with ``repo_faithful``, the released bug)."""
    return list(seq[:n]) if repo_faithful else list(seq[-n:])


def render_items(data: RecData, items: Sequence[int]) -> str:
    """Python-list repr of zero-based "i. Title" strings, as in the released prompts."""
    return repr([f"{j}. {data.titles[i]}" for j, i in enumerate(items)])


def _block(data: RecData, who: str, hist: Sequence[int], cands: Sequence[int]) -> str:
    """One user block; ``who`` is "John" (test user) or "The User" (demonstrations)."""
    d = DOMAINS[data.domain]
    subj = "John" if who == "John" else "the user"
    n = len(cands)
    return (
        f"{who}'s {d['profile']}:\n- {d['hist']}: {render_items(data, hist)}\n"
        f"{who}'s Potential Matches:\n- {d['cands']}: {render_items(data, cands)}\n"
        f"Rank the {n} {d['noun']} above by how well they fit {subj}'s preferences. "
        f"Only rank the given candidates and do not output {d['noun']} already in the "
        f"history.\nOutput format: 1. [Top Recommendation ({d['item']})] ... "
        f"{n}. [Last Recommendation ({d['item']})]\nAnswer:\n"
    )


def build_prompt(data: RecData, hist: Sequence[int], cands: Sequence[int],
                 demos: Sequence[Demo] = (), answer_len: int | None = None) -> str:
    """The full prompt text, ending in "Answer:\\n" (the model continues with "1. ...")."""
    if not cands:
        raise ValueError("build_prompt: the candidate set is empty")
    parts = []
    if demos:
        parts.append("Demonstration Examples:\n")
        for d in demos:
            ans = d.answer[: answer_len or len(d.answer)]
            parts.append(_block(data, "The User", d.history, d.candidates)
                         + "".join(f"{j + 1}. {data.titles[i]}\n" for j, i in enumerate(ans))
                         + "\n")
        parts.append("Learn from the above demonstration examples to solve the following test "
                     "example.\n")
    parts.append(_block(data, "John", hist, cands))
    return "".join(parts)


class DemoPool:
    """Training users as demonstrations: history up to the validation item -> target."""

    def __init__(self, data: RecData, split: Split, cfg: PromptConfig, seed: int = 0):
        self.data, self.split, self.cfg = data, split, cfg
        self.users = [u for u in split.users if len(split.train[u]) >= 1]
        if not self.users:
            raise ValueError("DemoPool: no training user has a history")
        n_items = max(data.titles) + 1
        self.mh = np.zeros((len(self.users), n_items), np.float32)
        for r, u in enumerate(self.users):
            self.mh[r, recent(split.train[u], cfg.max_his_len, cfg.repo_faithful)] = 1.0
        self.mh /= np.linalg.norm(self.mh, axis=1, keepdims=True) + 1e-8
        self.row = {u: r for r, u in enumerate(self.users)}
        vt = [data.times[u][-2] if data.times.get(u) else 0 for u in self.users]
        self.by_recency = [self.users[j] for j in np.argsort(vt, kind="stable")[::-1]]
        self.seed = seed
        self.fixed_user = self.users[int(np.random.default_rng(seed).integers(len(self.users)))]

    def similar(self, user: int, hist: Sequence[int], k: int) -> list[int]:
        """Top-k pool users by cosine of multi-hot vectors of recent items (self excluded)."""
        v = np.zeros(self.mh.shape[1], np.float32)
        v[recent(hist, self.cfg.max_his_len, self.cfg.repo_faithful)] = 1.0
        sims = self.mh @ v
        if user in self.row:
            sims[self.row[user]] = -np.inf
        return [self.users[j] for j in np.argsort(-sims, kind="stable")[:k]]

    def select(self, user: int, hist: Sequence[int], strategy: str, k: int) -> list[int]:
        others = [u for u in self.users if u != user]
        if strategy == "fixed":
            return [self.fixed_user if self.fixed_user != user else others[0]]
        if strategy == "random":
            rng = np.random.default_rng([self.seed, user])
            return [others[j] for j in rng.choice(len(others), min(k, len(others)), False)]
        if strategy == "recency":
            return [u for u in self.by_recency if u != user][:k]
        if strategy in ("nearest", "aggregated"):
            return self.similar(user, hist, k)
        return []

    def single_demo(self, u: int) -> Demo:
        """A pool user as one demonstration (target first in the gold ranking)."""
        cfg = self.cfg
        rng = np.random.default_rng([self.seed, 7, u])
        hist = recent(self.split.train[u], cfg.max_his_len, cfg.repo_faithful)
        tgt = self.split.valid[u]
        negs = sample_negatives(self.data.items, set(self.split.train[u]) | {tgt},
                                cfg.n_candidates - 1, rng)
        cands = negs + [tgt]
        cands = [cands[j] for j in rng.permutation(len(cands))]
        return Demo(hist, cands, [tgt] + negs, (u,))

    def aggregated_demo(self, users: Sequence[int]) -> Demo:
        """LLMSRec-Syn's aggregated demonstration: round-robin interleave of the users'
        histories from the most recent item backwards, k positives + negatives."""
        cfg = self.cfg
        hists = [recent(self.split.train[u], cfg.max_his_len, cfg.repo_faithful) for u in users]
        k = len(users)
        merged: list[int] = []
        for t in range(cfg.agg_max_len // k):
            for h in hists:
                if len(h) - 1 - t >= 0:
                    merged.append(h[len(h) - 1 - t])
        merged = merged[::-1]
        pos = list(dict.fromkeys(self.split.valid[u] for u in users))
        rng = np.random.default_rng([self.seed, 11, *users])
        exclude = set(pos) | {i for u in users for i in self.split.train[u]}
        negs = sample_negatives(self.data.items, exclude, cfg.n_candidates - len(pos), rng)
        cands = pos + negs
        cands = [cands[j] for j in rng.permutation(len(cands))]
        return Demo(merged, cands, pos + negs, tuple(users))

    def demos_for(self, user: int, hist: Sequence[int]) -> list[Demo]:
        s = self.cfg.strategy
        if s == "zero":
            return []
        users = self.select(user, hist, s, 1 if s == "fixed" else self.cfg.k)
        if s == "aggregated":
            return [self.aggregated_demo(users)]
        return [self.single_demo(u) for u in users]


# ---------------------------------------------------------------------------- ranking
def score_candidates(backend: Any, prompt: str, titles: Sequence[str],
                     null_prompt: str = "Answer:\n1.",
                     null_cache: dict[str, float] | None = None) -> dict[str, np.ndarray]:
    """Log-probability of each candidate title as the first answer line ("1. <title>").

    Args:
        backend: any backend with the scoring tier.
        prompt: text ending in "Answer:\n"; "1." is appended.
        titles: candidate titles.
        null_prompt: the context-free prompt for the PMI baseline.
        null_cache: title -> baseline log-prob, reused across calls (the baseline does not
            depend on the user, so each title is scored once).

    Returns:
        {"sum", "mean", "pmi"}: per-candidate values (higher = ranked first); "pmi" subtracts
        the title's log-prob after ``null_prompt`` (against popularity/length bias).
    """
    from jaxlm.llm.base import require
    from jaxlm.llm.helpers import score_many

    if not titles:
        raise ValueError("score_candidates: the candidate set is empty")
    require(backend, {"score"})
    cache = {} if null_cache is None else null_cache
    conts = [f" {t}\n" for t in titles]
    todo = [c for c in dict.fromkeys(conts) if c not in cache]
    reqs = [(prompt + "1.", conts)] + ([(null_prompt, todo)] if todo else [])
    out = score_many(backend, reqs)
    for c, r in zip(todo, out[1] if todo else [], strict=True):
        cache[c] = r.sum_logprob
    s = np.array([r.sum_logprob for r in out[0]])
    n = np.array([max(r.n_tokens, 1) for r in out[0]])
    return {"sum": s, "mean": s / n, "pmi": s - np.array([cache[c] for c in conts])}


def parse_ranking(text: str, titles: Sequence[str]) -> tuple[np.ndarray, int]:
    """Released-code parser: per line strip "k. ", the first unranked candidate whose title is
    a substring gets ``n - position``; unmatched candidates get -10000.

    Returns:
        (scores [n], number of matched lines).
    """
    n = len(titles)
    if n == 0:
        raise ValueError("parse_ranking: the candidate set is empty")
    scores = np.full(n, -10000.0)
    pos = 0
    low = [t.lower() for t in titles]
    for line in (text or "").splitlines():
        line = re.sub(r"^\s*\d+\s*[.)]\s*", "", line).strip().lower()
        if not line:
            continue
        for j, t in enumerate(low):
            if scores[j] == -10000.0 and (t in line or (len(line) > 3 and line in t)):
                scores[j] = n - pos
                pos += 1
                break
    return scores, pos


def answer_format(titles: Sequence[str], lines: int = 1) -> dict[str, Any]:
    """OpenAI-style ``response_format`` (jaxlm's ``regex`` extension) for the answer list:
    ``"1. <title>"`` then up to ``lines - 1`` more ``"\\n<k>. <title>"`` lines, every title
    one of ``titles`` (``jaxlm.structured`` enforces it in the decode loop)."""
    from jaxlm.structured.constraints import escape

    if not titles:
        raise ValueError("answer_format: the candidate set is empty")
    if lines < 1:
        raise ValueError(f"answer_format: lines must be >= 1, got {lines}")
    alt = "(" + "|".join(escape(t) for t in dict.fromkeys(titles)) + ")"
    rx = ""
    for k in range(min(lines, len(titles)), 1, -1):
        rx = f"(\\n{k}\\. {alt}{rx})?"
    return {"type": "regex", "regex": f"1\\. {alt}{rx}"}


def rank_by_generation(backend: Any, prompt: str, titles: Sequence[str], max_tokens: int = 256,
                       constrained: bool = False, lines: int = 1) -> tuple[np.ndarray, int]:
    """Text tier: greedy generation, then ``parse_ranking``.

    Args:
        constrained: decode under ``answer_format(titles, lines)``: every answer line names a
            candidate (the backend must enforce ``response_format``: ``LocalBackend`` does in
            its jitted loop).
    """
    from jaxlm.llm.base import GenConfig, require

    require(backend, {"complete"})
    rf = answer_format(titles, lines) if constrained else None
    out = backend.complete(prompt, GenConfig(max_tokens=max_tokens, temperature=0.0,
                                             response_format=rf))[0].text
    return parse_ranking(out, titles)


def count_tokens(backend: Any, text: str) -> int:
    """Prompt tokens with the backend's tokenizer (whitespace words otherwise)."""
    if hasattr(backend, "encode"):
        return len(backend.encode(text))
    return len(text.split())
