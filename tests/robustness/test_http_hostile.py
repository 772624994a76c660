"""The OpenAI-compatible client against a hostile server on 127.0.0.1.

``HostileServer`` answers each request with the next scripted behaviour (threads; it
serves at most ``max_requests`` requests and stops by itself after ``lifetime`` seconds,
so a failing test cannot leave it running). Each test checks that the client either
recovers or raises one ``BackendError`` that says what went wrong, in bounded time, with
no credential in any message.
"""

from __future__ import annotations

import datetime
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxlm.llm import BackendError, GenConfig, OpenAIBackend
from jaxlm.llm.openai import ReplyError, loads_strict, parse_retry_after, redact

MSGS = [{"role": "user", "content": "Say hi"}]
GOOD = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                     "finish_reason": "stop"}], "usage": {"prompt_tokens": 2,
                                                          "completion_tokens": 1}}
KEY = "sk-topsecretkey0123456789"


class HostileServer:
    """Scripted misbehaviour: ``script`` is a list of callables ``f(handler)`` (one per
    request, the last one repeats)."""

    def __init__(self, script, max_requests: int = 20, lifetime: float = 20.0):
        self.script, self.max_requests, self.lifetime = list(script), max_requests, lifetime
        self.seen: list[dict] = []
        self.stop_event = threading.Event()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def _handler(self):
        srv = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with srv._lock:
                    k = len(srv.seen)
                    srv.seen.append({"path": self.path, "headers": dict(self.headers),
                                     "body": body})
                if k >= srv.max_requests:
                    self.close_connection = True
                    return
                try:
                    srv.script[min(k, len(srv.script) - 1)](self)
                except OSError:  # the client hung up (deadline): fine
                    pass

        return H

    def __enter__(self):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self._timer = threading.Timer(self.lifetime, self.close)
        self._timer.daemon = True
        self._timer.start()
        return self

    def close(self):
        if not self.stop_event.is_set():
            self.stop_event.set()
            self.httpd.shutdown()
            self.httpd.server_close()

    def __exit__(self, *exc):
        self._timer.cancel()
        self.close()


def send(status=200, body=b"", headers=None, length=True):
    def f(h):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        if length:
            h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
    return f


def trickle(interval=0.05, headers_too=False):
    """200 with a declared body it sends one byte per ``interval`` (each read succeeds, so
    a per-read timeout never fires)."""
    def f(h):
        data = json.dumps(GOOD).encode() + b" " * 100_000
        if headers_too:
            for b in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10_000:
                if h.server_stop.is_set():
                    return
                h.wfile.write(bytes([b]))
                h.wfile.flush()
                time.sleep(interval)
            return
        h.send_response(200)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.flush()
        for b in data:
            if h.server_stop.is_set():
                return
            h.wfile.write(bytes([b]))
            h.wfile.flush()
            time.sleep(interval)
    return f


def _stopping(srv, fn):
    def f(h):
        h.server_stop = srv.stop_event
        fn(h)
    return f


def client(url, **kw):
    sleeps: list[float] = []
    kw.setdefault("timeout", 2.0)
    kw.setdefault("max_retries", 2)
    return OpenAIBackend(url, model="m", backoff=0.25, max_backoff=5.0, sleep=sleeps.append,
                         **kw), sleeps


# ------------------------------------------------------------------ deadline
@pytest.mark.parametrize("headers_too", [False, True])
def test_slow_trickle_hits_the_wall_clock_deadline(headers_too):
    srv = HostileServer([], lifetime=15)
    with srv:
        srv.script = [_stopping(srv, trickle(0.02, headers_too))]
        b, sleeps = client(srv.url, timeout=0.6, max_retries=1)
        t0 = time.monotonic()
        with pytest.raises(BackendError, match=r"after 2 attempts.*deadline of 0.6s"):
            b.chat(MSGS)
        took = time.monotonic() - t0
    # two attempts of 0.6 s each (sleeps are injected): far less than the trickle's length
    assert took < 2 * 0.6 + 1.5, took
    assert len(srv.seen) == 2 and len(sleeps) == 1


# ------------------------------------------------------------------ size cap
def test_oversized_reply_declared_is_refused_unread():
    big = 300 << 20
    def f(h):  # declares 300 MB, sends a little, then hangs up
        h.send_response(200)
        h.send_header("Content-Length", str(big))
        h.end_headers()
        h.wfile.write(b'{"choices": [')
    with HostileServer([f]) as srv:
        b, sleeps = client(srv.url)
        with pytest.raises(BackendError, match=r"exceeds max_reply_bytes=16777216.*not retried"):
            b.chat(MSGS)
        assert len(srv.seen) == 1 and sleeps == []


def test_oversized_reply_streamed_without_length_is_cut():
    def f(h):  # no Content-Length, HTTP/1.0-style body until close, 2 MB of padding
        h.send_response(200)
        h.end_headers()
        h.wfile.write(b'{"choices": [], "pad": "' + b"x" * (2 << 20) + b'"}')
        h.close_connection = True
    with HostileServer([f]) as srv:
        b, _ = client(srv.url, max_reply_bytes=1 << 20)
        with pytest.raises(BackendError, match=r"exceeds max_reply_bytes=1048576"):
            b.chat(MSGS)
        # under the cap the same reply is read (and then refused for its shape, not size)
        b2, _ = client(srv.url, max_reply_bytes=4 << 20)
        with pytest.raises(BackendError, match="'choices' must be a non-empty list"):
            b2.chat(MSGS)


