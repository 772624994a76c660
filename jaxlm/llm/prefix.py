"""``PrefixScorer``: candidate scoring that keeps each prompt's KV cache across calls.

Agents that act step by step send prompts that grow by appending: the prompt of step
t+1 is the prompt of step t, minus a short per-step tail, plus the new (action,
observation) turn. Re-encoding the whole prompt every step costs O(prompt) forward
tokens per step; this scorer encodes only the tokens after the longest cached common
prefix and scores the candidates against the cache, in **one jitted call per batch**:

* The scorer owns a KV cache of ``n_slots`` rows (plus one scratch row for padding)
  and ``capacity`` slots; row r remembers the token ids it holds, slot i holds token i.
* A request (prefix ids, [candidate ids, ...]) is matched to the row whose ids share
  the longest common prefix (LCP) with it (rows not reusable fall back to the least
  recently used one). The row is **rewound** to the LCP (slots past it are marked
  empty), the new prefix tokens are written after it, and every candidate is written
  into scratch slots after them. Candidate tokens sit at positions continuing the
  prefix and segment ids keep each candidate from seeing the others, so one
  forward pass gives every candidate's log-probs given the full prefix. The scratch
  slots are marked empty again before the call returns.
* Rows of one call are gathered from the cache, run through the core scorer
  (``jaxlm.core.score.score_tokens``) with explicit ``write_slots`` and scattered back
  (the cache is donated).
* Shapes are bucketed (rows: 1, 2, 4, then multiples of 4; new tokens: 32, 64, ...;
  candidate tokens: 16, 32, ...) so a long agent run compiles a handful of programs;
  ``stats["compiles"]`` counts the distinct shapes run.

The result equals plain (uncached) scoring of the same token ids up to float rounding:
positions, RoPE and causal visibility are the same.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.core import init_cache
from jaxlm.core.cache import KVCache
from jaxlm.core.config import ModelConfig
from jaxlm.core.score import bucket_len, score_tokens
from jaxlm.llm.packing import pack_candidates

_bucket = bucket_len  # powers of two from the minimum up to 256, then multiples of 256


def _rows_bucket(n: int) -> int:
    return n if n in (1, 2) else (4 if n <= 4 else -(-n // 4) * 4)


@functools.partial(jax.jit, static_argnames=("cfg", "full"), donate_argnames=("cache",))
def _prefix_step(params, cache, rows, toks, pos, seg, start, keep, pred, tgt, *,
                 cfg: ModelConfig, full: bool):
    """Appends new prefix tokens to cached rows and scores packed candidates.

    Args:
        cache: the scorer's KVCache (donated), batch = n_slots.
        rows: [G] distinct cache rows used by this call, ascending.
        full: rows == arange(n_slots): use the cache as is (no gather/scatter).
        toks, pos, seg: [G, T] tokens, positions (-1 pad) and segment ids (0 new prefix
            token, c + 1 candidate c, -1 pad); token j is written to slot start + j.
        start: [G] first slot written (the row is rewound to it).
        keep: [G] prefix length; slots >= keep are emptied after the call.
        pred, tgt: [G, N] index (in T) of the position predicting each candidate token,
            and the candidate token ids.

    Returns:
        ([G, N] log-probs of the targets, updated cache).
    """
    s = cache.capacity
    g, t = toks.shape
    slot = jnp.arange(s)
    def take(x, axis=1):
        return x if full else jnp.take(x, rows, axis=axis)

    sub = KVCache(
        k=take(cache.k), v=take(cache.v),
        pos=jnp.where(slot[None, None, None] >= start[None, :, None, None], -1,
                      take(cache.pos)),  # rewind to the common prefix
        next_pos=take(cache.next_pos, 0), cursor=cache.cursor,
    )
    write = start[:, None] + jnp.arange(t)[None]  # [G, T]
    slots = jnp.broadcast_to(write[:, None, :], (g, cfg.n_kv_heads, t))
    # segments: the cached prefix (slots not written now) and new prefix tokens are 0,
    # candidate c is c + 1: each candidate sees the prefix and itself only
    lp, new_cache = score_tokens(params, cfg, toks, pos, seg, pred, tgt, cache=sub,
                                 write_slots=slots)
    new_pos = jnp.where(slot[None, None, None] >= keep[None, :, None, None], -1, new_cache.pos)
    if full:
        return lp, KVCache(k=new_cache.k, v=new_cache.v, pos=new_pos, next_pos=keep,
                           cursor=cache.cursor)
    cache = KVCache(
        k=cache.k.at[:, rows].set(new_cache.k), v=cache.v.at[:, rows].set(new_cache.v),
        pos=cache.pos.at[:, rows].set(new_pos),
        next_pos=cache.next_pos.at[rows].set(keep), cursor=cache.cursor,
    )
    return lp, cache


class PrefixScorer:
    """Scores candidate continuations against per-row cached prompt prefixes.

    Args:
        params, cfg: the model.
        n_slots: cached prompts kept at once (e.g. one per game played in lockstep).
        capacity: KV slots per row: the longest prefix plus the new-token and candidate
            buckets of one call must fit (``fits``).
        min_reuse: a row is reused only if it shares at least this many tokens with the
            request; otherwise the least recently used row is overwritten.
        max_tokens_per_call: most rows x (new + candidate) tokens per jitted call.
    """

    def __init__(self, params: Any, cfg: ModelConfig, *, n_slots: int = 8,
                 capacity: int = 1536, min_reuse: int = 16, max_tokens_per_call: int = 16384):
        if n_slots < 1 or capacity < 64:
            raise ValueError(f"PrefixScorer: n_slots ({n_slots}) must be >= 1 and capacity "
                             f"({capacity}) >= 64")
        if capacity > cfg.max_seq_len:
            raise ValueError(f"PrefixScorer: capacity {capacity} exceeds the model context "
                             f"{cfg.max_seq_len}")
        self.params, self.cfg = params, cfg
        self.n_slots, self.capacity = n_slots, capacity
        self.min_reuse, self.max_tokens_per_call = min_reuse, max_tokens_per_call
        self.cache = init_cache(cfg, n_slots, capacity)
        self.ids: list[np.ndarray] = [np.zeros(0, np.int64) for _ in range(n_slots)]
        self.last_used = [-1] * n_slots
        self.clock = 0
        self._shapes: set[tuple[int, int, int, bool]] = set()
        self.stats = {"calls": 0, "requests": 0, "new_tokens": 0, "reused_tokens": 0,
                      "padded_tokens": 0, "reencodes": 0, "overflow": 0, "compiles": 0}

    def reset(self) -> None:
        """Forgets every cached prefix (the next requests are encoded from scratch)."""
        self.ids = [np.zeros(0, np.int64) for _ in range(self.n_slots)]
        self.cache = init_cache(self.cfg, self.n_slots, self.capacity)

    def fits(self, prefix_len: int, cont_tokens: int) -> bool:
        """Whether a request may go through the cache (``score`` may still return None for
        it when the padded new tokens of its call overflow the row: use plain scoring)."""
        return 1 <= prefix_len and prefix_len + 16 + _bucket(cont_tokens, 16) <= self.capacity

    # ------------------------------------------------------------------ host side
    @staticmethod
    def _lcp(a: np.ndarray, b: np.ndarray) -> int:
        m = min(len(a), len(b))
        if m == 0:
            return 0
        diff = np.nonzero(a[:m] != b[:m])[0]
        return int(diff[0]) if diff.size else m

    def _assign(self, prefixes: Sequence[np.ndarray]) -> list[tuple[int, int]]:
        """(row, lcp) per request: longest shared prefix first, else least recently used."""
        lcps = np.array([[self._lcp(p, r) for r in self.ids] for p in prefixes])  # [R, n]
        order = np.argsort(-lcps.max(axis=1), kind="stable")
        free = set(range(self.n_slots))
        out: list[tuple[int, int]] = [(-1, 0)] * len(prefixes)
        for i in order:
            cands = [r for r in free if lcps[i, r] >= self.min_reuse]
            if cands:
                r = max(cands, key=lambda r: (lcps[i, r], -r))
            else:
                r = min(free, key=lambda r: (self.last_used[r], r))
            free.discard(r)
            out[i] = (r, int(lcps[i, r]))
        return out

    def score(self, requests: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]]
              ) -> list[list[np.ndarray] | None]:
        """Per-token log-probs of each candidate given its prefix.

        Args:
            requests: [(prefix_ids, [cand_ids, ...]), ...], at most ``n_slots`` of them,
                each with ``fits(len(prefix), total candidate tokens)``.

        Returns:
            For each request, one float64 array of per-token log-probs per candidate, or
            None when its padded new tokens would overflow the row (``stats["overflow"]``;
            score it without the cache).
        """
        if len(requests) > self.n_slots:
            raise ValueError(f"PrefixScorer.score: {len(requests)} requests exceed n_slots "
                             f"{self.n_slots}; make the scorer with more slots")
        prefixes = [np.asarray(p, np.int64) for p, _ in requests]
        for p, (_, cs) in zip(prefixes, requests, strict=True):
            if not cs or any(len(c) == 0 for c in cs):
                raise ValueError("PrefixScorer.score: every candidate needs >= 1 token")
            if not self.fits(len(p), sum(len(c) for c in cs)):
                raise ValueError(f"PrefixScorer.score: prefix of {len(p)} tokens does not fit "
                                 f"capacity {self.capacity}; check fits() first")
        assigned = self._assign(prefixes)
        self.clock += 1
        out: list[list[np.ndarray] | None] = [None] * len(requests)

        def new_len(job):
            return len(prefixes[job[0]]) - job[2]

        def cont_len(job):
            return sum(map(len, requests[job[0]][1]))

        jobs = []
        for i, ((row, lcp), p) in enumerate(zip(assigned, prefixes, strict=True)):
            lcp = min(lcp, len(p) - 1)  # the last prefix token must run to predict candidates
            job = (i, row, lcp)
            if lcp + _bucket(new_len(job), 32) + _bucket(cont_len(job), 16) > self.capacity:
                self.stats["overflow"] += 1
                continue
            self.stats["reused_tokens"] += lcp
            self.stats["new_tokens"] += len(p) - lcp
            self.stats["reencodes"] += int(lcp < len(p) // 2)
            self.stats["requests"] += 1
            jobs.append(job)
        busy = {row for _, row, _ in jobs}
        # group rows so that one call holds at most max_tokens_per_call tokens
        jobs.sort(key=new_len)
        while jobs:
            group: list[tuple[int, int, int]] = []
            for j in jobs:
                cand = group + [j]
                tn = _bucket(max(map(new_len, cand)), 32)
                n = _bucket(max(map(cont_len, cand)), 16)
                over = any(lcp + tn + n > self.capacity for _, _, lcp in cand)
                # a much longer new-token bucket (a re-encoded prompt) gets its own call
                # rather than padding every short row up to it
                grows = bool(group) and tn > 2 * _bucket(max(map(new_len, group)), 32)
                if group and (over or grows or _rows_bucket(len(cand)) * (tn + n)
                              > self.max_tokens_per_call):
                    break
                group = cand
            jobs = jobs[len(group):]
            res = self._run(group, prefixes, requests, busy)
            for (i, row, _), r in zip(group, res, strict=True):
                out[i] = r
                self.ids[row] = prefixes[i]
                self.last_used[row] = self.clock
        return out

    def _run(self, group, prefixes, requests, busy) -> list[list[np.ndarray]]:
        tn = _bucket(max(len(prefixes[i]) - lcp for i, _, lcp in group), 32)
        n = _bucket(max(sum(map(len, requests[i][1])) for i, _, _ in group), 16)
        t = tn + n
        # padding rows: rows no request of this call uses, written past their content
        spare = [r for r in range(self.n_slots)
                 if r not in busy and len(self.ids[r]) + t <= self.capacity]
        g = len(group) + min(len(spare), _rows_bucket(len(group)) - len(group))
        pads = spare[: g - len(group)]
        order = sorted([(row, k) for k, (_, row, _) in enumerate(group)]
                       + [(row, -1) for row in pads])
        rows = np.array([row for row, _ in order], np.int32)
        toks = np.zeros((g, t), np.int32)
        pos = np.full((g, t), -1, np.int32)
        seg = np.full((g, t), -1, np.int32)
        start = np.array([len(self.ids[row]) for row in rows], np.int32)
        keep = start.copy()
        pred = np.zeros((g, n), np.int32)
        tgt = np.zeros((g, n), np.int32)
        spans: list[list[tuple[int, int]]] = [[] for _ in group]
        where = [0] * len(group)
        for r, (_, k) in enumerate(order):
            if k < 0:
                continue
            i, _, lcp = group[k]
            where[k] = r
            p, conts = prefixes[i], requests[i][1]
            lp, nl = len(p), len(p) - lcp
            start[r], keep[r] = lcp, lp
            toks[r, :nl], pos[r, :nl], seg[r, :nl] = p[lcp:], lcp + np.arange(nl), 0
            row_spans, s, m = pack_candidates(toks, pos, seg, pred, tgt, r, conts, slot=tn,
                                              first_pos=lp, anchor=nl - 1)
            spans[k].extend(row_spans)
            self.stats["padded_tokens"] += t - nl - m
        full = g == self.n_slots
        shape = (g, tn, n, full)
        if shape not in self._shapes:
            self._shapes.add(shape)
            self.stats["compiles"] = len(self._shapes)
        lp, self.cache = _prefix_step(self.params, self.cache, rows, toks, pos, seg, start,
                                      keep, pred, tgt, cfg=self.cfg, full=full)
        lp = np.asarray(lp)
        self.stats["calls"] += 1
        return [[lp[where[k], a:b].astype(np.float64) for a, b in sp]
                for k, sp in enumerate(spans)]
