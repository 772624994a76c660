"""``LocalBackend``: a jaxlm model + tokenizer behind the backend protocol (all three tiers).

Scoring is the workhorse of the small-model agents: ``score_many`` packs each
prefix with all its continuations into one row (segment ids keep continuations
apart) and scores G rows in **one jitted call** of ``jaxlm.core.score.score_packed``. Every shape is padded to a
bucket (powers of two, then multiples of 256 for prefixes), so a long agent run
compiles a handful of programs and then reuses them.

The text tier wraps ``jaxlm.core.generate.generate`` (prompt and max-new-token
lengths bucketed the same way); the white-box tier exposes per-layer activations
(core's ``run_blocks(capture=...)`` outputs), attention probabilities, an additive key
mask and masked generation, and editable params (``with_params``).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.core.config import ModelConfig
from jaxlm.core.generate import SamplingConfig, generate
from jaxlm.core.score import bucket_len, score_packed
from jaxlm.core.transformer import embed, run_blocks, unembed
from jaxlm.llm.base import (
    Completion,
    GenConfig,
    Message,
    ScoreResult,
    check_continuations,
    check_messages,
    truncate_at_stop,
)
from jaxlm.llm.packing import empty_packed, pack_candidates

# the tiny random models' tokenizer (one definition, in jaxlm.weights), re-exported here
from jaxlm.weights.tokenizer import ByteTokenizer  # noqa: F401

NEG_BIAS = -1e9
SITES = ("embed", "attn_out", "mlp_hidden", "mlp_out", "resid_post")


# ------------------------------------------------------------------------ jitted kernels
@functools.partial(jax.jit, static_argnames=("cfg", "capture", "layers", "want_attn"))
def _forward(params, toks, pos, bias, *, cfg, capture, layers, want_attn):
    """``embed`` -> ``run_blocks(capture=...)`` -> ``unembed``: activations come back as
    outputs of core's ``capture`` (no hook writing into a dict)."""
    x0 = embed(params, cfg, toks, pos)
    want = set(capture) - {"embed"}
    sites = tuple(s for s in SITES if s in want or s == "resid_post")
    sites += ("attn_probs",) if want_attn else ()
    out = run_blocks(params, cfg, x0, positions=pos, attn_bias=bias, capture=(sites, None))
    logits = unembed(params, cfg, out.x)
    n = out.captured["resid_post"].shape[0]
    keep = [i for i in range(n) if layers is None or i in layers]
    acts = {s: ({-1: x0} if layers is None or -1 in layers else {}) if s == "embed"
            else {i: out.captured[s][i] for i in keep} for s in capture}
    rp = out.captured["resid_post"]
    hidden = (x0,) + tuple(rp[i] for i in range(n))
    attn = tuple(out.captured["attn_probs"][i] for i in range(n)) if want_attn else None
    return logits, acts, hidden, attn


