"""Pluggable LLM backends: one protocol, three tiers (text, scoring, white-box).

``LocalBackend`` (jaxlm model, SmolLM2 by default), ``OpenAIBackend`` (any
OpenAI-compatible server, stdlib HTTP), ``ReplayBackend`` (JSONL cassettes) and
``ScriptedBackend`` (rules, for unit tests). ``LocalBackend`` is imported lazily so
that importing this package does not pull in JAX.
"""

from jaxlm.llm.base import (
    CAPABILITIES,
    BackendError,
    Completion,
    GenConfig,
    LLMBackend,
    Message,
    MissingCapability,
    ScoreResult,
    require,
)
from jaxlm.llm.openai import OpenAIBackend
from jaxlm.llm.replay import CassetteMiss, ReplayBackend, ScriptedBackend

__all__ = [
    "CAPABILITIES", "BackendError", "CassetteMiss", "Completion", "GenConfig", "LLMBackend",
    "LocalBackend", "Message", "MissingCapability", "OpenAIBackend", "ReplayBackend",
    "ScoreResult", "ScriptedBackend", "make_backend", "require",
]


def __getattr__(name):
    if name == "LocalBackend":
        from jaxlm.llm.local import LocalBackend

        return LocalBackend
    raise AttributeError(name)


def make_backend(kind: str, *, model: str = "smollm2-135m-instruct", base_url: str | None = None,
                 cassette: str | None = None, record: bool = False, record_mode: str = "new",
                 local_kw: dict | None = None, **kw):
    """Builds a backend by kind: "local", "openai" or "replay" (``record=True`` wraps
    "local"/"openai" in a recording ``ReplayBackend``; ``record_mode`` new|append|overwrite
    says what to do when the cassette exists).

    ``local_kw`` goes to ``LocalBackend`` (e.g. ``prefix_slots``); ``kw`` to
    ``OpenAIBackend``. Command-line entrypoints use ``jaxlm.llm.cli`` instead."""
    if kind == "local":
        from jaxlm.llm.local import LocalBackend

        b = LocalBackend(model, **(local_kw or {}))
        return (ReplayBackend(cassette, inner=b, record_mode=record_mode)
                if (record and cassette) else b)
    if kind == "openai":
        b = OpenAIBackend(base_url=base_url, model=model, **kw)
        return (ReplayBackend(cassette, inner=b, record_mode=record_mode)
                if (record and cassette) else b)
    if kind == "replay":
        if not cassette:
            raise ValueError("make_backend('replay') needs cassette=<path to a .jsonl>")
        return ReplayBackend(cassette)
    raise ValueError(f"backend kind must be local|openai|replay, got {kind!r}")
