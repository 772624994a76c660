"""Fast candidate scoring for many recommendation prompts on a local jaxlm model.

Ranking a user's candidates by log-probability needs, per user, one pass over the prompt
and one pass over each candidate title continuing it. ``RecScorer`` does this for a whole
strategy's prompts at once:

* **Candidates packed against one prefix.** Each user's row is ``[prompt][cand 1][cand 2]
  ...[pad]``; candidate tokens take positions continuing the prompt and an additive
  attention bias lets a candidate see only the prompt and itself, so one forward pass
  scores all 20 candidates (the prompt is encoded once, not 20 times).
* **Shared prompt prefix in a KV cache.** The longest common token prefix of all prompts
  of a call (e.g. the single demonstration of the "fixed" / "recency" strategies, which is
  the same for every test user) is prefilled **once** into a ``KVCache``; every row then
  runs only its own tokens against the cached keys (the cache is padded and broadcast to
  the rows inside the jitted step). Positions, RoPE and causal visibility are exactly those
  of the unshared prompt, so the scores match plain scoring up to float rounding.
* **Fixed bucketed shapes.** All rows of a call are padded to the longest one, rounded up
  to a multiple of ``len_step`` tokens (targets to a multiple of 32), with a fixed number of
  rows per jitted call: one compiled program per strategy (plus one prefill when a prefix
  is shared), and strategies whose rows round to the same length share it.

* **Two layouts of one scorer.** Both run ``jaxlm.core.score.score_packed``:
  ``engine="fast"`` (default) with the layers in a ``lax.scan`` over a stacked copy of the
  weights, block-causal attention chunks (the half of the score matrix above the diagonal
  is never computed) and the model's precision policy (``mm_dtype`` / ``attn_dtype``: bf16
  operands with f32 accumulation); ``engine="core"`` with a Python layer loop and dense
  attention. The LM head runs only at slots that predict candidate tokens in both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.core.config import ModelConfig
from jaxlm.core.score import bucket_len, prefill_prefix, score_packed
from jaxlm.core.transformer import cast_params, stack_layers
from jaxlm.llm.packing import empty_packed, pack_candidates


def _round_up(n: int, step: int) -> int:
    return bucket_len(n, step, multiple=step)


def _lcp(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of token-id lists."""
    if not seqs:
        return 0
    first, n = seqs[0], min(len(s) for s in seqs)
    for s in seqs[1:]:
        j = 0
        while j < n and s[j] == first[j]:
            j += 1
        n = j
        if n == 0:
            break
    return n


@dataclasses.dataclass
class ScoreStats:
    """Work done: jitted calls, distinct compiled shapes, forward tokens (with padding),
    real tokens, and tokens served from a shared-prefix cache instead of recomputed."""

    calls: int = 0
    shapes: set = dataclasses.field(default_factory=set)
    padded_tokens: int = 0
    real_tokens: int = 0
    shared_saved: int = 0


