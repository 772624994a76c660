"""``OpenAIBackend``: any OpenAI-compatible server (chat-completions and completions).

Standard library only (``http.client``). The server is untrusted:

* every attempt has a wall-clock deadline (``timeout``: connect, send, headers and body
  together; a watchdog closes the socket when it passes, so a server trickling its reply
  a byte at a time cannot stretch it);
* a reply larger than ``max_reply_bytes`` (16 MiB by default) is refused unread;
* ``Retry-After`` (seconds or an HTTP date) is honoured only when it is a finite number,
  clamped to ``[0, max_backoff]``; anything else falls back to exponential backoff;
* replies are schema-checked (``choices`` a non-empty list of objects, ``usage`` an
  object of non-negative integers, text a string, log-probs finite numbers <= 0; JSON
  ``NaN``/``Infinity`` literals are refused) and a bad reply is a ``BackendError`` that
  says what was wrong;
* credentials (``user:pass@`` in ``base_url``, the API key, ``Authorization`` values,
  bearer tokens) are redacted from every error message and failure line, including text
  the server echoes back.

Timeouts, connection errors, 408/409/429/5xx replies and malformed JSON bodies are retried
with exponential backoff; when the retries run out the call raises ``BackendError`` naming
the URL (redacted), the attempts and the last failure, so an agent loop can log it and stop
cleanly. Other 4xx replies, oversized replies and 200 replies of the wrong shape fail at once.

Scoring exists only when the server echoes prompt log-probs on ``/completions``
(``echo=True, logprobs=0, max_tokens=0``, as vLLM and llama.cpp's server do); pass
``supports_echo_logprobs=True`` to enable it.
"""

from __future__ import annotations

import base64
import email.utils
import http.client
import json
import math
import os
import re
import socket
import threading
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
DEFAULT_MAX_REPLY_BYTES = 16 << 20
REDACTED = "***"
# token-like secrets that are redacted even when we do not know them (echoed by a server)
_SECRET_PATTERNS = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 " + REDACTED),
    (re.compile(r"(?i)(?<![A-Za-z])(authorization|api[_-]?key|x-api-key|password|passwd|"
                r"secret|token)(\"?\s*[:=]\s*\"?)[^\s\",}]+"), r"\1\2" + REDACTED),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{6,}"), REDACTED),
    (re.compile(r"(?<=://)[^/@\s]+@"), REDACTED + "@"),
)


class ReplyError(ValueError):
    """A 200 reply whose body does not have the expected shape (not retried)."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} in the JSON reply")


def loads_strict(data: bytes | str) -> Any:
    """``json.loads`` that refuses ``NaN``/``Infinity`` literals (ValueError) and turns too
    deep nesting (RecursionError) into ValueError."""
    try:
        return json.loads(data, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """``text`` with every known secret and every token-like credential replaced by ***."""
    for s in sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True):
        text = text.replace(s, REDACTED)
    for pat, rep in _SECRET_PATTERNS:
        text = pat.sub(rep, text)
    return text


def parse_retry_after(value: str | None, cap: float, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date,
    clamped to ``[0, cap]``; None when absent or unusable (negative, NaN, garbage)."""
    if value is None:
        return None
    value = value.strip()
    try:
        secs = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when is None or when.tzinfo is None:
            return None
        secs = when.timestamp() - (time.time() if now is None else now)
        secs = max(secs, 0.0)
    if not math.isfinite(secs) or secs < 0:
        return None
    return min(secs, cap)


def _nonneg_int(v: Any, what: str) -> int:
    if v is None:
        return 0
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0 \
            or v != int(v):
        raise ReplyError(f"{what} must be a non-negative integer, got {v!r}")
    return int(v)


