"""OpenAIBackend against the fake server: retries, rate limits, timeouts, malformed JSON."""

import pytest

from jaxlm.llm import BackendError, GenConfig, OpenAIBackend
from jaxlm.llm.fake_server import FakeOpenAIServer

MSGS = [{"role": "user", "content": "Say hi"}]


@pytest.fixture()
def server():
    replies = iter(f"reply {i}" for i in range(1000))
    with FakeOpenAIServer(lambda kind, payload: next(replies), hang_seconds=1.0) as srv:
        yield srv


def _client(srv, **kw):
    sleeps = []
    kw.setdefault("max_retries", 3)
    b = OpenAIBackend(srv.base_url, model="m", timeout=kw.pop("timeout", 5.0),
                      backoff=0.25, sleep=sleeps.append, **kw)
    return b, sleeps


def test_plain_chat_and_request_body(server, monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-test")
    b, _ = _client(server, api_key_env="MY_KEY")
    out = b.chat(MSGS, GenConfig(max_tokens=7, stop=("\n",), seed=5, temperature=0.3))
    assert out[0].text == "reply 0" and out[0].finish_reason == "stop"
    req = server.requests[-1]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    p = req["payload"]
    assert (p["model"], p["max_tokens"], p["stop"], p["seed"], p["temperature"]) == (
        "m", 7, ["\n"], 5, 0.3)
    assert b.complete("abc")[0].text == "reply 1"
    assert server.requests[-1]["path"] == "/v1/completions"


@pytest.mark.parametrize("faults", [["429"], ["500", "503"], ["malformed"], ["badshape_ok"],
                                    ["drop"]])
def test_retries_then_success(server, faults):
    b, sleeps = _client(server)
    if faults == ["badshape_ok"]:  # a 200 with the wrong fields is a clear, non-retried error
        server.fail_next(["badshape"])
        with pytest.raises(BackendError, match="expected fields"):
            b.chat(MSGS)
        return
    server.fail_next(faults)
    out = b.chat(MSGS)
    assert out[0].text.startswith("reply")
    assert b.stats["retries"] == len(faults) and len(sleeps) == len(faults)
    assert len(b.failures) == len(faults)
    if faults == ["429"]:
        assert sleeps == [0.0]  # honours Retry-After: 0
    if faults == ["500", "503"]:
        assert sleeps == [0.25, 0.5]  # exponential backoff


def test_timeout_then_success(server):
    b, _ = _client(server, timeout=0.3)
    server.fail_next(["timeout"])
    out = b.chat(MSGS)
    assert out[0].text.startswith("reply") and "timeout" in b.failures[0]


def test_gives_up_with_clear_error(server):
    b, sleeps = _client(server, max_retries=2)
    server.fail_next(["500", "429", "malformed"])
    with pytest.raises(BackendError, match=r"after 3 attempts.*malformed JSON"):
        b.chat(MSGS)
    assert len(sleeps) == 2 and b.stats["failures"] == 1
    # the next call works again (nothing stuck)
    assert b.chat(MSGS)[0].text.startswith("reply")


def test_client_errors_not_retried():
    def boom(kind, payload):
        raise RuntimeError("no such model")

    with FakeOpenAIServer(boom) as srv:
        b, sleeps = _client(srv)
        with pytest.raises(BackendError, match="HTTP 400.*no such model"):
            b.chat(MSGS)
        assert sleeps == [] and b.stats["attempts"] == 1


def test_connection_refused_is_retried_then_fails():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    b = OpenAIBackend(f"http://127.0.0.1:{port}/v1", timeout=1, max_retries=1,
                      sleep=lambda t: None)
    with pytest.raises(BackendError, match="connection error"):
        b.chat(MSGS)


def test_bad_construction():
    with pytest.raises(ValueError, match="base_url"):
        OpenAIBackend("ftp://x")
