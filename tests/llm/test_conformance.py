"""One protocol-conformance suite, run against every backend implementation."""

import math

import jax
import pytest

from jaxlm.core import MODELS, init
from jaxlm.llm import (
    CAPABILITIES,
    GenConfig,
    LLMBackend,
    MissingCapability,
    OpenAIBackend,
    ReplayBackend,
    ScriptedBackend,
    require,
)
from jaxlm.llm.fake_server import FakeOpenAIServer
from jaxlm.llm.local import ByteTokenizer, LocalBackend

MSGS = [{"role": "system", "content": "You play a text game."},
        {"role": "user", "content": "You see a door to the north. What now?"}]
GREEDY = GenConfig(max_tokens=12, temperature=0.0)
STOPPED = GenConfig(max_tokens=12, temperature=0.0, stop=("\n", "e"))
SAMPLED = GenConfig(max_tokens=8, temperature=1.0, seed=3, n=2)
PREFIX = "You are in a kitchen. Valid actions: go north, open fridge.\nAction: "
CONTS = ["go north", "open fridge", "x"]


def _workload(b):
    """Every request the conformance tests make (used to record the replay cassette)."""
    b.chat(MSGS, GREEDY)
    b.chat(MSGS, GREEDY)
    b.chat(MSGS, STOPPED)
    b.chat(MSGS, SAMPLED)
    b.complete(PREFIX, GREEDY)
    b.score(PREFIX, CONTS)
    for c in CONTS:
        b.score(PREFIX, [c])
    b.score(MSGS, CONTS)


@pytest.fixture(scope="module")
def tiny_local():
    cfg = MODELS.get("smollm2-135m_test")
    params = init(jax.random.PRNGKey(1), cfg)
    return LocalBackend(cfg=cfg, params=params, tokenizer=ByteTokenizer(), name="tiny")


@pytest.fixture(scope="module")
def fake_server(tiny_local):
    with FakeOpenAIServer(backend=tiny_local) as srv:
        yield srv


@pytest.fixture(scope="module", params=["local", "openai", "replay", "scripted"])
def backend(request, tiny_local, tmp_path_factory):
    kind = request.param
    if kind == "local":
        return tiny_local
    if kind == "openai":
        srv = request.getfixturevalue("fake_server")
        return OpenAIBackend(srv.base_url, model="tiny", timeout=30,
                             supports_echo_logprobs=True)
    if kind == "replay":
        path = tmp_path_factory.mktemp("cassette") / "conf.jsonl"
        _workload(ReplayBackend(path, inner=tiny_local))
        return ReplayBackend(path)  # replay only: no model behind it
    return ScriptedBackend(rules=[(r"door", "go north\nthen look")], default="look")


def test_protocol_attributes(backend):
    assert isinstance(backend, LLMBackend)
    assert isinstance(backend.name, str) and backend.name
    assert backend.capabilities <= CAPABILITIES
    assert {"chat", "complete", "score"} <= backend.capabilities
    assert backend.context_window > 0


def test_chat_shapes_and_determinism(backend):
    a = backend.chat(MSGS, GREEDY)
    b = backend.chat(MSGS, GREEDY)
    assert len(a) == 1 and isinstance(a[0].text, str)
    assert a[0].finish_reason in ("stop", "length")
    assert a[0].completion_tokens <= GREEDY.max_tokens
    assert a[0].text == b[0].text  # greedy is deterministic


def test_stop_strings_and_n(backend):
    out = backend.chat(MSGS, STOPPED)
    assert all(s not in out[0].text for s in STOPPED.stop)
    many = backend.chat(MSGS, SAMPLED)
    assert len(many) == 2 and all(isinstance(c.text, str) for c in many)


def test_complete(backend):
    out = backend.complete(PREFIX, GREEDY)
    assert len(out) == 1 and isinstance(out[0].text, str)


def test_score_batched_equals_single(backend):
    res = backend.score(PREFIX, CONTS)
    assert len(res) == len(CONTS)
    for r in res:
        assert r.n_tokens >= 1 and math.isfinite(r.sum_logprob) and r.sum_logprob <= 0
        assert r["sum_logprob"] == r.sum_logprob
    singles = [backend.score(PREFIX, [c])[0] for c in CONTS]
    for r, s in zip(res, singles, strict=True):
        assert r.n_tokens == s.n_tokens
        assert r.sum_logprob == pytest.approx(s.sum_logprob, abs=2e-4)


def test_score_chat_prefix(backend):
    if isinstance(backend, OpenAIBackend):
        with pytest.raises(ValueError, match="prefix as text"):
            backend.score(MSGS, CONTS)
        return
    res = backend.score(MSGS, CONTS)
    assert len(res) == 3 and all(r.sum_logprob <= 0 for r in res)


def test_bad_inputs_are_clear_errors(backend):
    with pytest.raises(ValueError, match="continuations"):
        backend.score(PREFIX, [])
    with pytest.raises(ValueError, match="role"):
        backend.chat([{"role": "wizard", "content": "hi"}], GREEDY)
    with pytest.raises(ValueError):
        GenConfig(max_tokens=0)
    with pytest.raises(ValueError, match="finite"):
        GenConfig(temperature=float("nan"))


def test_missing_tier_is_named(backend):
    if "forward" in backend.capabilities:
        require(backend, {"forward", "score"})
        return
    with pytest.raises(MissingCapability, match="white-box"):
        require(backend, {"forward"})


def test_openai_scoring_matches_local(tiny_local, fake_server):
    remote = OpenAIBackend(fake_server.base_url, model="tiny", supports_echo_logprobs=True)
    a = remote.score(PREFIX, CONTS)
    b = tiny_local.score(PREFIX, CONTS)
    for x, y in zip(a, b, strict=True):
        assert x.n_tokens == y.n_tokens
        assert x.sum_logprob == pytest.approx(y.sum_logprob, abs=1e-3)
    plain = OpenAIBackend(fake_server.base_url, model="tiny")
    with pytest.raises(MissingCapability, match="echo"):
        plain.score(PREFIX, CONTS)
