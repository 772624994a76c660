"""Helpers shared by the agent loops: candidate choice by likelihood, JSON extraction,
action matching, bootstrap confidence intervals."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxlm.llm.base import Message, ScoreResult, require
from jaxlm.utils.stats import bootstrap_ci  # noqa: F401  (the one implementation; re-exported)


def score_many(backend: Any, requests: Sequence[tuple[Any, Sequence[str]]]
               ) -> list[list[ScoreResult]]:
    """Scores several (prefix, continuations) requests, batched when the backend can."""
    require(backend, {"score"})
    if hasattr(backend, "score_many"):
        return backend.score_many(list(requests))
    return [backend.score(p, c) for p, c in requests]


def chat_many(backend: Any, messages_list: Sequence[Sequence[Message]], cfg: Any
              ) -> list[list[Any]]:
    """``chat`` for several conversations, batched when the backend can (``chat_many``)."""
    require(backend, {"chat"})
    if hasattr(backend, "chat_many"):
        return backend.chat_many(list(messages_list), cfg)
    return [backend.chat(m, cfg) for m in messages_list]


def rank_values(results: Sequence[ScoreResult], norm: str = "mean",
                baseline: Sequence[ScoreResult] | None = None) -> np.ndarray:
    """Scores used for ranking: "sum", "mean" (per token) or "pmi" (sum minus ``baseline``)."""
    s = np.array([r.sum_logprob for r in results], np.float64)
    if norm == "sum":
        return s
    if norm == "mean":
        return s / np.array([max(r.n_tokens, 1) for r in results], np.float64)
    if norm == "pmi":
        if baseline is None:
            raise ValueError("rank_values: norm='pmi' needs the unconditional baseline scores")
        return s - np.array([b.sum_logprob for b in baseline], np.float64)
    raise ValueError(f"norm must be 'sum', 'mean' or 'pmi', got {norm!r}")


def choose(backend: Any, prefix: str | Sequence[Message], options: Sequence[str],
           norm: str = "mean", null_prefix: str | Sequence[Message] | None = None
           ) -> tuple[int, np.ndarray]:
    """Index of the most likely option after ``prefix`` and the per-option values.

    ``norm="pmi"`` subtracts each option's log-prob after ``null_prefix`` (default a
    neutral "Answer:" prompt), against the length and popularity bias of small models.
    """
    if not options:
        raise ValueError("choose: options must be non-empty")
    if norm == "pmi":
        null = null_prefix if null_prefix is not None else "Answer:"
        res, base = score_many(backend, [(prefix, options), (null, options)])
        vals = rank_values(res, "pmi", base)
    else:
        vals = rank_values(score_many(backend, [(prefix, options)])[0], norm)
    return int(np.argmax(vals)), vals


MAX_JSON_CHARS = 200_000  # model replies longer than this are not parsed as JSON
MAX_JSON_DEPTH = 32  # nesting deeper than this is refused before json.loads sees it


def json_depth(text: str) -> int:
    """Deepest ``{``/``[`` nesting of ``text`` (brackets inside JSON strings ignored)."""
    depth = best = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "{[":
            depth += 1
            best = max(best, depth)
        elif ch in "}]":
            depth = max(depth - 1, 0)
    return best


def extract_json(text: str, max_chars: int = MAX_JSON_CHARS,
                 max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The JSON object between the first '{' and the last '}' of ``text``.

    Model output is untrusted: a span longer than ``max_chars`` or nested deeper than
    ``max_depth`` is refused before parsing, so a hostile reply cannot exhaust memory or
    the recursion limit.

    Raises:
        ValueError: no object, invalid JSON, too long or too deep (callers fall back).
    """
    if not isinstance(text, str):
        raise ValueError(f"extract_json: expected text, got {type(text).__name__}")
    a, b = text.find("{"), text.rfind("}")
    if a == -1 or b <= a:
        raise ValueError("no JSON object in the text")
    span = text[a: b + 1]
    if len(span) > max_chars:
        raise ValueError(f"JSON span of {len(span)} characters exceeds max_chars={max_chars}")
    depth = json_depth(span)
    if depth > max_depth:
        raise ValueError(f"JSON nested {depth} deep exceeds max_depth={max_depth}")
    try:
        return json.loads(span)
    except RecursionError:  # unreachable with a sane max_depth; never escapes as-is
        raise ValueError("JSON nested too deeply") from None


_CMD_PREFIX = re.compile(r"^\s*(?:>|action\s*:|command\s*:|answer\s*:|\d+[.)]|[-*])\s*", re.I)


def match_action(text: str, admissible: Sequence[str], cutoff: float = 0.75
                 ) -> tuple[str | None, str]:
    """Maps free text to an admissible command.

    Returns:
        (command or None, how): how is "exact" (the first non-empty line equals a command
        after normalisation), "contains" (a command appears in the text; longest wins),
        "fuzzy" (difflib ratio >= cutoff) or "none".
    """
    if not admissible:
        return None, "none"
    norm = {re.sub(r"\s+", " ", a.strip().lower()): a for a in admissible}
    lines = [ln for ln in (text or "").splitlines() if ln.strip()]
    first = _CMD_PREFIX.sub("", lines[0]).strip().strip("\"'`.!").lower() if lines else ""
    first = re.sub(r"\s+", " ", first)
    if first in norm:
        return norm[first], "exact"
    low = re.sub(r"\s+", " ", (text or "").lower())
    hits = [k for k in norm if re.search(r"(?<![a-z])" + re.escape(k) + r"(?![a-z])", low)]
    if hits:
        return norm[max(hits, key=len)], "contains"
    if first:
        best = difflib.get_close_matches(first, list(norm), n=1, cutoff=cutoff)
        if best:
            return norm[best[0]], "fuzzy"
    return None, "none"