class LocalBackend:
    """A jaxlm model as an ``LLMBackend`` (text, scoring and white-box tiers).

    Args:
        model: a ``jaxlm.weights.load`` name or path (default SmolLM2-135M-Instruct), used
            when ``cfg``/``params`` are not given.
        cfg, params, tokenizer: an explicit model (e.g. a tiny random ``*_test`` preset with
            ``ByteTokenizer()``).
        name: backend name (defaults to the model name).
        max_tokens_per_call: most packed tokens (rows x row length) per scoring call.
        prefix_slots: > 0 turns on prompt-prefix KV reuse in scoring (``PrefixScorer``
            with this many cached prompts, e.g. one per game an agent plays in lockstep);
            requests with prefixes of >= ``prefix_min_tokens`` tokens that fit
            ``prefix_capacity`` KV slots go through it, the rest use packed scoring.
        memo_size: identical scoring requests (same prefix and continuation ids) seen
            recently are answered from a memo of this many entries (0 = off).
        score_rows_multiple, score_len_multiple: compiled scoring shapes. Rows per call
            are rounded up to a multiple of ``score_rows_multiple`` (None: the next power
            of two) and the packed row length to a multiple of ``score_len_multiple``
            (None: powers of two from 64 to 256, then multiples of 256). Finer steps
            waste less padding (20 requests of ~290 tokens: 20 x 320 tokens computed
            instead of 32 x 512) and compile more shapes; results are the same up to
            float rounding.
    """

    def __init__(
        self,
        model: str | None = "smollm2-135m-instruct",
        *,
        cfg: ModelConfig | None = None,
        params: Any = None,
        tokenizer: Any = None,
        name: str | None = None,
        max_tokens_per_call: int = 16384,
        prefix_slots: int = 0,
        prefix_capacity: int = 1536,
        prefix_min_tokens: int = 128,
        memo_size: int = 4096,
        score_rows_multiple: int | None = None,
        score_len_multiple: int | None = None,
    ):
        if cfg is None or params is None:
            from jaxlm.weights import load

            m = load(model)
            cfg, params, tokenizer = m.cfg, m.params, tokenizer or m.tokenizer
            name = name or str(model)
        if tokenizer is None:
            raise ValueError("LocalBackend: pass a tokenizer with an explicit cfg/params")
        if getattr(tokenizer, "vocab_size", cfg.vocab_size) > cfg.vocab_size:
            raise ValueError(
                f"LocalBackend: tokenizer vocab ({tokenizer.vocab_size}) exceeds the model's "
                f"({cfg.vocab_size}); pair the model with its own tokenizer"
            )
        self.cfg = cfg
        self.params = jax.tree.map(jnp.asarray, params)
        self.tokenizer = tokenizer
        self.name = name or "local"
        self.max_tokens_per_call = max_tokens_per_call
        self.context_window = cfg.max_seq_len
        self.capabilities = frozenset(
            {"chat", "complete", "score", "encode", "forward", "masked_generate"}
        )
        self.stats = {"score_calls": 0, "score_seqs": 0, "gen_calls": 0, "memo_hits": 0}
        self.prefix_min_tokens = prefix_min_tokens
        self.prefix = None
        if prefix_slots > 0:
            from jaxlm.llm.prefix import PrefixScorer

            self.prefix = PrefixScorer(self.params, cfg, n_slots=prefix_slots,
                                       capacity=min(prefix_capacity, cfg.max_seq_len),
                                       max_tokens_per_call=max_tokens_per_call)
        self.memo_size = memo_size
        self._memo: collections.OrderedDict = collections.OrderedDict()
        self._fingerprint: str | None = None
        for what, m in (("score_rows_multiple", score_rows_multiple),
                        ("score_len_multiple", score_len_multiple)):
            if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
                raise ValueError(f"LocalBackend: {what} must be an integer >= 1 or None, "
                                 f"got {m!r}")
        self.score_rows_multiple = score_rows_multiple
        self.score_len_multiple = score_len_multiple

    # ------------------------------------------------------------------ white-box basics
    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_bos=None))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def apply_chat_template(
        self, messages: Sequence[Message], add_generation_prompt: bool = True
    ) -> str:
        return self.tokenizer.apply_chat_template(
            check_messages(messages), add_generation_prompt=add_generation_prompt
        )

    def fingerprint(self) -> str:
        """A digest of everything that decides this backend's answers: the model config,
        the tokenizer (vocabulary and merges, chat template, special ids) and every
        parameter byte. Computed once per backend (about a second for 135M float32
        parameters); callers that reuse results across calls key them by it
        (``jaxlm.agents.tips.EpisodeMemo``). ``with_params`` gives a new backend, so
        edited or adapter-merged weights get their own fingerprint."""
        if self._fingerprint is None:
            h = hashlib.blake2b(digest_size=16)
            h.update(repr(self.cfg).encode())
            tok = self.tokenizer
            h.update(type(tok).__qualname__.encode())
            hf = getattr(tok, "hf", None)
            if hf is not None:
                h.update(hf.to_str().encode())
            if dataclasses.is_dataclass(tok):
                h.update(repr([(f.name, getattr(tok, f.name)) for f in dataclasses.fields(tok)
                               if f.name != "hf" and not f.name.startswith("_")]).encode())
            else:
                h.update(repr(tok).encode())
            leaves, treedef = jax.tree.flatten(self.params)
            h.update(str(treedef).encode())
            for x in leaves:
                a = np.ascontiguousarray(np.asarray(x))
                h.update(f"{a.dtype}{a.shape}".encode())
                h.update(a.reshape(-1).view(np.uint8))
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def with_params(self, params: Any) -> LocalBackend:
        """A backend sharing config and tokenizer with edited ``params`` (same pytree layout)."""
        if jax.tree.structure(params) != jax.tree.structure(self.params):
            raise ValueError("with_params: params must have the same pytree layout as .params")
        return LocalBackend(cfg=self.cfg, params=params, tokenizer=self.tokenizer,
                            name=self.name + "+edited",
                            max_tokens_per_call=self.max_tokens_per_call,
                            prefix_slots=self.prefix.n_slots if self.prefix else 0,
                            prefix_capacity=self.prefix.capacity if self.prefix else 1536,
                            prefix_min_tokens=self.prefix_min_tokens,
                            memo_size=self.memo_size,
                            score_rows_multiple=self.score_rows_multiple,
                            score_len_multiple=self.score_len_multiple)

    # ------------------------------------------------------------------ scoring tier
    def _prefix_ids(self, prefix: str | Sequence[Message]) -> list[int]:
        text = prefix if isinstance(prefix, str) else self.apply_chat_template(prefix)
        ids = self.encode(text)
        if not ids:
            raise ValueError("score: the prefix encodes to no tokens; give a non-empty prefix")
        return ids

    def score(
        self, prefix: str | Sequence[Message], continuations: Sequence[str]
    ) -> list[ScoreResult]:
        """Summed log-probs of each continuation after ``prefix`` (text or chat messages;
        chat prefixes get the generation prompt). Prefix and continuation are tokenized
        separately."""
        return self.score_many([(prefix, continuations)])[0]

    def score_many(
        self, requests: Sequence[tuple[str | Sequence[Message], Sequence[str]]]
    ) -> list[list[ScoreResult]]:
        """Scores several (prefix, continuations) requests in as few jitted calls as fit."""
        if not requests:
            return []
        enc = []
        for prefix, conts in requests:
            conts = check_continuations(conts)
            enc.append((self._prefix_ids(prefix), [self.encode(c) for c in conts]))
        results = self._score_ids_cached(enc)
        return [
            [ScoreResult(float(lp.sum()), len(lp)) for lp in per_req] for per_req in results
        ]

    def score_ids_batch(
        self, requests: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]]
    ) -> list[list[np.ndarray]]:
        """Per-token log-probs for token-id requests [(prefix_ids, [cont_ids, ...]), ...].

        Each request becomes one packed row (prefix once, then every continuation);
        rows are grouped so a jitted call holds at most ``max_tokens_per_call`` tokens.
        Shapes (rows, row length, targets) are bucketed to limit recompiles.
        """
        for p, cs in requests:
            if len(p) == 0 or not cs or any(len(c) == 0 for c in cs):
                raise ValueError("score: prefix and every continuation need >= 1 token")
            total = len(p) + sum(len(c) for c in cs)
            if total > self.cfg.max_seq_len:
                raise ValueError(
                    f"score: prefix ({len(p)} tokens) + all continuations "
                    f"({total - len(p)} tokens) exceed the model context {self.cfg.max_seq_len}; "
                    "shorten the prompt or score fewer continuations per request"
                )
        out: list[list[np.ndarray]] = [[] for _ in requests]
        group: list[int] = []
        for i in list(range(len(requests))) + [None]:
            if group:
                cand = group + ([] if i is None else [i])
                t = self._len_bucket(max(self._row_len(requests[j]) for j in cand))
                if i is None or self._rows_bucket(len(cand)) * t > self.max_tokens_per_call:
                    for j, r in zip(group, self._run_packed([requests[j] for j in group]),
                                    strict=True):
                        out[j] = r
                    group = []
            if i is not None:
                group.append(i)
        return out

    def _score_ids_cached(self, enc) -> list[list[np.ndarray]]:
        """``score_ids_batch`` behind the memo, routing long prefixes to the prefix cache."""
        out: list[list[np.ndarray] | None] = [None] * len(enc)
        keys = [(tuple(p), tuple(tuple(c) for c in cs)) for p, cs in enc]
        todo, first = [], {}  # requests to run (one per distinct key), duplicates' source
        for i, k in enumerate(keys):
            hit = self._memo.get(k) if self.memo_size else None
            if hit is not None:
                self._memo.move_to_end(k)
                out[i] = hit
                self.stats["memo_hits"] += 1
            elif k in first:
                self.stats["memo_hits"] += 1
            else:
                first[k] = i
                todo.append(i)
        cached = []
        if self.prefix is not None:
            for i in todo:
                p, cs = enc[i]
                if (len(p) >= self.prefix_min_tokens and len(cached) < self.prefix.n_slots
                        and self.prefix.fits(len(p), sum(len(c) for c in cs))):
                    cached.append(i)
        if cached:
            for i, r in zip(cached, self.prefix.score([enc[i] for i in cached]), strict=True):
                out[i] = r  # None: overflowed the cache row, scored below without it
            self.stats["score_seqs"] += sum(len(enc[i][1]) for i in cached)
        rest = [i for i in todo if out[i] is None]
        if rest:
            for i, r in zip(rest, self.score_ids_batch([enc[i] for i in rest]), strict=True):
                out[i] = r
        for i in todo:
            if self.memo_size:
                self._memo[keys[i]] = out[i]
                if len(self._memo) > self.memo_size:
                    self._memo.popitem(last=False)
        for i, k in enumerate(keys):  # repeated requests within this call
            if out[i] is None:
                out[i] = out[first[k]]
        return out  # type: ignore[return-value]

    def _rows_bucket(self, n: int) -> int:
        return bucket_len(n, 1, multiple=self.score_rows_multiple)

    def _len_bucket(self, n: int) -> int:
        return bucket_len(n, 64, multiple=self.score_len_multiple)

    @staticmethod
    def _row_len(req) -> int:
        return len(req[0]) + sum(len(c) for c in req[1])

    def _run_packed(self, reqs) -> list[list[np.ndarray]]:
        g = self._rows_bucket(len(reqs))
        t = min(self._len_bucket(max(self._row_len(r) for r in reqs)), self.cfg.max_seq_len)
        n = bucket_len(max(sum(len(c) for c in r[1]) for r in reqs), 16)
        pad = self.tokenizer.pad_id
        toks, pos, seg, pred, tgt = empty_packed(g, t, n, pad)
        spans = []
        for i, (pre, conts) in enumerate(reqs):
            lp = len(pre)
            toks[i, :lp], pos[i, :lp], seg[i, :lp] = pre, np.arange(lp), 0
            row_spans, _, _ = pack_candidates(toks, pos, seg, pred, tgt, i, conts, slot=lp,
                                              first_pos=lp, anchor=lp - 1)
            spans.append(row_spans)
        lp = np.asarray(score_packed(self.params, toks, pos, seg, pred, tgt, cfg=self.cfg))
        self.stats["score_calls"] += 1
        self.stats["score_seqs"] += sum(len(r[1]) for r in reqs)
        return [[lp[i, a:b].astype(np.float64) for a, b in sp] for i, sp in enumerate(spans)]

    # ------------------------------------------------------------------ text tier
    def chat(self, messages: Sequence[Message], cfg: GenConfig = GenConfig()) -> list[Completion]:
        return self.complete(self.apply_chat_template(messages), cfg)

    def complete(self, prompt: str, cfg: GenConfig = GenConfig()) -> list[Completion]:
        """Generates ``cfg.n`` completions of the raw text ``prompt`` (no chat template)."""
        return self.complete_many([prompt], cfg)[0]

    def chat_many(self, messages_list: Sequence[Sequence[Message]],
                  cfg: GenConfig = GenConfig(), batch: int = 32) -> list[list[Completion]]:
        """``chat`` for several conversations, generated together in batches."""
        return self.complete_many([self.apply_chat_template(m) for m in messages_list], cfg,
                                  batch)

    def complete_many(self, prompts: Sequence[str], cfg: GenConfig = GenConfig(),
                      batch: int = 32) -> list[list[Completion]]:
        """``complete`` for several prompts: one batched generation per ``batch`` rows."""
        ids_list = []
        for prompt in prompts:
            if not isinstance(prompt, str) or not prompt:
                raise ValueError("complete: prompt must be a non-empty string")
            ids = self.encode(prompt)
            if not ids:
                raise ValueError("complete: the prompt encodes to no tokens")
            ids_list.append(ids)
        flat = [ids for ids in ids_list for _ in range(cfg.n)]
        rows: list[dict[str, Any]] = []
        for a in range(0, len(flat), batch):
            rows += self._generate_ids(flat[a: a + batch], cfg)
        outs = []
        for j, ids in enumerate(ids_list):
            comps = []
            for row in rows[j * cfg.n: (j + 1) * cfg.n]:
                text, hit = truncate_at_stop(self.decode(row["ids"]), cfg.stop)
                reason = "stop" if (hit or row["stopped"]) else "length"
                comps.append(Completion(text=text, finish_reason=reason, prompt_tokens=len(ids),
                                        completion_tokens=len(row["ids"])))
            outs.append(comps)
        return outs

    def _generate_ids(self, prompts: list[list[int]], cfg: GenConfig) -> list[dict[str, Any]]:
        p = bucket_len(max(len(x) for x in prompts), 32)
        new = bucket_len(cfg.max_tokens, 16)
        if p + new > self.cfg.max_seq_len:  # near the context limit: tighter padding
            p = -(-max(len(x) for x in prompts) // 16) * 16
            new = max(cfg.max_tokens, min(new, self.cfg.max_seq_len - p))
            if p + new > self.cfg.max_seq_len:
                raise ValueError(
                    f"complete: prompt ({max(len(x) for x in prompts)} tokens) + max_tokens "
                    f"({cfg.max_tokens}) exceeds the model context {self.cfg.max_seq_len}"
                )
        sampling = SamplingConfig(temperature=cfg.temperature, top_p=cfg.top_p)
        processor = None
        if cfg.response_format is not None:  # enforced in the decode loop (jaxlm.structured)
            from jaxlm.structured import from_response_format, processor_for

            con = from_response_format(cfg.response_format)
            if con is not None:
                processor = processor_for(con, len(prompts), self.tokenizer, self.cfg.vocab_size)
        out = generate(
            self.params, self.cfg, prompts, max_new_tokens=new,
            key=jax.random.PRNGKey(cfg.seed), sampling=sampling,
            stop_ids=tuple(self.tokenizer.stop_ids), pad_id=self.tokenizer.pad_id, bucket=p,
            processor=processor,
        )
        self.stats["gen_calls"] += 1
        toks, lens = np.asarray(out.tokens), np.asarray(out.lengths)
        rows = []
        for i in range(len(prompts)):
            n = int(lens[i])
            stopped = n < new and n < cfg.max_tokens
            rows.append({"ids": toks[i, : min(n, cfg.max_tokens)].tolist(), "stopped": stopped})
        return rows

    # ------------------------------------------------------------------ white-box tier
    @staticmethod
    def _bias(key_mask, b: int, t: int):
        if key_mask is None:
            return None
        km = np.asarray(key_mask)
        if km.ndim == 1:
            km = np.broadcast_to(km[None], (b, t))
        if km.shape != (b, t):
            raise ValueError(f"key_mask must be [B, T] = {(b, t)}, got {km.shape}")
        if km.dtype == bool:
            km = np.where(km, 0.0, NEG_BIAS)
        return jnp.asarray(km, jnp.float32)[:, None, None, :]  # [B, 1, 1, S]

    def _ids_array(self, ids) -> np.ndarray:
        arr = np.asarray(ids, np.int32)
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2 or arr.shape[1] == 0:
            raise ValueError(f"ids must be [T] or [B, T] with T >= 1, got shape {arr.shape}")
        if arr.min() < 0 or arr.max() >= self.cfg.vocab_size:
            raise ValueError(f"ids must be in [0, {self.cfg.vocab_size})")
        return arr

    def forward(
        self,
        ids,
        key_mask=None,
        position_ids=None,
        capture: Sequence[str] = ("attn_out",),
        layers: str | Sequence[int] = "all",
        return_attn: bool = False,
    ) -> dict[str, Any]:
        """One forward pass with activations.

        Args:
            ids: [B, T] (or [T]) token ids.
            key_mask: [B, T] bool (True = may be attended) or float additive bias.
            position_ids: [B, T] int positions (default 0..T-1; -1 = padding).
            capture: sites from SITES; each returns {layer: [B, T, D or F]}.
            layers: "all" or layer indices.
            return_attn: also return per-layer attention probs [B, H, T, T].

        Returns:
            {"logits": [B, T, V], "acts": {site: {layer: array}}, "hidden": L+1 x [B, T, D],
            "attn": tuple or None}.
        """
        toks = self._ids_array(ids)
        b, t = toks.shape
        bad = set(capture) - set(SITES)
        if bad:
            raise ValueError(f"forward: unknown capture sites {sorted(bad)}; use {SITES}")
        pos = (np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)) if position_ids is None
               else np.asarray(position_ids, np.int32).reshape(b, t))
        lay = None if layers == "all" else tuple(int(i) for i in layers)
        logits, acts, hidden, attn = _forward(
            self.params, jnp.asarray(toks), jnp.asarray(pos), self._bias(key_mask, b, t),
            cfg=self.cfg, capture=tuple(capture), layers=lay, want_attn=return_attn,
        )
        return {"logits": logits, "acts": acts, "hidden": hidden, "attn": attn}

    def generate_ids(self, ids, key_mask=None, cfg: GenConfig = GenConfig(),
                     position_ids=None) -> list[list[int]]:
        """Generates from [B, T] prompt ids; masked prompt keys stay invisible to every later
        token (prompt positions are kept, i.e. masking differs from deleting text only in
        position ids). Returns the new ids per row (stop token excluded)."""
        toks = self._ids_array(ids)
        b, t = toks.shape
        new = cfg.max_tokens
        if t + new > self.cfg.max_seq_len:
            raise ValueError(f"generate_ids: {t} + {new} tokens exceed {self.cfg.max_seq_len}")
        km = None
        if key_mask is not None:
            km = np.asarray(self._bias(key_mask, b, t))[:, 0, 0, :]
        pos = (np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)) if position_ids is None
               else np.asarray(position_ids, np.int32).reshape(b, t))
        out = generate(
            self.params, self.cfg, toks.tolist(), max_new_tokens=new,
            key=jax.random.PRNGKey(cfg.seed),
            sampling=SamplingConfig(temperature=cfg.temperature, top_p=cfg.top_p),
            stop_ids=tuple(self.tokenizer.stop_ids), pad_id=self.tokenizer.pad_id,
            positions=pos.tolist(), key_mask=None if km is None else km.tolist())
        lens = np.asarray(out.lengths)
        return [np.asarray(out.tokens[i, : int(lens[i])]).tolist() for i in range(b)]
