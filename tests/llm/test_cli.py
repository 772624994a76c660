"""Backends from every agent entrypoint (issue 22 item 4) through ``jaxlm.llm.cli``.

Each entrypoint runs its smallest preset against the fake OpenAI-compatible server on
127.0.0.1 with ``--record``, then again offline with ``--backend=replay --cassette``; the
outputs must be the same. Bad flag combinations stop with one line before anything runs.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from jaxlm.llm import OpenAIBackend, ReplayBackend, ScriptedBackend
from jaxlm.llm.cli import BackendFlagError, BackendSpec, build_backend
from jaxlm.llm.fake_server import FakeOpenAIServer

ROOT = pathlib.Path(__file__).resolve().parents[2]
KEY = "sk-cli-test-key-0123456789"


def run_entry(name: str, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OPENAI_API_KEY=KEY, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", f"experiments.{name}", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and re.match(r"^([\w.]+: )?error: ", lines[0]), proc.stderr[-2000:]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------ the helper itself
def test_spec_checks(tmp_path):
    with pytest.raises(BackendFlagError, match="needs --cassette"):
        BackendSpec(kind="replay").check()
    with pytest.raises(BackendFlagError, match="no such cassette"):
        BackendSpec(kind="replay", cassette=str(tmp_path / "none.jsonl")).check()
    with pytest.raises(BackendFlagError, match="use --record=PATH"):
        BackendSpec(kind="local", cassette="x.jsonl").check()
    with pytest.raises(BackendFlagError, match="--record cannot be used with --backend=replay"):
        BackendSpec(kind="replay", cassette="x", record="y").check()
    with pytest.raises(BackendFlagError, match="--base_url"):
        BackendSpec(kind="openai", base_url="ftp://h").check()
    with pytest.raises(BackendFlagError, match="request_timeout"):
        BackendSpec(kind="openai", base_url="http://h/v1", request_timeout=float("nan")).check()
    with pytest.raises(BackendFlagError, match="openai only"):
        BackendSpec(kind="scripted", echo_logprobs=True).check()
    existing = tmp_path / "c.jsonl"
    existing.write_text("x\n")
    with pytest.raises(BackendFlagError, match="--record_mode=append"):
        BackendSpec(kind="scripted", record=str(existing)).check()
    BackendSpec(kind="scripted", record=str(existing), record_mode="append").check()


def test_build_record_then_replay(tmp_path):
    cas = tmp_path / "c.jsonl"
    rec = build_backend(BackendSpec(kind="scripted", record=str(cas)),
                        scripted=lambda: ScriptedBackend(default="hello"))
    assert isinstance(rec, ReplayBackend) and rec.mode == "record"
    text = rec.chat([{"role": "user", "content": "hi"}])[0].text
    rep = build_backend(BackendSpec(kind="replay", cassette=str(cas)))
    assert rep.chat([{"role": "user", "content": "hi"}])[0].text == text == "hello"
    with FakeOpenAIServer(lambda kind, payload: "served") as srv:
        b = build_backend(BackendSpec(kind="openai", base_url=srv.base_url, model="m",
                                      request_timeout=5, max_retries=0))
        assert isinstance(b, OpenAIBackend) and b.timeout == 5 and b.max_retries == 0
        assert b.chat([{"role": "user", "content": "x"}])[0].text == "served"
        assert "score" not in b.capabilities


# ------------------------------------------------------------------ luminate
def test_luminate_record_against_server_then_replay(tmp_path):
    from jaxlm.agents.luminate import scripted_backend

    cas = tmp_path / "lum.jsonl"
    common = ["--config=quick_test", "--noscreenshot"]
    with FakeOpenAIServer(backend=scripted_backend()) as srv:
        ok(run_entry("luminate", *common, "--backend=openai", f"--base_url={srv.base_url}",
                     "--model=served", f"--record={cas}", f"--workdir={tmp_path / 'live'}"))
        n_requests = len(srv.requests)
        assert n_requests > 0 and all(r["auth"] == f"Bearer {KEY}" for r in srv.requests)
        # recording again to the same cassette is refused before any request is made
        one_line_error(run_entry("luminate", *common, "--backend=openai",
                                 f"--base_url={srv.base_url}", f"--record={cas}"),
                       str(cas), "--record_mode=append")
        assert len(srv.requests) == n_requests
    assert KEY not in cas.read_text()
    ok(run_entry("luminate", *common, "--backend=replay", f"--cassette={cas}",
                 f"--workdir={tmp_path / 'replay'}"))
    live = json.loads((tmp_path / "live" / "luminate.json").read_text())
    rep = json.loads((tmp_path / "replay" / "luminate.json").read_text())
    assert live["responses"] == rep["responses"] and live["baseline"] == rep["baseline"]
    assert any("bottle" in r["text"] for r in live["responses"])  # the server's replies
    drop = lambda m: {k: v for k, v in m.items() if k != "timing"}  # noqa: E731
    assert drop(live["metrics"]) == drop(rep["metrics"])


@pytest.mark.parametrize("args,needles", [
    (["--backend=replay"], ["--cassette=PATH"]),
    (["--backend=scripted", "--cassette=x.jsonl"], ["--record=PATH"]),
    (["--backend=openai", "--base_url=nope://x"], ["--base_url"]),
    (["--config=nosuch"], ["unknown luminate preset 'nosuch'"]),
])
def test_luminate_bad_flags_one_line(args, needles, tmp_path):
    one_line_error(run_entry("luminate", "--config=quick_test", *args,
                             f"--workdir={tmp_path / 'w'}"), *needles)
    assert not (tmp_path / "w").exists()


def test_luminate_server_failure_is_one_line(tmp_path):
    with FakeOpenAIServer(lambda k, p: "x") as srv:
        srv.fail_next(["500"] * 50)
        p = run_entry("luminate", "--config=quick_test", "--backend=openai",
                      f"--base_url={srv.base_url}", "--max_retries=1",
                      f"--workdir={tmp_path / 'w'}")
    one_line_error(p, "backend:", "failed after 2 attempts", "HTTP 500")


# ------------------------------------------------------------------ llmsrec_syn
def _ranking_responder(kind, payload):
    """Ranks the test user's candidates in reverse order (a model that follows the format)."""
    import ast

    text = payload.get("prompt") or payload["messages"][-1]["content"]
    line = text.rsplit("Potential Matches:\n- ", 1)[-1].splitlines()[0]
    cands = ast.literal_eval(line[line.index("["):])
    titles = [c.split(". ", 1)[1] for c in cands][::-1]
    return "\n".join(f"{i + 1}. {t}" for i, t in enumerate(titles))