def check_logprob(v: Any, what: str) -> float:
    """A finite log-probability (a JSON number <= 1e-3; strings like "NaN" are refused)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ReplyError(f"{what} must be a number, got {v!r}")
    v = float(v)
    if not math.isfinite(v) or v > 1e-3:
        raise ReplyError(f"{what} must be a finite log-probability <= 0, got {v!r}")
    return v


class OpenAIBackend:
    """An OpenAI-compatible HTTP backend (text tier; scoring when the server echoes logprobs).

    Args:
        base_url: e.g. "http://127.0.0.1:8000/v1" (default: $OPENAI_BASE_URL or the OpenAI
            API). ``user:pass@host`` sends HTTP basic auth (unless an API key is set).
        model: model name sent in each request.
        api_key_env: name of the env var holding the key (sent as a Bearer token if set).
        timeout: wall-clock deadline in seconds per attempt (connect + send + the whole
            reply), not per socket read.
        max_retries: retries after the first attempt.
        backoff: first retry delay in seconds (doubled each retry, capped at ``max_backoff``).
        max_backoff: most seconds one wait may take (``Retry-After`` is clamped to it).
        max_reply_bytes: largest reply body accepted.
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
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
        supports_echo_logprobs: bool = False,
        context_window: int = 4096,
        name: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        base_url = base_url or os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1")
        u = urllib.parse.urlparse(base_url)
        self._userinfo = [x for x in (u.username, u.password) if x]
        if u.username or u.password:
            self._userinfo.append(f"{u.username or ''}:{u.password or ''}")
            self._userinfo.append(base64.b64encode(
                f"{urllib.parse.unquote(u.username or '')}:"
                f"{urllib.parse.unquote(u.password or '')}".encode()).decode())
        netloc = u.hostname or ""
        try:
            port = u.port
        except ValueError:
            port = -1
        if port:
            netloc += f":{port}"
        self.base_url = urllib.parse.urlunparse(
            (u.scheme, (REDACTED + "@" if self._userinfo else "") + netloc, u.path.rstrip("/"),
             "", "", ""))
        if u.scheme not in ("http", "https") or not u.hostname or port == -1:
            raise ValueError(
                f"OpenAIBackend: base_url {self.base_url!r} must look like "
                "http(s)://host[:port]/path")
        for v, what in ((timeout, "timeout"), (backoff, "backoff"), (max_backoff, "max_backoff")):
            if not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                raise ValueError(f"OpenAIBackend: {what} must be a finite number >= 0, got {v!r}")
        if timeout <= 0 or max_retries < 0 or max_reply_bytes < 1:
            raise ValueError("OpenAIBackend: timeout must be > 0, max_retries >= 0 and "
                             "max_reply_bytes >= 1")
        self._u = u
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_reply_bytes = int(max_reply_bytes)
        self.context_window = context_window
        self.name = name or f"openai:{model}"
        self._sleep = sleep
        caps = {"chat", "complete"} | ({"score"} if supports_echo_logprobs else set())
        self.capabilities = frozenset(caps)
        self.stats = {"requests": 0, "attempts": 0, "retries": 0, "failures": 0}
        self.failures: list[str] = []  # one redacted line per failed attempt (episode log)

    # ------------------------------------------------------------------ secrets
    def _secrets(self) -> list[str]:
        key = os.environ.get(self.api_key_env)
        return [*self._userinfo, *([key] if key else [])]

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets())

    def _fail(self, msg: str) -> BackendError:
        msg = self._redact(msg)
        self.failures.append(msg)
        return BackendError(msg)

    # ------------------------------------------------------------------ HTTP
    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            h["Authorization"] = f"Bearer {key}"
        elif self._userinfo:
            h["Authorization"] = f"Basic {self._userinfo[-1]}"
        return h

    def _post_once(self, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        """One attempt under a wall-clock deadline. Raises TimeoutError when it passes and
        ``ReplyError`` for an oversized reply."""
        deadline = time.monotonic() + self.timeout
        conn_cls = (http.client.HTTPSConnection if self._u.scheme == "https"
                    else http.client.HTTPConnection)
        conn = conn_cls(self._u.hostname, self._u.port, timeout=self.timeout)
        fired = threading.Event()

        def kill():  # the watchdog: unblocks any read in progress
            fired.set()
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        timer = threading.Timer(self.timeout, kill)
        timer.daemon = True
        timer.start()
        try:
            conn.request("POST", (self._u.path.rstrip("/") + path) or "/", body=body,
                         headers=self._headers())
            resp = conn.getresponse()
            headers = {k.lower(): v for k, v in resp.getheaders()}
            declared = headers.get("content-length", "")
            if declared.strip().isdigit() and int(declared) > self.max_reply_bytes:
                raise ReplyError(f"reply of {int(declared)} bytes (Content-Length) exceeds "
                                 f"max_reply_bytes={self.max_reply_bytes}")
            chunks, size = [], 0
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or fired.is_set():
                    raise TimeoutError(f"deadline of {self.timeout}s passed while reading")
                if conn.sock is not None:
                    conn.sock.settimeout(left)
                chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > self.max_reply_bytes:
                    raise ReplyError(f"reply exceeds max_reply_bytes={self.max_reply_bytes} "
                                     "bytes")
                chunks.append(chunk)
            if fired.is_set():
                raise TimeoutError(f"deadline of {self.timeout}s passed while reading")
            return resp.status, headers, b"".join(chunks)
        except (OSError, http.client.HTTPException) as e:
            if fired.is_set() or time.monotonic() >= deadline:
                raise TimeoutError(f"deadline of {self.timeout}s passed") from e
            raise
        finally:
            timer.cancel()
            conn.close()

    def post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POSTs JSON with retries; returns the decoded JSON object or raises BackendError."""
        body = json.dumps(payload).encode()
        url = self.base_url + path
        self.stats["requests"] += 1
        last = "no attempt"
        delay = self.backoff
        for attempt in range(self.max_retries + 1):
            self.stats["attempts"] += 1
            retry_after = None
            try:
                status, headers, data = self._post_once(path, body)
            except ReplyError as e:
                self.stats["failures"] += 1
                raise self._fail(f"{url}: {e} (not retried)") from None
            except TimeoutError as e:
                last = f"timeout: {e}"
            except (ConnectionError, http.client.HTTPException, OSError) as e:
                last = f"connection error: {type(e).__name__}: {e}"
            else:
                text = data[:300].decode("utf-8", "replace")
                if status == 200:
                    try:
                        obj = loads_strict(data.decode("utf-8"))
                        if not isinstance(obj, dict):
                            raise ValueError("top-level JSON is not an object")
                        return obj
                    except (ValueError, UnicodeDecodeError) as e:
                        last = f"malformed JSON in a 200 reply ({e}); body starts {data[:80]!r}"
                elif status in RETRY_STATUS:
                    last = f"HTTP {status}: {text}"
                    retry_after = parse_retry_after(headers.get("retry-after"),
                                                    self.max_backoff)
                else:
                    self.stats["failures"] += 1
                    raise self._fail(f"{url}: HTTP {status} (not retried): {text}")
            self.failures.append(self._redact(f"attempt {attempt + 1}: {last}"))
            if attempt < self.max_retries:
                self.stats["retries"] += 1
                wait = retry_after if retry_after is not None else delay
                self._sleep(min(self.max_backoff, max(0.0, wait)))
                delay = min(self.max_backoff, delay * 2)
        self.stats["failures"] += 1
        raise BackendError(self._redact(
            f"{url}: failed after {self.max_retries + 1} attempts; last error: {last}"))

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
    def parse_choices(obj: dict[str, Any], chat: bool) -> list[Completion]:
        """Schema-checked completions from a reply (``ReplyError`` says what is wrong)."""
        choices = obj.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ReplyError(f"'choices' must be a non-empty list, got "
                             f"{type(choices).__name__}")
        usage = obj.get("usage")
        if usage is None:
            usage = {}
        if not isinstance(usage, dict):
            raise ReplyError(f"'usage' must be an object, got {type(usage).__name__}")
        pt = _nonneg_int(usage.get("prompt_tokens"), "usage.prompt_tokens")
        ct = _nonneg_int(usage.get("completion_tokens"), "usage.completion_tokens")
        for i, ch in enumerate(choices):
            if not isinstance(ch, dict):
                raise ReplyError(f"choices[{i}] must be an object, got {type(ch).__name__}")
            _nonneg_int(ch.get("index", i), f"choices[{i}].index")
        out = []
        for ch in sorted(choices, key=lambda c: int(c.get("index") or 0)):
            if chat:
                msg = ch.get("message")
                if not isinstance(msg, dict):
                    raise ReplyError(f"choice 'message' must be an object, got "
                                     f"{type(msg).__name__}")
                text = msg.get("content")
            else:
                if "text" not in ch:
                    raise ReplyError("choice lacks 'text'")
                text = ch["text"]
            if text is None:
                text = ""
            if not isinstance(text, str):
                raise ReplyError(f"content is {type(text).__name__}, not str")
            fr = ch.get("finish_reason")
            if fr is not None and not isinstance(fr, str):
                raise ReplyError(f"finish_reason must be a string, got {fr!r}")
            token_logprobs = None
            lp = ch.get("logprobs")
            if lp is not None:
                if not isinstance(lp, dict):
                    raise ReplyError(f"choice 'logprobs' must be an object or null, got "
                                     f"{type(lp).__name__}")
                if chat and lp.get("content") is not None:
                    items = lp["content"]
                    if not isinstance(items, list) or not all(isinstance(t, dict) for t in items):
                        raise ReplyError("logprobs.content must be a list of objects")
                    token_logprobs = [check_logprob(t.get("logprob"), "logprobs.content[].logprob")
                                      for t in items]
                elif not chat and lp.get("token_logprobs") is not None:
                    tl = lp["token_logprobs"]
                    if not isinstance(tl, list):
                        raise ReplyError("logprobs.token_logprobs must be a list")
                    token_logprobs = [check_logprob(t, "logprobs.token_logprobs[]")
                                      for t in tl if t is not None]
            out.append(Completion(text=text, finish_reason=fr or "stop", prompt_tokens=pt,
                                  completion_tokens=ct, token_logprobs=token_logprobs, raw=ch))
        return out

    def _completions(self, obj: dict[str, Any], chat: bool, url: str) -> list[Completion]:
        try:
            return self.parse_choices(obj, chat)
        except ReplyError as e:
            self.stats["failures"] += 1
            raise self._fail(f"{url}: reply lacks the expected fields ({e}): "
                             f"{json.dumps(obj)[:300]}") from None

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
    @staticmethod
    def parse_echo_logprobs(obj: dict[str, Any], start: int) -> ScoreResult:
        """Sum of the echoed prompt log-probs of tokens starting at or after ``start``."""
        choices = obj.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise ReplyError("'choices' must be a non-empty list of objects")
        lp = choices[0].get("logprobs")
        if not isinstance(lp, dict):
            raise ReplyError(f"choices[0].logprobs must be an object, got {type(lp).__name__}")
        offs, tls = lp.get("text_offset"), lp.get("token_logprobs")
        if not isinstance(offs, list) or not isinstance(tls, list) or len(offs) != len(tls):
            raise ReplyError("logprobs.text_offset and token_logprobs must be lists of one "
                             "length")
        sel = []
        for o, t in zip(offs, tls, strict=True):
            o = _nonneg_int(o, "logprobs.text_offset[]")
            if o >= start and t is not None:
                sel.append(check_logprob(t, "logprobs.token_logprobs[]"))
        return ScoreResult(math.fsum(sel), len(sel))

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
                out.append(self.parse_echo_logprobs(obj, len(prefix)))
            except ReplyError as e:
                self.stats["failures"] += 1
                raise self._fail(f"{self.base_url}/completions: no usable echo logprobs "
                                 f"({e})") from None
        return out
