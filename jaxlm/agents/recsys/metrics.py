"""Ranking metrics (NDCG@k, HR@k with one ground truth) and classic baselines
(random, popularity, item-to-item Markov, item-kNN, generator oracle)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxlm.agents.recsys.data import RecData, Split

KS = (1, 5, 10)


def rank_metrics(scores: Sequence[float], gt: int, ks: Sequence[int] = KS) -> dict[str, float]:
    """NDCG@k and HR@k of the ground truth at index ``gt`` under ``scores`` (higher first).

    Ties are broken uniformly at random in expectation: the metric is averaged over every
    position the ground truth could take among the candidates tied with it (so all-equal
    scores give exactly the random floor).
    """
    s = np.asarray(scores, np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError("rank_metrics: scores must be a non-empty 1-D list (empty candidate set?)")
    if not 0 <= gt < s.size:
        raise ValueError(f"rank_metrics: ground-truth index {gt} outside [0, {s.size})")
    s = np.where(np.isnan(s), -np.inf, s)
    above = int((s > s[gt]).sum())
    ties = int((s == s[gt]).sum())  # includes the ground truth
    ranks = above + np.arange(ties)  # 0-based possible ranks
    out = {}
    for k in ks:
        hit = ranks < k
        out[f"HR@{k}"] = float(hit.mean())
        out[f"NDCG@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean())
    return out


def random_floor(n_candidates: int, ks: Sequence[int] = KS) -> dict[str, float]:
    """Expected metrics of a uniformly random ranking."""
    return rank_metrics(np.zeros(n_candidates), 0, ks)


class Popularity:
    """Scores items by interaction counts in the training histories."""

    def __init__(self, split: Split):
        self.counts: dict[int, int] = {}
        for u in split.users:
            for i in split.test_hist[u]:
                self.counts[i] = self.counts.get(i, 0) + 1

    def score(self, history: Sequence[int], cands: Sequence[int]) -> np.ndarray:
        return np.array([self.counts.get(c, 0) for c in cands], np.float64)


class Markov:
    """First-order item-to-item transition counts (last item -> next), popularity tie-break."""

    def __init__(self, split: Split):
        self.trans: dict[tuple[int, int], int] = {}
        for u in split.users:
            h = split.test_hist[u]
            for a, b in zip(h[:-1], h[1:], strict=True):
                self.trans[a, b] = self.trans.get((a, b), 0) + 1
        self.pop = Popularity(split)

    def score(self, history: Sequence[int], cands: Sequence[int]) -> np.ndarray:
        last = history[-1]
        return np.array([self.trans.get((last, c), 0) for c in cands], np.float64) + \
            1e-3 * self.pop.score(history, cands) / max(max(self.pop.counts.values()), 1)


class ItemKNN:
    """Item-kNN: cosine similarity of item columns of the user-item matrix (training
    histories); a candidate's score sums its similarity to the user's last ``n_recent``
    items, weighted towards recent ones."""

    def __init__(self, split: Split, n_items: int, n_recent: int = 10, decay: float = 0.8):
        users = split.users
        m = np.zeros((len(users), n_items + 1), np.float32)
        for r, u in enumerate(users):
            m[r, split.test_hist[u]] = 1.0
        norm = np.linalg.norm(m, axis=0) + 1e-8
        self.sim = (m.T @ m) / np.outer(norm, norm)
        np.fill_diagonal(self.sim, 0.0)
        self.n_recent, self.decay = n_recent, decay

    def score(self, history: Sequence[int], cands: Sequence[int]) -> np.ndarray:
        recent = list(history[-self.n_recent:])[::-1]
        w = self.decay ** np.arange(len(recent))
        return (w[:, None] * self.sim[np.ix_(recent, list(cands))]).sum(0).astype(np.float64)


class Oracle:
    """The generator's true next-item probabilities (a ceiling for synthetic data)."""

    def __init__(self, data: RecData):
        if data.world is None:
            raise ValueError("Oracle needs synthetic data (RecData.world)")
        self.world = data.world

    def score(self, history: Sequence[int], cands: Sequence[int], user: int) -> np.ndarray:
        p = self.world.next_probs(user - 1, [i - 1 for i in history])
        return np.array([p[c - 1] for c in cands], np.float64)


def summarize(per_user: Sequence[dict[str, float]], n_boot: int = 2000, seed: int = 0
              ) -> dict[str, tuple[float, float, float]]:
    """Mean and 95% bootstrap CI over users for every metric key."""
    from jaxlm.llm.helpers import bootstrap_ci

    if not per_user:
        return {}
    return {k: bootstrap_ci([m[k] for m in per_user], n_boot=n_boot, seed=seed)
            for k in per_user[0]}


def paired_diff(a: Sequence[float], b: Sequence[float], n_boot: int = 2000, seed: int = 0
                ) -> tuple[float, float, float]:
    """Mean of a - b with a paired bootstrap 95% CI."""
    from jaxlm.llm.helpers import bootstrap_ci

    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return bootstrap_ci(d, n_boot=n_boot, seed=seed)
