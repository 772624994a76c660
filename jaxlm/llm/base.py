"""The backend protocol: one interface, three capability tiers.

* text: ``chat(messages, cfg)`` / ``complete(prompt, cfg)`` -> list of ``Completion``.
* scoring: ``score(prefix, continuations)`` -> list of ``ScoreResult`` (summed token
  log-probabilities of each continuation given the prefix), batched.
* white-box (local models): ``encode`` / ``decode`` / ``apply_chat_template`` /
  ``forward(ids, key_mask, position_ids, capture, layers)`` / ``generate_ids`` and
  editable ``params``.

Loops ask for capabilities, not classes: ``require(backend, {"score"})`` raises
``MissingCapability`` naming the missing tier.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": str}

CAPABILITIES = frozenset(
    {"chat", "complete", "score", "encode", "forward", "masked_generate", "embed"}
)
TEXT_TIER = frozenset({"chat", "complete"})
SCORE_TIER = frozenset({"score"})
WHITEBOX_TIER = frozenset({"encode", "forward", "masked_generate"})
ROLES = ("system", "user", "assistant")


class BackendError(RuntimeError):
    """A backend request failed for good (after retries where they apply)."""


class MissingCapability(BackendError):
    """The backend lacks a capability tier the caller needs."""


@dataclasses.dataclass(frozen=True)
class GenConfig:
    """Sampling parameters for the text tier.

    Attributes:
        max_tokens: most new tokens per completion.
        temperature: 0 = greedy.
        top_p: nucleus mass (1 = off).
        stop: strings that end a completion (not included in the text).
        seed: sampling seed (local backends derive the PRNG key from it).
        n: completions per request.
        frequency_penalty: passed to HTTP servers; local backends ignore it.
        response_format: OpenAI-style output constraint, e.g. ``{"type": "json_schema",
            "json_schema": {"schema": {...}}}``, ``{"type": "json_object"}``; extensions
            ``{"type": "regex", "regex": "..."}`` and ``{"type": "choice", "choice": [...]}``.
            Local backends enforce it in the decode loop (``jaxlm.structured``); HTTP backends
            pass it to the server. None = free text.
    """

    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int = 0
    n: int = 1
    frequency_penalty: float | None = None
    response_format: dict[str, Any] | None = None

    def __post_init__(self):
        rf = self.response_format
        if rf is not None and (not isinstance(rf, dict) or not isinstance(rf.get("type"), str)):
            raise ValueError(f"GenConfig.response_format must be a dict with a 'type', e.g. "
                             f'{{"type": "json_schema", "json_schema": {{"schema": ...}}}}; '
                             f"got {rf!r}")
        if isinstance(self.stop, str | list):
            object.__setattr__(self, "stop", (self.stop,) if isinstance(self.stop, str)
                               else tuple(self.stop))
        if self.max_tokens < 1:
            raise ValueError(f"GenConfig.max_tokens must be >= 1, got {self.max_tokens}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"GenConfig.temperature must be a finite number >= 0, got "
                             f"{self.temperature}")
        if self.frequency_penalty is not None and not math.isfinite(self.frequency_penalty):
            raise ValueError(f"GenConfig.frequency_penalty must be finite, got "
                             f"{self.frequency_penalty}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"GenConfig.top_p must be in (0, 1], got {self.top_p}")
        if self.n < 1:
            raise ValueError(f"GenConfig.n must be >= 1, got {self.n}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"GenConfig.stop must be non-empty strings, got {self.stop!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stop"] = list(self.stop)
        if d["response_format"] is None:  # keeps request keys (cassettes) of free text stable
            del d["response_format"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GenConfig:
        d = dict(d)
        d["stop"] = tuple(d.get("stop", ()))
        return cls(**d)


@dataclasses.dataclass
class Completion:
    """One generated text.

    Attributes:
        text: the completion with stop strings removed.
        finish_reason: "stop" (stop token/string) or "length" (hit max_tokens).
        prompt_tokens, completion_tokens: token counts (as reported by the server).
        token_logprobs: per-token log-probs when the backend provides them.
        raw: the raw server payload for this choice (HTTP backends).
    """

    text: str
    finish_reason: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    token_logprobs: list[float] | None = None
    raw: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Completion:
        return cls(**d)


@dataclasses.dataclass
class ScoreResult:
    """Summed log-probability of one continuation given the prefix."""

    sum_logprob: float
    n_tokens: int

    @property
    def mean_logprob(self) -> float:
        return self.sum_logprob / max(self.n_tokens, 1)

    def to_dict(self) -> dict[str, Any]:
        return {"sum_logprob": float(self.sum_logprob), "n_tokens": int(self.n_tokens)}

    def __getitem__(self, key: str):  # dict-style access, as in the spec
        return self.to_dict()[key]


@runtime_checkable
class LLMBackend(Protocol):
    """What every backend provides; white-box methods exist only on local backends."""

    name: str
    capabilities: frozenset[str]
    context_window: int

    def chat(self, messages: Sequence[Message], cfg: GenConfig = GenConfig()) -> list[Completion]:
        ...

    def complete(self, prompt: str, cfg: GenConfig = GenConfig()) -> list[Completion]:
        ...

    def score(
        self, prefix: str | Sequence[Message], continuations: Sequence[str]
    ) -> list[ScoreResult]:
        ...


def require(backend: Any, needed: Iterable[str]) -> None:
    """Raises ``MissingCapability`` unless ``backend`` has every capability in ``needed``."""
    needed = frozenset(needed)
    unknown = needed - CAPABILITIES
    if unknown:
        raise ValueError(f"unknown capabilities {sorted(unknown)}; known: {sorted(CAPABILITIES)}")
    missing = needed - frozenset(getattr(backend, "capabilities", ()))
    if missing:
        tiers = []
        if missing & TEXT_TIER:
            tiers.append("text")
        if missing & SCORE_TIER:
            tiers.append("scoring")
        if missing & (WHITEBOX_TIER | {"embed"}):
            tiers.append("white-box")
        raise MissingCapability(
            f"backend {getattr(backend, 'name', backend)!r} lacks {sorted(missing)} "
            f"({'/'.join(tiers)} tier); it has {sorted(getattr(backend, 'capabilities', ()))}. "
            "Use a backend that provides it (e.g. LocalBackend for scoring/white-box)."
        )


def check_messages(messages: Sequence[Message]) -> list[Message]:
    """Validates chat messages; returns them as plain dicts."""
    if isinstance(messages, str) or not messages:
        raise ValueError("chat: messages must be a non-empty list of {'role', 'content'} dicts")
    out = []
    for m in messages:
        if not isinstance(m, dict) or set(m) - {"role", "content", "name"} or "role" not in m:
            raise ValueError(f"chat: message {m!r} must be a dict with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise ValueError(f"chat: role {m['role']!r} must be one of {ROLES}")
        if not isinstance(m.get("content"), str):
            raise ValueError(f"chat: content of {m!r} must be a string")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def check_continuations(continuations: Sequence[str]) -> list[str]:
    if isinstance(continuations, str) or not continuations:
        raise ValueError("score: continuations must be a non-empty list of strings")
    for c in continuations:
        if not isinstance(c, str) or not c:
            raise ValueError(f"score: every continuation must be a non-empty string, got {c!r}")
    return list(continuations)


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cuts ``text`` at the earliest stop string; returns (text, hit)."""
    cut = len(text)
    for s in stop:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut], cut < len(text)
