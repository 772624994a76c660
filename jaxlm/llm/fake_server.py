"""A small OpenAI-compatible server on 127.0.0.1 for offline tests and demos.

``FakeOpenAIServer(responder)`` answers ``/chat/completions`` and ``/completions``
by calling ``responder(kind, payload) -> str`` (or a backend via ``backend=``), and
can be told to misbehave for the next requests: ``fail_next(["timeout", "429",
"500", "malformed", "drop"])``. It also serves echo logprobs on ``/completions``
when it wraps a backend with a scoring tier (``max_tokens=0, echo=True``).
"""

from __future__ import annotations

import collections
import json
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULTS = ("timeout", "429", "500", "503", "malformed", "drop", "badshape")


class FakeOpenAIServer:
    """Context manager running the fake server in a daemon thread.

    Args:
        responder: ``f(kind, payload) -> reply text``; kind is "chat" or "completions".
        backend: alternatively an LLMBackend whose chat/complete/score answer requests.
        hang_seconds: how long a "timeout" fault sleeps before answering.
    """

    def __init__(
        self,
        responder: Callable[[str, dict[str, Any]], str] | None = None,
        *,
        backend: Any = None,
        hang_seconds: float = 2.0,
    ):
        if responder is None and backend is None:
            responder = lambda kind, payload: "ok"  # noqa: E731
        self.responder = responder
        self.backend = backend
        self.hang_seconds = hang_seconds
        self.faults: collections.deque[str] = collections.deque()
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def fail_next(self, faults: Sequence[str]) -> None:
        bad = [f for f in faults if f not in FAULTS]
        if bad:
            raise ValueError(f"unknown faults {bad}; use {FAULTS}")
        with self._lock:
            self.faults.extend(faults)

    def _next_fault(self) -> str | None:
        with self._lock:
            return self.faults.popleft() if self.faults else None

    # ------------------------------------------------------------------ answers
    def _answer(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        n = int(payload.get("n", 1))
        if path.endswith("/chat/completions"):
            msgs = payload["messages"]
            if self.backend is not None:
                from jaxlm.llm.base import GenConfig

                cfg = GenConfig(max_tokens=int(payload.get("max_tokens", 64)),
                                temperature=float(payload.get("temperature", 0.0)),
                                top_p=float(payload.get("top_p", 1.0)),
                                stop=tuple(payload.get("stop") or ()),
                                seed=int(payload.get("seed", 0)), n=n)
                comps = self.backend.chat(msgs, cfg)
                texts = [(c.text, c.finish_reason, c.completion_tokens) for c in comps]
            else:
                t = self.responder("chat", payload)
                texts = [(t, "stop", len(t.split()))] * n
            choices = [{"index": i, "message": {"role": "assistant", "content": t},
                        "finish_reason": fr} for i, (t, fr, _) in enumerate(texts)]
            return {"id": "fake", "object": "chat.completion", "choices": choices,
                    "usage": {"prompt_tokens": sum(len(m["content"].split()) for m in msgs),
                              "completion_tokens": texts[0][2]}}
        prompt = payload["prompt"]
        if payload.get("echo") and int(payload.get("max_tokens", 1)) == 0:
            return self._echo(prompt)
        if self.backend is not None:
            from jaxlm.llm.base import GenConfig

            cfg = GenConfig(max_tokens=int(payload.get("max_tokens", 64)),
                            temperature=float(payload.get("temperature", 0.0)),
                            top_p=float(payload.get("top_p", 1.0)),
                            stop=tuple(payload.get("stop") or ()),
                            seed=int(payload.get("seed", 0)), n=n)
            texts = [(c.text, c.finish_reason) for c in self.backend.complete(prompt, cfg)]
        else:
            texts = [(self.responder("completions", payload), "stop")] * n
        return {"id": "fake", "object": "text_completion",
                "choices": [{"index": i, "text": t, "finish_reason": fr}
                            for i, (t, fr) in enumerate(texts)],
                "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": 1}}

    def _echo(self, prompt: str) -> dict[str, Any]:
        """Prompt logprobs for echo scoring, one 'token' per character boundary of the
        backend's tokenization of the whole prompt (first token has logprob None)."""
        if self.backend is None:
            raise ValueError("echo logprobs need a backend with a scoring tier")
        ids = self.backend.encode(prompt)
        # per-token logprobs of ids[1:] given the preceding ids
        per = self.backend.score_ids_batch([(ids[:1], [ids[1:]])])[0][0] if len(ids) > 1 else []
        offs, pos = [], 0
        for i in range(len(ids)):
            offs.append(pos)
            pos = len(self.backend.decode(ids[: i + 1]))
        return {"choices": [{"index": 0, "text": prompt, "finish_reason": "length",
                             "logprobs": {"token_logprobs": [None, *map(float, per)],
                                          "text_offset": offs}}]}

    # ------------------------------------------------------------------ server
    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):  # noqa: N802
                n = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(n)
                try:
                    payload = json.loads(raw)
                except ValueError:
                    self._send(400, b'{"error": "bad json"}')
                    return
                with server._lock:
                    server.requests.append({"path": self.path, "payload": payload,
                                            "auth": self.headers.get("Authorization")})
                fault = server._next_fault()
                if fault == "timeout":
                    time.sleep(server.hang_seconds)
                    try:
                        self._send(200, b'{"choices": []}')
                    except OSError:
                        pass
                    return
                if fault == "drop":
                    self.close_connection = True
                    return
                if fault in ("429", "500", "503"):
                    hdr = {"Retry-After": "0"} if fault == "429" else None
                    self._send(int(fault), b'{"error": {"message": "injected"}}', hdr)
                    return
                if fault == "malformed":
                    self._send(200, b'{"choices": [ {"message": ')
                    return
                if fault == "badshape":
                    self._send(200, b'{"unexpected": true}')
                    return
                if not (self.path.endswith("/chat/completions")
                        or self.path.endswith("/completions")):
                    self._send(404, b'{"error": "unknown path"}')
                    return
                try:
                    obj = server._answer(self.path, payload)
                except Exception as e:  # report to the client as a 400
                    self._send(400, json.dumps({"error": str(e)}).encode())
                    return
                self._send(200, json.dumps(obj).encode())

        return Handler

    def start(self) -> FakeOpenAIServer:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
