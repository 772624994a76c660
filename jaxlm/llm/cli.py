"""Choosing an LLM backend from the command line: one helper for every agent entrypoint.

An entrypoint calls ``define_backend_flags()`` at import (the library itself defines no
flags until asked), ``backend_spec_from_flags()`` first thing in ``main`` (it checks the
flags and raises ``BackendFlagError``, one line naming the flag and the fix, before any
data is prepared or a model loaded), and ``build_backend(spec, local=..., scripted=...)``
when it needs the backend. The flags:

    --backend=local|openai|replay|scripted
    --model=NAME             local model (registry name) or the server's model name
    --base_url=URL           OpenAI-compatible server (default $OPENAI_BASE_URL); the key
                             is read from the environment variable OPENAI_API_KEY, never
                             from a flag (flags end up in shell history and logs)
    --record=PATH            record every request and reply of the run to a JSONL cassette
    --record_mode=new|append|overwrite   when PATH exists: refuse (default), add, replace
    --cassette=PATH          with --backend=replay: replay a recorded run offline, exactly
    --request_timeout=S      wall-clock deadline per HTTP attempt (openai)
    --max_retries=N          HTTP retries (openai)
    --echo_logprobs          the server echoes prompt log-probs (vLLM, llama.cpp): enables
                             the scoring tier over HTTP

A run recorded with ``--backend=openai --record=run.jsonl`` replays offline with
``--backend=replay --cassette=run.jsonl`` and the same other flags.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Callable
from typing import Any

from jaxlm.llm.replay import RECORD_MODES

KINDS = ("local", "openai", "replay", "scripted")


class BackendFlagError(ValueError):
    """Backend flags that cannot work together (the message names the flag and the fix)."""


@dataclasses.dataclass(frozen=True)
class BackendSpec:
    """What ``build_backend`` builds (the backend flags as one value)."""

    kind: str = "local"
    model: str = "smollm2-135m-instruct"
    base_url: str | None = None
    record: str | None = None
    record_mode: str = "new"
    cassette: str | None = None
    request_timeout: float = 60.0
    max_retries: int = 4
    echo_logprobs: bool = False

    def check(self) -> BackendSpec:
        """Raises ``BackendFlagError`` for flags that cannot work; returns self."""
        if self.kind not in KINDS:
            raise BackendFlagError(f"--backend={self.kind!r}: choose one of {'|'.join(KINDS)}")
        if self.record_mode not in RECORD_MODES:
            raise BackendFlagError(f"--record_mode={self.record_mode!r}: choose one of "
                                   f"{'|'.join(RECORD_MODES)}")
        if self.kind == "replay":
            if self.record:
                raise BackendFlagError("--record cannot be used with --backend=replay (a replay "
                                       "makes no new requests); drop --record")
            if not self.cassette:
                raise BackendFlagError("--backend=replay needs --cassette=PATH (a cassette "
                                       "written by an earlier run with --record=PATH)")
            p = pathlib.Path(self.cassette)
            if not p.is_file() or p.stat().st_size == 0:
                raise BackendFlagError(f"--cassette={self.cassette}: no such cassette (record "
                                       "one with --record=PATH and a live backend)")
        elif self.cassette:
            raise BackendFlagError(
                f"--cassette is read by --backend=replay only (got --backend={self.kind}); "
                "to record this run use --record=PATH")
        if self.record:
            p = pathlib.Path(self.record)
            if p.is_dir():
                raise BackendFlagError(f"--record={self.record} is a folder; give a file path "
                                       "such as run.jsonl")
            if p.exists() and p.stat().st_size > 0 and self.record_mode == "new":
                raise BackendFlagError(
                    f"--record={self.record} already exists and would be overwritten; choose a "
                    "new path, or pass --record_mode=append (keep it, add this run) or "
                    "--record_mode=overwrite")
        if not (math.isfinite(self.request_timeout) and self.request_timeout > 0):
            raise BackendFlagError(f"--request_timeout={self.request_timeout}: must be a "
                                   "finite number of seconds > 0")
        if self.max_retries < 0:
            raise BackendFlagError(f"--max_retries={self.max_retries}: must be >= 0")
        if self.kind == "openai":
            try:
                self._openai()
            except ValueError as e:
                raise BackendFlagError(f"--base_url: {e}") from None
        elif self.echo_logprobs:
            raise BackendFlagError("--echo_logprobs applies to --backend=openai only")
        return self

    def _openai(self) -> Any:
        from jaxlm.llm.openai import OpenAIBackend

        return OpenAIBackend(self.base_url or None, model=self.model,
                             timeout=self.request_timeout, max_retries=self.max_retries,
                             supports_echo_logprobs=self.echo_logprobs)


def check_log_prob_scoring(spec: BackendSpec, needs_scores: bool, *, task: str,
                           fix: str) -> None:
    """Refuses, before anything is loaded or sent, a run that ranks by log-probs over a
    plain OpenAI-compatible server: chat/completions return no prompt log-probs, so only
    ``--echo_logprobs`` (a server that echoes them on /completions) makes it work.

    Args:
        spec: the parsed backend flags.
        needs_scores: whether the run's settings use log-prob scoring.
        task: what the run scores, for the message ("rank commands").
        fix: the setting that avoids scoring ("--override=actor_mode=generate").

    Raises:
        BackendFlagError: one line naming the flags and both fixes.
    """
    if needs_scores and spec.kind == "openai" and not spec.echo_logprobs:
        raise BackendFlagError(
            f"--backend=openai cannot {task} by log-probs (chat/completions return no prompt "
            f"log-probs): pass {fix}, or --echo_logprobs if the server echoes prompt log-probs")


def build_backend(spec: BackendSpec, *, local: Callable[[], Any] | None = None,
                  scripted: Callable[[], Any] | None = None) -> Any:
    """The backend ``spec`` names, wrapped in a recording ``ReplayBackend`` with --record.

    Args:
        local: builds the local backend (default ``LocalBackend(spec.model)``).
        scripted: builds the scripted backend (default a plain ``ScriptedBackend()``).
    """
    from jaxlm.llm.replay import ReplayBackend, ScriptedBackend

    spec.check()
    if spec.kind == "replay":
        return ReplayBackend(spec.cassette)
    if spec.kind == "local":
        if local is None:
            from jaxlm.llm.local import LocalBackend

            inner = LocalBackend(spec.model)
        else:
            inner = local()
    elif spec.kind == "openai":
        inner = spec._openai()
    else:
        inner = scripted() if scripted is not None else ScriptedBackend()
    if spec.record:
        return ReplayBackend(spec.record, inner=inner, record_mode=spec.record_mode)
    return inner


def define_backend_flags(default: str = "local", flag_values: Any = None) -> None:
    """Defines the backend flags (once) in ``flag_values`` (default absl's FLAGS)."""
    from absl import flags

    fv = flag_values if flag_values is not None else flags.FLAGS
    if "backend" in fv:
        return
    flags.DEFINE_enum("backend", default, list(KINDS),
                      "LLM backend: local (jaxlm model), openai (any OpenAI-compatible server; "
                      "key from $OPENAI_API_KEY), replay (a --cassette, no model), scripted "
                      "(canned replies, no model).", flag_values=fv)
    flags.DEFINE_string("model", "smollm2-135m-instruct",
                        "Local model name, or the model name sent to the server.",
                        flag_values=fv)
    flags.DEFINE_string("base_url", None, "OpenAI-compatible base URL, e.g. "
                        "http://127.0.0.1:8000/v1 (default $OPENAI_BASE_URL). The API key is "
                        "read from $OPENAI_API_KEY, never from a flag.", flag_values=fv)
    flags.DEFINE_string("record", None, "Record every backend request and reply to this JSONL "
                        "cassette (replay it with --backend=replay --cassette=PATH).",
                        flag_values=fv)
    flags.DEFINE_enum("record_mode", "new", list(RECORD_MODES),
                      "When --record exists: new = refuse, append = keep it and add this run, "
                      "overwrite = replace it.", flag_values=fv)
    flags.DEFINE_string("cassette", None, "With --backend=replay: the cassette to replay.",
                        flag_values=fv)
    flags.DEFINE_float("request_timeout", 60.0, "openai: wall-clock deadline per HTTP attempt "
                       "(seconds).", flag_values=fv)
    flags.DEFINE_integer("max_retries", 4, "openai: retries per request.", flag_values=fv)
    flags.DEFINE_bool("echo_logprobs", False, "openai: the server echoes prompt log-probs on "
                      "/completions (vLLM, llama.cpp), enabling log-prob scoring.",
                      flag_values=fv)


def backend_spec_from_flags(flag_values: Any = None) -> BackendSpec:
    """The checked ``BackendSpec`` of the parsed flags (``BackendFlagError`` if unusable)."""
    from absl import flags

    fv = flag_values if flag_values is not None else flags.FLAGS
    return BackendSpec(
        kind=fv.backend, model=fv.model, base_url=fv.base_url, record=fv.record,
        record_mode=fv.record_mode, cassette=fv.cassette,
        request_timeout=fv.request_timeout, max_retries=fv.max_retries,
        echo_logprobs=fv.echo_logprobs).check()


def backend_from_flags(*, local: Callable[[], Any] | None = None,
                       scripted: Callable[[], Any] | None = None, flag_values: Any = None
                       ) -> Any:
    """``build_backend(backend_spec_from_flags(), ...)``."""
    return build_backend(backend_spec_from_flags(flag_values), local=local, scripted=scripted)