# ------------------------------------------------------------------ Retry-After
@pytest.mark.parametrize("value,want", [("-5", 0.25), ("1e12", 5.0), ("soon", 0.25),
                                        ("nan", 0.25), ("inf", 0.25), ("2", 2.0),
                                        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)])
def test_retry_after_is_clamped(value, want):
    script = [send(429, {"error": "slow down"}, {"Retry-After": value}), send(200, GOOD)]
    with HostileServer(script) as srv:
        b, sleeps = client(srv.url)
        assert b.chat(MSGS)[0].text == "hi"
        assert sleeps == [want]


def test_parse_retry_after_unit():
    assert parse_retry_after(None, 10) is None
    assert parse_retry_after("7.5", 10) == 7.5
    assert parse_retry_after("99", 10) == 10
    assert parse_retry_after("-0.1", 10) is None
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 3))
    assert 0 < parse_retry_after(future, 10) <= 3.5


# ------------------------------------------------------------------ malformed / schema
BAD_REPLIES = {
    "choices is a string": ({"choices": "hi"}, "'choices' must be a non-empty list"),
    "choices empty": ({"choices": []}, "'choices' must be a non-empty list"),
    "choice is a number": ({"choices": [1]}, r"choices\[0\] must be an object"),
    "usage is a string": (dict(GOOD, usage="lots"), "'usage' must be an object"),
    "usage count is a string": (dict(GOOD, usage={"prompt_tokens": "5"}),
                                "usage.prompt_tokens must be a non-negative integer"),
    "usage count negative": (dict(GOOD, usage={"completion_tokens": -3}),
                             "usage.completion_tokens must be a non-negative integer"),
    "message null": ({"choices": [{"message": None}]}, "'message' must be an object"),
    "content a list": ({"choices": [{"message": {"content": [1, 2]}}]}, "content is list"),
    "index a string": ({"choices": [{"index": "a", "message": {"content": "x"}}]},
                       r"choices\[0\].index"),
    "finish_reason a number": ({"choices": [{"message": {"content": "x"},
                                             "finish_reason": 3}]}, "finish_reason"),
    "logprobs a string": ({"choices": [{"message": {"content": "x"}, "logprobs": "NaN"}]},
                          "'logprobs' must be an object"),
    "logprob the string NaN": ({"choices": [{"message": {"content": "x"}, "logprobs": {
        "content": [{"token": "x", "logprob": "NaN"}]}}]}, "must be a number"),
    "logprob positive": ({"choices": [{"message": {"content": "x"}, "logprobs": {
        "content": [{"token": "x", "logprob": 3.0}]}}]}, "finite log-probability"),
}


@pytest.mark.parametrize("name", list(BAD_REPLIES))
def test_wrong_types_are_one_clear_error(name):
    body, msg = BAD_REPLIES[name]
    with HostileServer([send(200, body)]) as srv:
        b, sleeps = client(srv.url)
        with pytest.raises(BackendError, match=msg) as ei:
            b.chat(MSGS)
        assert "expected fields" in str(ei.value)
        assert len(srv.seen) == 1 and sleeps == []  # a wrong shape is not retried


@pytest.mark.parametrize("body,msg", [
    (b'{"choices": [ {"message": ', "malformed JSON"),
    (b"[1, 2]", "not an object"),
    (b'{"choices": [{"message": {"content": "x"}, "logprobs": {"content": '
     b'[{"logprob": NaN}]}}]}', "non-finite number NaN"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b"\xff\xfe\x00garbage", "malformed JSON"),
])
def test_malformed_bodies_are_retried_then_reported(body, msg):
    with HostileServer([send(200, body)]) as srv:
        b, sleeps = client(srv.url, max_retries=1)
        with pytest.raises(BackendError, match=rf"after 2 attempts.*{msg}"):
            b.chat(MSGS)
        assert len(srv.seen) == 2 and len(sleeps) == 1


def test_recovers_after_hostile_replies():
    script = [send(200, b"{"), send(503, b"busy", {"Retry-After": "-1"}), send(200, GOOD)]
    with HostileServer(script) as srv:
        b, sleeps = client(srv.url, max_retries=3)
        out = b.chat(MSGS, GenConfig(max_tokens=4))
        assert out[0].text == "hi" and out[0].prompt_tokens == 2
        assert sleeps == [0.25, 0.5] and len(b.failures) == 2