def test_llmsrec_record_against_server_then_replay(tmp_path):
    cas = tmp_path / "rec.jsonl"
    common = ["--config=quick_test", "--override=mode=generate", "--override=sasrec_steps=0"]
    with FakeOpenAIServer(_ranking_responder) as srv:
        # log-prob scoring cannot run over chat/completions: said in one line, nothing sent
        one_line_error(run_entry("llmsrec_syn", "--config=quick_test", "--backend=openai",
                                 f"--base_url={srv.base_url}"), "mode=generate")
        assert srv.requests == []
        ok(run_entry("llmsrec_syn", *common, "--backend=openai", f"--base_url={srv.base_url}",
                     f"--record={cas}", f"--workdir={tmp_path / 'live'}"))
        assert srv.requests and srv.requests[0]["path"] == "/v1/completions"
    ok(run_entry("llmsrec_syn", *common, "--backend=replay", f"--cassette={cas}",
                 f"--workdir={tmp_path / 'replay'}"))
    live = json.loads((tmp_path / "live" / "llmsrec_syn.json").read_text())
    rep = json.loads((tmp_path / "replay" / "llmsrec_syn.json").read_text())
    for k in ("table", "paired", "norms", "n_users", "backend"):
        assert live[k] == rep[k], k
    # the server's rankings were parsed (reverse order is not the random tie score)
    rows = {r["method"]: r for r in live["table"]}
    assert rows["zero"]["NDCG@10"] != rows["random"]["NDCG@10"]
    # replaying in score mode: the cassette has no scoring tier, said in one line
    one_line_error(run_entry("llmsrec_syn", "--config=quick_test", "--backend=replay",
                             f"--cassette={cas}", f"--workdir={tmp_path / 'x'}"),
                   "no log-prob scoring tier")


