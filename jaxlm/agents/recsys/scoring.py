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

* **Two engines.** ``engine="fast"`` (default where supported) runs ``fastlm``: layers in a
  ``lax.scan``, block-causal attention chunks (the half of the score matrix above the
  diagonal is never computed), the LM head only at slots that predict candidate tokens, and
  optional bf16 matmuls with f32 accumulation. ``engine="core"`` runs ``jaxlm.core.apply``
  with a dense [T, S] bias. Both equal ``jaxlm.core.generate.score`` to 1e-4 in float32.

This is the recommender's private copy of what a general prefix-reusing scorer in
``jaxlm.llm`` offers; see the module docstring of ``experiment.py`` for how it is used.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.core import KVCache, apply, init_cache
from jaxlm.core.config import ModelConfig
from jaxlm.core.transformer import unembed
from jaxlm.agents.recsys import fastlm
from jaxlm.llm.packing import empty_packed, pack_candidates

NEG_BIAS = -1e9


def _round_up(n: int, step: int) -> int:
    return max(step, -(-n // step) * step)


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


@functools.partial(jax.jit, static_argnames=("cfg",))
def _prefill(params, toks, *, cfg: ModelConfig) -> KVCache:
    """KV cache of ``toks`` [1, P] at positions 0..P-1 (capacity exactly P)."""
    cache = init_cache(cfg, 1, toks.shape[1])
    pos = jnp.arange(toks.shape[1], dtype=jnp.int32)[None]
    return apply(params, cfg, toks, positions=pos, cache=cache, last_logits_only=True).cache


@functools.partial(jax.jit, static_argnames=("cfg",))
def _score_rows(params, shared: KVCache | None, toks, pos, seg, pred, tgt, *, cfg: ModelConfig):
    """Log-probs of packed candidate tokens, optionally after a shared cached prefix.

    Args:
        shared: cache of the shared prefix (batch 1, capacity P) or None.
        toks, pos, seg: [G, T] row tokens, absolute positions (-1 pad) and segment ids
            (0 own prompt tokens, c + 1 candidate c, -1 pad).
        pred, tgt: [G, N] row index predicting each target token, target ids.

    Returns:
        [G, N] log-probs of the targets.
    """
    g, t = toks.shape
    same = (seg[:, None, :] == 0) | (seg[:, None, :] == seg[:, :, None])  # [G, Tq, Tk]
    bias = jnp.where(same, 0.0, NEG_BIAS)[:, None]  # [G, 1, T, T]
    cache = None
    if shared is not None:
        p = shared.k.shape[2]
        kv_pad = ((0, 0), (0, 0), (0, t), (0, 0), (0, 0))
        shape = (cfg.n_layers, g, p + t) + shared.k.shape[3:]
        k = jnp.broadcast_to(jnp.pad(shared.k, kv_pad), shape)
        v = jnp.broadcast_to(jnp.pad(shared.v, kv_pad), k.shape)
        kp = jnp.pad(shared.pos, ((0, 0), (0, 0), (0, 0), (0, t)), constant_values=-1)
        kp = jnp.broadcast_to(kp, (cfg.n_layers, g) + kp.shape[2:])
        cache = KVCache(k=k, v=v, pos=kp, next_pos=jnp.full((g,), p, jnp.int32),
                        cursor=jnp.asarray(p, jnp.int32))
        bias = jnp.concatenate([jnp.zeros((g, 1, t, p), bias.dtype), bias], axis=-1)
    out = apply(params, cfg, toks, positions=pos, cache=cache, attn_bias=bias,
                return_hidden=True, last_logits_only=True)
    h = jnp.take_along_axis(out.hidden[-1], pred[..., None], axis=1)  # [G, N, D]
    lp = jax.nn.log_softmax(unembed(params, cfg, h), axis=-1)  # [G, N, V]
    return jnp.take_along_axis(lp, tgt[..., None], axis=-1)[..., 0]


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
        engine: "fast" (``fastlm``: layer scan, block-causal attention, LM head only at
            scored slots), "core" (``jaxlm.core.apply`` with a dense bias) or "auto" (fast
            where ``fastlm.supports(cfg)``).
        mm_dtype: matmul dtype of the fast engine ("float32" or "bfloat16": bf16 weights
            and matmul inputs, float32 accumulation and everything else float32).
        chunk: query-chunk size of the fast engine's block-causal attention.
        attn_dtype: dtype of the fast engine's attention matmul inputs (scores, softmax
            and accumulation stay float32).
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
            engine = "fast" if fastlm.supports(cfg) else "core"
        if engine == "core" and mm_dtype != "float32":
            raise ValueError("RecScorer: mm_dtype applies to engine='fast' only")
        self.engine, self.mm_dtype, self.chunk = engine, mm_dtype, chunk
        self.attn_dtype, self.row_buckets = attn_dtype, row_buckets
        # one device copy of the weights: the fast engine's stacked layout, or core's pytree
        self.params = jax.tree.map(jnp.asarray, params) if engine == "core" else None
        self.sp = fastlm.prepare_params(params, cfg, mm_dtype) if engine == "fast" else None
        self.cfg, self.tokenizer = cfg, tokenizer
        self.rows, self.len_step, self.min_shared = rows, len_step, min_shared
        self.stats = ScoreStats()
        self._enc: dict[str, list[int]] = {}

    @classmethod
    def from_backend(cls, backend: Any, **kw) -> RecScorer:
        """Shares a ``LocalBackend``'s params, config and tokenizer."""
        for a in ("params", "cfg", "tokenizer"):
            if not hasattr(backend, a):
                raise ValueError(f"RecScorer.from_backend: {type(backend).__name__} has no "
                                 f"{a!r}; use a LocalBackend (or score via the backend protocol)")
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
        """The shared prefix's cache (a KVCache, or (k, v, pos) for the fast engine)."""
        toks = jnp.asarray([list(ids)], jnp.int32)
        if self.engine == "core":
            return _prefill(self.params, toks, cfg=self.cfg)
        pos = jnp.arange(len(ids), dtype=jnp.int32)[None]
        k, v = fastlm.prefill(self.sp, toks, pos, *fastlm.empty_prefix(self.cfg),
                              cfg=self.cfg, chunk=self.chunk, attn_dtype=self.attn_dtype)
        return k, v, np.asarray(pos)

    def _score_arrays(self, cache, toks, pos, seg, pred, tgt) -> np.ndarray:
        if self.engine == "core":
            return np.asarray(_score_rows(self.params, cache, toks, pos, seg, pred, tgt,
                                          cfg=self.cfg))
        pre = cache if cache is not None else fastlm.empty_prefix(self.cfg)
        return np.asarray(fastlm.score_rows(self.sp, toks, pos, seg, pred, tgt, *pre,
                                            cfg=self.cfg, chunk=self.chunk,
                                            attn_dtype=self.attn_dtype))

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