def test_echo_logprobs_nan_refused():
    lp = {"choices": [{"text": "ab", "logprobs": {"text_offset": [0, 1],
                                                   "token_logprobs": [None, "NaN"]}}]}
    with HostileServer([send(200, lp)]) as srv:
        b, _ = client(srv.url, supports_echo_logprobs=True)
        with pytest.raises(BackendError, match="no usable echo logprobs.*must be a number"):
            b.score("a", ["b"])
    ok = {"choices": [{"text": "ab", "logprobs": {"text_offset": [0, 1],
                                                   "token_logprobs": [None, -0.5]}}]}
    with HostileServer([send(200, ok)]) as srv:
        b, _ = client(srv.url, supports_echo_logprobs=True)
        r = b.score("a", ["b"])[0]
        assert (r.sum_logprob, r.n_tokens) == (-0.5, 1)


# ------------------------------------------------------------------ credentials
def _echo_everything(status):
    def f(h):  # echoes the request's headers and line, as a careless proxy would
        body = json.dumps({"error": {"message": "denied", "you_sent": dict(h.headers),
                                     "line": h.requestline}}).encode()
        send(status, body)(h)
    return f


@pytest.mark.parametrize("status", [401, 500])
def test_credentials_never_in_messages(status, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with HostileServer([_echo_everything(status)]) as srv:
        url = srv.url.replace("http://", "http://alice:pa55word-xyz@")
        b, _ = client(url, max_retries=1)
        assert "pa55word" not in b.base_url and "alice" not in b.base_url
        with pytest.raises(BackendError) as ei:
            b.chat(MSGS)
        text = str(ei.value) + "\n".join(b.failures) + repr(ei.value)
        assert "denied" in text  # the server's message still reaches the user
        for secret in (KEY, "pa55word-xyz", "alice:pa55word"):
            assert secret not in text
        # the key was sent (the server saw it); it was only kept out of the messages
        assert srv.seen[0]["headers"]["Authorization"] == f"Bearer {KEY}"


def test_basic_auth_from_url_is_sent_and_redacted():
    with HostileServer([_echo_everything(403)]) as srv:
        url = srv.url.replace("http://", "http://bob:hunter2@")
        b, _ = client(url)
        with pytest.raises(BackendError, match="HTTP 403") as ei:
            b.chat(MSGS)
        assert srv.seen[0]["headers"]["Authorization"].startswith("Basic ")
        assert "hunter2" not in str(ei.value)
        assert "Ym9iOmh1bnRlcjI=" not in str(ei.value)  # base64 of bob:hunter2


def test_bad_base_url_message_is_redacted():
    with pytest.raises(ValueError) as ei:
        OpenAIBackend("ftp://carol:s3cretpass@host/v1")
    assert "s3cretpass" not in str(ei.value)


def test_redact_unit():
    s = redact('Authorization: Bearer abc.def-123 {"api_key": "k9k9k9"} sk-live_ABCDEF12 '
               "http://u:p@h/x secret=mine", ["mine"])
    for leak in ("abc.def-123", "k9k9k9", "sk-live_ABCDEF12", "u:p@", "=mine"):
        assert leak not in s
    assert "http://***@h/x" in s


def test_strict_json_loader():
    assert loads_strict('{"a": [1.5, -2]}') == {"a": [1.5, -2]}
    for bad in ('{"a": NaN}', '{"a": Infinity}', '[-Infinity]', "[" * 50_000):
        with pytest.raises(ValueError):
            loads_strict(bad)


# ------------------------------------------------------------------ fuzzed reply parsers
FUZZ = settings(max_examples=80, deadline=datetime.timedelta(seconds=2), derandomize=True,
                database=None, suppress_health_check=[HealthCheck.too_slow])
_scalars = (st.none() | st.booleans() | st.integers(-5, 10 ** 12) | st.text(max_size=6)
            | st.floats(allow_nan=True, allow_infinity=True))
_json = st.recursive(_scalars, lambda ch: st.lists(ch, max_size=3)
                     | st.dictionaries(st.sampled_from(
                         ["choices", "usage", "message", "content", "text", "index", "logprobs",
                          "token_logprobs", "text_offset", "finish_reason", "logprob",
                          "prompt_tokens", "completion_tokens", "x"]), ch, max_size=4),
                     max_leaves=16)
_replies = st.dictionaries(st.sampled_from(["choices", "usage", "id"]), _json, max_size=3)


@FUZZ
@given(_replies, st.booleans())
def test_parse_choices_fuzzed(obj, chat):
    try:
        out = OpenAIBackend.parse_choices(obj, chat)
    except ReplyError:
        return
    assert out and all(isinstance(c.text, str) and c.prompt_tokens >= 0 for c in out)
    for c in out:
        assert c.token_logprobs is None or all(
            isinstance(v, float) and v == v and v <= 1e-3 for v in c.token_logprobs)


@FUZZ
@given(_replies, st.integers(0, 5))
def test_parse_echo_logprobs_fuzzed(obj, start):
    try:
        r = OpenAIBackend.parse_echo_logprobs(obj, start)
    except ReplyError:
        return
    assert r.n_tokens >= 0 and r.sum_logprob == r.sum_logprob and r.sum_logprob <= 1e-3 * max(
        r.n_tokens, 1)


@FUZZ
@given(st.text(max_size=40), st.floats(0, 100))
def test_parse_retry_after_fuzzed(value, cap):
    v = parse_retry_after(value, cap)
    assert v is None or 0 <= v <= cap