# ------------------------------------------------------------------ introspective_tips
def _tips_responder(kind, payload):
    text = payload.get("prompt") or payload["messages"][-1]["content"]
    if "tips" in text.lower():
        return ("1. Look around each room before moving on.\n2. Take any coin you see.\n"
                "3. Try unexplored exits first.")
    for cmd in ("take coin", "go east", "go north", "go south", "go west"):
        if cmd in text:
            return cmd
    return "look"


@pytest.mark.skipif(__import__("importlib").util.find_spec("textworld") is None,
                    reason="textworld (the agents extra) is not installed")
def test_introspective_tips_record_against_server_then_replay(tmp_path):
    cas = tmp_path / "it.jsonl"
    common = ["--config=quick_test", "--override=actor_mode=generate", "--override=trials=2",
              f"--cache_dir={tmp_path / 'games'}"]
    with FakeOpenAIServer(_tips_responder) as srv:
        one_line_error(run_entry("introspective_tips", "--config=quick_test",
                                 "--backend=openai", f"--base_url={srv.base_url}",
                                 f"--workdir={tmp_path / 'x'}"), "actor_mode=generate")
        ok(run_entry("introspective_tips", *common, "--backend=openai",
                     f"--base_url={srv.base_url}", f"--record={cas}",
                     f"--workdir={tmp_path / 'live'}"))
        assert any("tips" in json.dumps(r["payload"]).lower() for r in srv.requests)
    ok(run_entry("introspective_tips", *common, "--backend=replay", f"--cassette={cas}",
                 f"--workdir={tmp_path / 'replay'}"))
    live = (tmp_path / "live" / "episodes.jsonl").read_text()
    rep = (tmp_path / "replay" / "episodes.jsonl").read_text()
    assert live == rep
    rows = [json.loads(x) for x in live.splitlines()]
    # every method played both games; the tips arm played its second trial with tips
    assert {(r["method"], r["game"]) for r in rows if r["trial"] == 0} == {
        (m, g) for m in ("random", "none", "tips") for g in {r["game"] for r in rows}}
    assert sum(r["method"] == "tips" and r["trial"] == 1 for r in rows) == 2
    res = json.loads((tmp_path / "live" / "results.json").read_text())
    assert res["config"]["backend"] == "openai" and res["config"]["trials"] == 2


def test_introspective_tips_presets_and_overrides(tmp_path):
    one_line_error(run_entry("introspective_tips", "--config=nosuch"),
                   "unknown introspective_tips preset")
    one_line_error(run_entry("introspective_tips", "--config=quick_test", "--override=trials=0"),
                   "trials")
    one_line_error(run_entry("introspective_tips", "--config=quick_test", "--methods=magic"),
                   "magic")


def test_check_log_prob_scoring_is_one_check_for_every_entrypoint():
    from jaxlm.llm.cli import BackendFlagError, BackendSpec, check_log_prob_scoring

    http = BackendSpec(kind="openai", base_url="http://127.0.0.1:1/v1")
    with pytest.raises(BackendFlagError, match=r"^--backend=openai cannot rank commands by "
                       r"log-probs .*pass --override=actor_mode=generate, or --echo_logprobs"):
        check_log_prob_scoring(http, True, task="rank commands",
                               fix="--override=actor_mode=generate")
    check_log_prob_scoring(http, False, task="t", fix="f")  # generate mode: fine over HTTP
    echo = BackendSpec(kind="openai", base_url="http://127.0.0.1:1/v1", echo_logprobs=True)
    check_log_prob_scoring(echo, True, task="t", fix="f")  # the server echoes log-probs
    for kind in ("local", "scripted"):
        check_log_prob_scoring(BackendSpec(kind=kind), True, task="t", fix="f")
