"""``OpenAIBackend``: any OpenAI-compatible server (chat-completions and completions).

Standard library only (``http.client``). Every request has a timeout; timeouts,
connection errors, 429 and 5xx replies, and malformed JSON bodies are retried with
exponential backoff (429 honours ``Retry-After``). When the retries run out the
call raises ``BackendError`` naming the URL, the attempts and the last failure, so
an agent loop can log it and stop cleanly. Other 4xx replies fail at once.

Scoring exists only when the server echoes prompt log-probs on ``/completions``
(``echo=True, logprobs=0, max_tokens=0``, as vLLM and llama.cpp's server do); pass
``supports_echo_logprobs=True`` to enable it.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
import urllib.parse
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

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class OpenAIBackend:
    """An OpenAI-compatible HTTP backend (text tier; scoring when the server echoes logprobs).

    Args:
        base_url: e.g. "http://127.0.0.1:8000/v1" (default: $OPENAI_BASE_URL or the OpenAI API).
        model: model name sent in each request.
        api_key_env: name of the env var holding the key (sent as a Bearer token if set).
        timeout: seconds per request (connect + read).
        max_retries: retries after the first attempt.
        backoff: first retry delay in seconds (doubled each retry, capped at ``max_backoff``).
        supports_echo_logprobs: the server returns prompt logprobs with echo on /completions.
        sleep: injectable sleep (tests).
    """

    def __init__(
        self,
        base_url: str | None = None,
        model: str = "gpt-3.5-turbo",
        *,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 30.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 20.0,
        supports_echo_logprobs: bool = False,
        context_window: int = 4096,
        name: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        base_url = base_url or os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1")
        u = urllib.parse.urlparse(base_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(
                f"OpenAIBackend: base_url {base_url!r} must look like http(s)://host[:port]/path"
            )
        if timeout <= 0 or max_retries < 0 or backoff < 0:
            raise ValueError("OpenAIBackend: timeout must be > 0, max_retries and backoff >= 0")
        self.base_url = base_url.rstrip("/")
        self._u = u
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.context_window = context_window
        self.name = name or f"openai:{model}"
        self._sleep = sleep
        caps = {"chat", "complete"} | ({"score"} if supports_echo_logprobs else set())
        self.capabilities = frozenset(caps)
        self.stats = {"requests": 0, "attempts": 0, "retries": 0, "failures": 0}
        self.failures: list[str] = []  # one line per failed attempt (kept for the episode log)

    # ------------------------------------------------------------------ HTTP
    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            h["Authorization"] = f"Bearer {key}"
        return h

    def _post_once(self, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        conn_cls = (http.client.HTTPSConnection if self._u.scheme == "https"
                    else http.client.HTTPConnection)
        conn = conn_cls(self._u.hostname, self._u.port, timeout=self.timeout)
        try:
            conn.request("POST", (self._u.path.rstrip("/") + path) or "/", body=body,
                         headers=self._headers())
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POSTs JSON with retries; returns the decoded JSON object or raises BackendError."""
        body = json.dumps(payload).encode()
        self.stats["requests"] += 1
        last = "no attempt"
        delay = self.backoff
        for attempt in range(self.max_retries + 1):
            self.stats["attempts"] += 1
            retry_after = None
            try:
                status, headers, data = self._post_once(path, body)
            except (TimeoutError, socket.timeout) as e:
                last = f"timeout after {self.timeout}s ({e})"
            except (ConnectionError, http.client.HTTPException, OSError) as e:
                last = f"connection error: {type(e).__name__}: {e}"
            else:
                if status == 200:
                    try:
                        obj = json.loads(data.decode("utf-8"))
                        if not isinstance(obj, dict):
                            raise ValueError("top-level JSON is not an object")
                        return obj
                    except (ValueError, UnicodeDecodeError) as e:
                        last = f"malformed JSON in a 200 reply ({e}); body starts {data[:80]!r}"
                elif status in RETRY_STATUS:
                    last = f"HTTP {status}: {data[:200].decode('utf-8', 'replace')}"
                    ra = headers.get("retry-after")
                    if ra:
                        try:
                            retry_after = float(ra)
                        except ValueError:
                            retry_after = None
                else:
                    self.stats["failures"] += 1
                    msg = (f"{self.base_url}{path}: HTTP {status} (not retried): "
                           f"{data[:300].decode('utf-8', 'replace')}")
                    self.failures.append(msg)
                    raise BackendError(msg)
            self.failures.append(f"attempt {attempt + 1}: {last}")
            if attempt < self.max_retries:
                self.stats["retries"] += 1
                wait = min(self.max_backoff, retry_after if retry_after is not None else delay)
                self._sleep(wait)
                delay = min(self.max_backoff, delay * 2)
        self.stats["failures"] += 1
        raise BackendError(
            f"{self.base_url}{path}: failed after {self.max_retries + 1} attempts; last error: "
            f"{last}"
        )

    # ------------------------------------------------------------------ text tier
    def _gen_fields(self, cfg: GenConfig) -> dict[str, Any]:
        d: dict[str, Any] = {
            "model": self.model, "max_tokens": cfg.max_tokens, "temperature": cfg.temperature,
            "top_p": cfg.top_p, "n": cfg.n, "seed": cfg.seed,
        }
        if cfg.stop:
            d["stop"] = list(cfg.stop)
        if cfg.frequency_penalty is not None:
            d["frequency_penalty"] = cfg.frequency_penalty
        if cfg.response_format is not None:  # passed through; the server enforces it
            d["response_format"] = cfg.response_format
        return d

    @staticmethod
    def _completions(obj: dict[str, Any], chat: bool, url: str) -> list[Completion]:
        try:
            choices = obj["choices"]
            usage = obj.get("usage") or {}
            out = []
            for ch in sorted(choices, key=lambda c: c.get("index", 0)):
                text = ch["message"]["content"] if chat else ch["text"]
                if text is None:
                    text = ""
                if not isinstance(text, str):
                    raise TypeError(f"content is {type(text).__name__}, not str")
                out.append(Completion(
                    text=text, finish_reason=ch.get("finish_reason") or "stop",
                    prompt_tokens=int(usage.get("prompt_tokens", 0)),
                    completion_tokens=int(usage.get("completion_tokens", 0)), raw=ch,
                ))
        except (KeyError, TypeError, IndexError, ValueError) as e:
            raise BackendError(f"{url}: reply lacks the expected fields ({e!r}): "
                               f"{json.dumps(obj)[:300]}") from e
        if not out:
            raise BackendError(f"{url}: reply has no choices: {json.dumps(obj)[:300]}")
        return out

    def chat(self, messages: Sequence[Message], cfg: GenConfig = GenConfig()) -> list[Completion]:
        payload = {"messages": check_messages(messages), **self._gen_fields(cfg)}
        return self._completions(self.post("/chat/completions", payload), True,
                                 self.base_url + "/chat/completions")

    def complete(self, prompt: str, cfg: GenConfig = GenConfig()) -> list[Completion]:
        if not isinstance(prompt, str) or not prompt:
            raise ValueError("complete: prompt must be a non-empty string")
        payload = {"prompt": prompt, **self._gen_fields(cfg)}
        return self._completions(self.post("/completions", payload), False,
                                 self.base_url + "/completions")

    # ------------------------------------------------------------------ scoring tier
    def score(
        self, prefix: str | Sequence[Message], continuations: Sequence[str]
    ) -> list[ScoreResult]:
        """Echo-logprob scoring: the server must report ``text_offset`` per prompt token."""
        if "score" not in self.capabilities:
            raise MissingCapability(
                f"backend {self.name!r} has no scoring tier: the server must echo prompt "
                "logprobs on /completions (construct with supports_echo_logprobs=True)"
            )
        if not isinstance(prefix, str):
            raise ValueError("OpenAIBackend.score: pass the prefix as text (chat templates are "
                             "server-side and unknown here)")
        conts = check_continuations(continuations)
        out = []
        for c in conts:
            obj = self.post("/completions", {
                "model": self.model, "prompt": prefix + c, "max_tokens": 0, "echo": True,
                "logprobs": 0, "temperature": 0.0,
            })
            try:
                lp = obj["choices"][0]["logprobs"]
                offs, tls = lp["text_offset"], lp["token_logprobs"]
                sel = [float(t) for o, t in zip(offs, tls, strict=True)
                       if o >= len(prefix) and t is not None]
            except (KeyError, TypeError, IndexError, ValueError) as e:
                raise BackendError(f"{self.base_url}/completions: no usable echo logprobs "
                                   f"({e!r})") from e
            out.append(ScoreResult(sum(sel), len(sel)))
        return out
