"""``ReplayBackend`` (record / replay a JSONL cassette) and ``ScriptedBackend`` (rules).

Cassette format: one JSON object per line. The first line is a header
``{"cassette": 1, "backend": name, "capabilities": [...], "context_window": n}``;
every other line is ``{"key": sha256, "method": "chat"|"complete"|"score",
"request": {...}, "response": [...]}``. The key is the sha256 of the canonical
JSON of (method, request). Identical requests are replayed in recording order, so
a recorded run replays exactly, sampled requests included. A request with no
(remaining) entry raises ``CassetteMiss`` naming the method, the cassette and the
start of the request, never a silent fallback.

Nothing recorded is ever lost:

* recording to a cassette that already exists is refused (``record_mode="new"``, the
  default) with a message naming the file and the fix; ``record_mode="append"`` keeps the
  old entries and appends a new header line and the new entries after them (identical
  requests then replay the older entries first); ``record_mode="overwrite"`` truncates on
  explicit request only;
* every entry is written as one line and flushed at once, so a recorder killed mid-run
  keeps everything before the kill;
* a line cut short by a kill (it does not parse and it is the file's last line, or the
  last line before an appended header) is skipped with a warning and every complete line
  still replays; a corrupt line anywhere else is an error naming the file and line.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import os
import pathlib
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from jaxlm.llm.base import (
    BackendError,
    Completion,
    GenConfig,
    Message,
    MissingCapability,
    ScoreResult,
    check_continuations,
    check_messages,
)


class CassetteMiss(BackendError):
    """A replayed request is not in the cassette."""


class CassetteExists(BackendError):
    """Recording would overwrite an existing cassette."""


RECORD_MODES = ("new", "append", "overwrite")
MAX_LINE_BYTES = 64 << 20  # a cassette line longer than this is refused as corrupt


def request_key(method: str, request: dict[str, Any]) -> str:
    canon = json.dumps({"method": method, "request": request}, sort_keys=True,
                       separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


_COMPLETION_FIELDS = {f.name for f in dataclasses.fields(Completion)}


def check_response(method: str, resp: Any) -> None:
    """Checks a cassette response (cassettes are untrusted input); ValueError says what is
    wrong."""
    if not isinstance(resp, list) or not resp or not all(isinstance(d, dict) for d in resp):
        raise ValueError("the response must be a non-empty list of objects")
    for d in resp:
        if method == "score":
            v, n = d.get("sum_logprob"), d.get("n_tokens")
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ValueError(f"sum_logprob must be a finite number, got {v!r}")
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ValueError(f"n_tokens must be an integer >= 0, got {n!r}")
            continue
        if set(d) - _COMPLETION_FIELDS:
            raise ValueError(f"unknown completion fields {sorted(set(d) - _COMPLETION_FIELDS)}")
        if not isinstance(d.get("text"), str) or not isinstance(d.get("finish_reason"), str):
            raise ValueError("a completion needs string 'text' and 'finish_reason'")
        for k in ("prompt_tokens", "completion_tokens"):
            if isinstance(d.get(k, 0), bool) or not isinstance(d.get(k, 0), int):
                raise ValueError(f"{k} must be an integer, got {d.get(k)!r}")
        lp = d.get("token_logprobs")
        if lp is not None and (not isinstance(lp, list) or not all(
                isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
                for x in lp)):
            raise ValueError("token_logprobs must be a list of finite numbers")


def _prefix_json(prefix: str | Sequence[Message]) -> Any:
    return prefix if isinstance(prefix, str) else check_messages(prefix)


class ReplayBackend:
    """Records an inner backend's traffic to a cassette, or replays it with no model.

    Args:
        path: the JSONL cassette.
        inner: the backend to record (``mode="record"``); None to replay.
        mode: "record" (call inner, append every exchange), "replay" (cassette only) or
            "auto" (replay hits, record misses via inner, appending to the file).
        record_mode: what ``mode="record"`` does when ``path`` already exists: "new"
            (refuse: ``CassetteExists``), "append" (keep the old entries, add a header
            and the new ones) or "overwrite" (truncate).
    """

    def __init__(self, path: str | os.PathLike, inner: Any = None, mode: str | None = None,
                 record_mode: str = "new"):
        self.path = pathlib.Path(path)
        mode = mode or ("record" if inner is not None else "replay")
        if mode not in ("record", "replay", "auto"):
            raise ValueError(f"ReplayBackend: mode must be record|replay|auto, got {mode!r}")
        if record_mode not in RECORD_MODES:
            raise ValueError(f"ReplayBackend: record_mode must be one of {RECORD_MODES}, got "
                             f"{record_mode!r}")
        if mode in ("record", "auto") and inner is None:
            raise ValueError(f"ReplayBackend: mode={mode!r} needs an inner backend to record")
        self.mode, self.inner, self.record_mode = mode, inner, record_mode
        self._entries: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self.stats = {"hits": 0, "recorded": 0, "skipped_partial": 0}
        header = None
        exists = self.path.exists() and self.path.stat().st_size > 0
        if mode == "record" and exists and record_mode == "new":
            raise CassetteExists(
                f"cassette {self.path} already exists ({self.path.stat().st_size} bytes); "
                "recording would overwrite it. Choose a new path, delete it, or pass "
                "--record_mode=append (keep it and add the new entries) or "
                "--record_mode=overwrite (record_mode= in ReplayBackend)")
        if mode in ("replay", "auto") and exists:
            header = self._load()
        elif mode == "replay":
            raise FileNotFoundError(
                f"ReplayBackend: cassette {self.path} does not exist or is empty; record it "
                "first (ReplayBackend(path, inner=backend), or --record=PATH)"
            )
        if inner is not None:
            self.name = f"replay[{inner.name}]"
            self.capabilities = frozenset(inner.capabilities) & {"chat", "complete", "score"}
            self.context_window = inner.context_window
        else:
            self.name = f"replay[{header.get('backend', '?')}]"
            self.capabilities = frozenset(header.get("capabilities", ()))
            self.context_window = int(header.get("context_window", 0))
        if mode in ("record", "auto"):
            head = json.dumps({"cassette": 1, "backend": inner.name,
                               "capabilities": sorted(self.capabilities),
                               "context_window": inner.context_window}) + "\n"
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if exists and not (mode == "record" and record_mode == "overwrite"):
                # a new segment: after a partial last line (killed recorder) start a new line
                with open(self.path, "rb") as f:
                    f.seek(-1, os.SEEK_END)
                    nl = f.read(1) == b"\n"
                self._write(("" if nl else "\n") + head)
            else:
                with open(self.path, "w", encoding="utf-8") as f:
                    f.write(head)
                    f.flush()

    def fingerprint(self) -> str | None:
        """Recording: the inner backend's fingerprint (the answers are its live answers);
        replaying: None (answers come from the cassette in recording order, so there is
        no identity to share; callers fall back to this object's identity)."""
        f = getattr(self.inner, "fingerprint", None)
        return f() if self.mode == "record" and callable(f) else None

    def _write(self, text: str) -> None:
        """Appends ``text`` (whole lines) in one write and flushes it."""
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()

    def _load(self) -> dict[str, Any]:
        """Reads every segment; returns the first header (capabilities: the union)."""
        header = None
        caps: set[str] = set()
        with open(self.path, "rb") as f:
            lines = f.read().split(b"\n")
        bad: tuple[int, str] | None = None  # an unparsable line, tolerated if a segment's last
        for i, raw in enumerate(lines):
            if not raw.strip():
                continue
            try:
                if len(raw) > MAX_LINE_BYTES:
                    raise ValueError(f"line longer than {MAX_LINE_BYTES} bytes")
                obj = json.loads(raw.decode("utf-8"))
                if not isinstance(obj, dict):
                    raise ValueError("not a JSON object")
            except (ValueError, RecursionError) as e:
                if bad is not None:
                    raise BackendError(f"{self.path}:{bad[0]}: corrupt cassette line "
                                       f"({bad[1]})") from None
                bad = (i + 1, str(e)[:200])
                continue
            if "cassette" in obj:
                caps_i, cw = obj.get("capabilities", []), obj.get("context_window", 0)
                if (obj.get("cassette") != 1 or not isinstance(caps_i, list)
                        or not set(caps_i) <= {"chat", "complete", "score"}
                        or isinstance(cw, bool) or not isinstance(cw, int) or cw < 0):
                    raise BackendError(f"{self.path}:{i + 1}: not a jaxlm cassette (bad header "
                                       f"{json.dumps(obj)[:120]})")
                if bad is not None:
                    self._skip(bad)
                    bad = None
                header = header or obj
                caps |= set(obj.get("capabilities", ()))
                continue
            if bad is not None:
                raise BackendError(
                    f"{self.path}:{bad[0]}: corrupt cassette line ({bad[1]}) followed by more "
                    "entries: only a cut-off last line is tolerated")
            if header is None:
                raise BackendError(f"{self.path}: not a jaxlm cassette (first line is not a "
                                   "header)")
            if not isinstance(obj.get("key"), str) or "response" not in obj:
                raise BackendError(f"{self.path}:{i + 1}: cassette entry lacks 'key' or "
                                   "'response'")
            self._entries[obj["key"]].append(obj["response"])
        if bad is not None:
            self._skip(bad)
        if header is None:
            raise BackendError(f"{self.path}: empty cassette (no header line)")
        return dict(header, capabilities=sorted(caps))

    def _skip(self, bad: tuple[int, str]) -> None:
        self.stats["skipped_partial"] += 1
        warnings.warn(f"{self.path}:{bad[0]}: skipping a cut-off cassette line (a recorder "
                      f"killed mid-write?): {bad[1]}; the complete lines replay",
                      RuntimeWarning, stacklevel=3)

    def _call(self, method: str, request: dict[str, Any], live: Callable[[], Any]) -> Any:
        if method not in self.capabilities:
            raise MissingCapability(f"backend {self.name!r} has no {method!r} capability")
        key = request_key(method, request)
        q = self._entries.get(key)
        if self.mode != "record" and q:
            self.stats["hits"] += 1
            resp = q.popleft()
            try:
                check_response(method, resp)
            except ValueError as e:
                raise BackendError(f"{self.path}: the cassette entry for this {method} request "
                                   f"(key {key[:12]}) is malformed: {e}") from None
            return resp
        if self.mode == "replay":
            snippet = json.dumps(request, ensure_ascii=False)[:240]
            raise CassetteMiss(
                f"no cassette entry for {method} request in {self.path} (key {key[:12]}; the "
                f"run diverged from the recording or it was recorded with other settings). "
                f"Request starts: {snippet}"
            )
        resp = live()
        self._write(json.dumps({"key": key, "method": method, "request": request,
                                "response": resp}, ensure_ascii=False) + "\n")
        self.stats["recorded"] += 1
        return resp

    def chat(self, messages: Sequence[Message], cfg: GenConfig = GenConfig()) -> list[Completion]:
        msgs = check_messages(messages)
        req = {"messages": msgs, "cfg": cfg.to_dict()}
        resp = self._call("chat", req, lambda: [c.to_dict() for c in self.inner.chat(msgs, cfg)])
        return [Completion.from_dict(d) for d in resp]

    def chat_many(self, messages_list: Sequence[Sequence[Message]],
                  cfg: GenConfig = GenConfig()) -> list[list[Completion]]:
        """Batched chat: when recording, one batched inner call (if the inner backend has
        ``chat_many``), then one cassette entry per conversation, as ``chat`` would write."""
        msgs_list = [check_messages(m) for m in messages_list]
        if self.mode != "record" or not hasattr(self.inner, "chat_many"):
            return [self.chat(m, cfg) for m in msgs_list]
        live = self.inner.chat_many(msgs_list, cfg)
        out = []
        for m, res in zip(msgs_list, live, strict=True):
            d = self._call("chat", {"messages": m, "cfg": cfg.to_dict()},
                           lambda r=res: [c.to_dict() for c in r])
            out.append([Completion.from_dict(x) for x in d])
        return out

    def complete(self, prompt: str, cfg: GenConfig = GenConfig()) -> list[Completion]:
        req = {"prompt": prompt, "cfg": cfg.to_dict()}
        resp = self._call("complete", req,
                          lambda: [c.to_dict() for c in self.inner.complete(prompt, cfg)])
        return [Completion.from_dict(d) for d in resp]

    def complete_many(self, prompts: Sequence[str], cfg: GenConfig = GenConfig()
                      ) -> list[list[Completion]]:
        """Batched completion: when recording, one batched inner call (if the inner backend
        has ``complete_many``), then one cassette entry per prompt, as ``complete`` writes."""
        prompts = list(prompts)
        if self.mode != "record" or not hasattr(self.inner, "complete_many"):
            return [self.complete(p, cfg) for p in prompts]
        live = self.inner.complete_many(prompts, cfg)
        out = []
        for p, res in zip(prompts, live, strict=True):
            d = self._call("complete", {"prompt": p, "cfg": cfg.to_dict()},
                           lambda r=res: [c.to_dict() for c in r])
            out.append([Completion.from_dict(x) for x in d])
        return out

    def score(
        self, prefix: str | Sequence[Message], continuations: Sequence[str]
    ) -> list[ScoreResult]:
        conts = check_continuations(continuations)
        req = {"prefix": _prefix_json(prefix), "continuations": conts}
        resp = self._call("score", req,
                          lambda: [r.to_dict() for r in self.inner.score(prefix, conts)])
        return [ScoreResult(float(d["sum_logprob"]), int(d["n_tokens"])) for d in resp]

    def score_many(self, requests) -> list[list[ScoreResult]]:
        """Batched scoring: when recording, one batched inner call, then one entry per request."""
        if self.mode != "record" or not hasattr(self.inner, "score_many"):
            return [self.score(p, c) for p, c in requests]
        reqs = [(p, check_continuations(c)) for p, c in requests]
        live = self.inner.score_many(reqs)
        out = []
        for (p, c), res in zip(reqs, live, strict=True):
            d = self._call("score", {"prefix": _prefix_json(p), "continuations": c},
                           lambda r=res: [x.to_dict() for x in r])
            out.append([ScoreResult(float(x["sum_logprob"]), int(x["n_tokens"])) for x in d])
        return out


class ScriptedBackend:
    """Deterministic rule-based backend for unit tests of agent loops.

    Args:
        rules: (regex, reply) pairs tried in order on the last message / prompt text;
            a reply may be a string or ``f(text) -> str``.
        default: reply when no rule matches.
        scorer: ``f(prefix_text, continuation) -> float`` log-prob for the scoring tier
            (default: prefers continuations whose words occur in the prefix).
    """

    def __init__(self, rules: Sequence[tuple[str, Any]] = (), default: str = "look",
                 scorer: Callable[[str, str], float] | None = None, name: str = "scripted"):
        self.rules = [(re.compile(p, re.S), r) for p, r in rules]
        self.default = default
        self.scorer = scorer or self._overlap
        self.name = name
        self.capabilities = frozenset({"chat", "complete", "score"})
        self.context_window = 1 << 20
        self.calls: list[tuple[str, str]] = []

    @staticmethod
    def _overlap(prefix: str, cont: str) -> float:
        words = cont.lower().split()
        hits = sum(w in prefix.lower() for w in words)
        return -float(len(words) - hits) - 0.01 * len(cont)

    def _reply(self, text: str) -> str:
        for pat, rep in self.rules:
            if pat.search(text):
                return rep(text) if callable(rep) else rep
        return self.default

    def chat(self, messages: Sequence[Message], cfg: GenConfig = GenConfig()) -> list[Completion]:
        msgs = check_messages(messages)
        text = msgs[-1]["content"]
        self.calls.append(("chat", text))
        return self._finish(self._reply(text), cfg)

    def complete(self, prompt: str, cfg: GenConfig = GenConfig()) -> list[Completion]:
        if not isinstance(prompt, str) or not prompt:
            raise ValueError("complete: prompt must be a non-empty string")
        self.calls.append(("complete", prompt))
        return self._finish(self._reply(prompt), cfg)

    @staticmethod
    def _finish(reply: str, cfg: GenConfig) -> list[Completion]:
        from jaxlm.llm.base import truncate_at_stop

        text, hit = truncate_at_stop(reply, cfg.stop)
        words = text.split(" ")
        reason = "stop"
        if len(words) > cfg.max_tokens:
            text, reason = " ".join(words[: cfg.max_tokens]), "length"
        return [Completion(text=text, finish_reason=reason, prompt_tokens=0,
                           completion_tokens=len(text.split()))] * cfg.n

    def score(
        self, prefix: str | Sequence[Message], continuations: Sequence[str]
    ) -> list[ScoreResult]:
        conts = check_continuations(continuations)
        text = prefix if isinstance(prefix, str) else "\n".join(
            m["content"] for m in check_messages(prefix))
        self.calls.append(("score", text))
        return [ScoreResult(float(self.scorer(text, c)), max(1, len(c.split()))) for c in conts]

    def score_many(self, requests) -> list[list[ScoreResult]]:
        return [self.score(p, c) for p, c in requests]