class RecScorer:
    """Scores candidate continuations of many prompts in few jitted calls.

    Args:
        params, cfg, tokenizer: a jaxlm model (``tokenizer.encode(text, add_bos=None)``).
        rows: prompts per jitted call (1 is best on CPU; raise on a GPU).
        len_step: row lengths are padded to multiples of this.
        min_shared: a common prefix shorter than this is not cached.
        engine: "fast" (layer scan over stacked weights, block-causal attention chunks),
            "core" (layer loop, dense attention) or "auto" (= fast); both are
            ``jaxlm.core.score.score_packed``.
        mm_dtype: weight-matmul dtype ("float32" or "bfloat16": bf16 weights and matmul
            inputs, float32 accumulation and everything else float32); sets
            ``ModelConfig.matmul_dtype``.
        chunk: query-chunk size of the fast engine's block-causal attention.
        attn_dtype: attention matmul input dtype (scores, softmax and accumulation stay
            float32); sets ``ModelConfig.attn_dtype``.
        row_buckets: pad each row to its own multiple of ``len_step`` (a few compiled
            shapes, less padding) instead of every row to the group's longest.
    """

    def __init__(self, params: Any, cfg: ModelConfig, tokenizer: Any, *, rows: int = 1,
                 len_step: int = 64, min_shared: int = 32, engine: str = "auto",
                 mm_dtype: str = "float32", chunk: int = 128, attn_dtype: str = "float32",
                 row_buckets: bool = False):
        if rows < 1 or len_step < 1 or chunk < 1:
            raise ValueError(f"RecScorer: rows ({rows}), len_step ({len_step}) and chunk "
                             f"({chunk}) must be >= 1")
        if engine not in ("auto", "fast", "core"):
            raise ValueError(f"RecScorer: engine must be auto|fast|core, got {engine!r}")
        if engine == "auto":
            engine = "fast"
        self.engine, self.mm_dtype, self.chunk = engine, mm_dtype, chunk
        self.attn_dtype, self.row_buckets = attn_dtype, row_buckets
        self.base_cfg = cfg
        cfg = dataclasses.replace(
            cfg, matmul_dtype=None if mm_dtype == "float32" else mm_dtype,
            attn_dtype=None if attn_dtype == "float32" else attn_dtype)
        # this scorer owns its one device copy of the weights (stacked for the scan)
        params = cast_params(jax.tree.map(jnp.asarray, params), cfg)
        self.params = stack_layers(params) if engine == "fast" else params
        self.cfg, self.tokenizer = cfg, tokenizer
        self.rows, self.len_step, self.min_shared = rows, len_step, min_shared
        self.stats = ScoreStats()
        self._enc: dict[str, list[int]] = {}

    @classmethod
    def from_backend(cls, backend: Any, **kw) -> RecScorer:
        """Uses a white-box backend's params, config and tokenizer (the white-box tier of
        the backend protocol: ``require(backend, {"forward"})``)."""
        from jaxlm.llm.base import require

        require(backend, {"forward"})
        return cls(backend.params, backend.cfg, backend.tokenizer, **kw)

    def encode(self, text: str, memo: bool = False) -> list[int]:
        if memo and text in self._enc:
            return self._enc[text]
        ids = list(self.tokenizer.encode(text, add_bos=None))
        if memo:
            self._enc[text] = ids
        return ids

    def score(self, prompts: Sequence[str], continuations: Sequence[Sequence[str]],
              bar: Callable[..., Any] | None = None, desc: str = "score",
              groups: Sequence[Hashable] | None = None
              ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Summed log-probs of each prompt's continuations.

        Args:
            prompts: texts; continuation c of prompt i is scored given ``prompts[i]``
                (prompt and continuation are tokenized separately, as in the backends).
            continuations: per prompt, the continuation texts (>= 1 each).
            bar: optional ``bar(total, desc)`` progress factory (one tick per prompt).
            groups: optional key per prompt; the shared prefix is looked for within each
                group (e.g. the demonstration users, so one outlier prompt does not
                shorten everyone's shared prefix). Default: one group.

        Returns:
            per prompt, (sum log-prob [C], token counts [C]).
        """
        if len(prompts) != len(continuations):
            raise ValueError(f"RecScorer.score: {len(prompts)} prompts but "
                             f"{len(continuations)} continuation lists")
        if not prompts:
            return []
        if groups is not None and len(groups) != len(prompts):
            raise ValueError("RecScorer.score: groups must have one key per prompt")
        keys = list(groups) if groups is not None else [0] * len(prompts)
        out: list[tuple[np.ndarray, np.ndarray]] = [None] * len(prompts)  # type: ignore
        pbar = bar(len(prompts), desc) if bar else None
        for key in dict.fromkeys(keys):
            idx = [i for i, k in enumerate(keys) if k == key]
            res = self._score_group([prompts[i] for i in idx], [continuations[i] for i in idx],
                                    pbar)
            for i, r in zip(idx, res, strict=True):
                out[i] = r
        if pbar:
            pbar.close()
        return out

    def _score_group(self, prompts, continuations, pbar):
        pids = [self.encode(p) for p in prompts]
        cids = [[self.encode(c, memo=True) for c in cs] for cs in continuations]
        for i, (p, cs) in enumerate(zip(pids, cids, strict=True)):
            if not p or not cs or any(not c for c in cs):
                raise ValueError(f"RecScorer.score: prompt {i} and each of its continuations "
                                 "need >= 1 token (is a candidate set empty?)")
            if len(p) + sum(len(c) for c in cs) > self.cfg.max_seq_len:
                raise ValueError(f"RecScorer.score: prompt {i} ({len(p)} tokens) plus its "
                                 f"continuations exceed the model context {self.cfg.max_seq_len}")
        shared = min(_lcp(pids), min(len(p) for p in pids) - 1) if len(pids) > 1 else 0
        cache = None
        if shared >= self.min_shared:
            cache = self._prefill_ids(pids[0][:shared])
            self.stats.shapes.add(("prefill", shared))
            self.stats.real_tokens += shared
            self.stats.shared_saved += shared * (len(pids) - 1)
        else:
            shared = 0
        lens = [len(p) - shared + sum(len(c) for c in cs) for p, cs in zip(pids, cids,
                                                                            strict=True)]
        order = np.argsort(lens, kind="stable")
        n = _round_up(max(sum(len(c) for c in cs) for cs in cids), 32)
        # one shape per group: every row padded to the group's longest (one compile); with
        # row_buckets each row is padded to its own multiple of len_step (a few shapes)
        tlen = [_round_up(x, self.len_step) if self.row_buckets else
                _round_up(max(lens), self.len_step) for x in lens]
        out: list[tuple[np.ndarray, np.ndarray]] = [None] * len(pids)  # type: ignore[list-item]
        for t in sorted(set(tlen)):
            sel = [int(j) for j in order if tlen[j] == t]
            for s in range(0, len(sel), self.rows):
                idx = sel[s: s + self.rows]
                res = self._run(cache, shared, [pids[j] for j in idx], [cids[j] for j in idx],
                                t, n)
                for j, r in zip(idx, res, strict=True):
                    out[j] = r
                if pbar:
                    pbar.update(len(idx))
        return out

    def _prefill_ids(self, ids: Sequence[int]) -> Any:
        """The shared prefix's KV cache (batch 1, capacity ``len(ids)``)."""
        toks = jnp.asarray([list(ids)], jnp.int32)
        return prefill_prefix(self.params, toks, cfg=self.cfg, scan=self.engine == "fast")

    def _score_arrays(self, cache, toks, pos, seg, pred, tgt) -> np.ndarray:
        fast = self.engine == "fast"
        return np.asarray(score_packed(self.params, toks, pos, seg, pred, tgt, cache,
                                       cfg=self.cfg, scan=fast,
                                       chunk=self.chunk if fast else None))

    def _run(self, cache, shared, pids, cids, t, n):
        g = self.rows
        pad = getattr(self.tokenizer, "pad_id", 0) or 0
        toks, pos, seg, pred, tgt = empty_packed(g, t, n, pad)
        spans = []
        for i, (p, cs) in enumerate(zip(pids, cids, strict=True)):
            own = p[shared:]
            lo, lp = len(own), len(p)
            toks[i, :lo], pos[i, :lo], seg[i, :lo] = own, shared + np.arange(lo), 0
            sp, r, _ = pack_candidates(toks, pos, seg, pred, tgt, i, cs, slot=lo, first_pos=lp,
                                       anchor=lo - 1)
            spans.append(sp)
            self.stats.real_tokens += r
        lp = self._score_arrays(cache, toks, pos, seg, pred, tgt)
        self.stats.calls += 1
        self.stats.shapes.add((g, t, n, shared))
        self.stats.padded_tokens += g * t
        return [(np.array([lp[i, a:b].sum() for a, b in sp], np.float64),
                 np.array([b - a for a, b in sp], np.int64)) for i, sp in enumerate(spans)]
