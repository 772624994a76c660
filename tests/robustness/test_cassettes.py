"""Cassettes never lose data: no truncation on record, a cut-off last line is tolerated,
every entry is on disk as soon as its call returns (even under SIGKILL)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from jaxlm.llm import BackendError, GenConfig, ReplayBackend, ScriptedBackend
from jaxlm.llm.replay import CassetteExists

CFG = GenConfig(max_tokens=8)


def _inner():
    return ScriptedBackend(rules=[(r"(\d+)", lambda t: f"reply to {t}")], default="none")


def _record(path, prompts, **kw):
    rec = ReplayBackend(path, inner=_inner(), **kw)
    return [rec.chat([{"role": "user", "content": p}], CFG)[0].text for p in prompts]


def _replay(path, prompts):
    rep = ReplayBackend(path)
    return [rep.chat([{"role": "user", "content": p}], CFG)[0].text for p in prompts]


def test_recording_over_an_existing_cassette_is_refused(tmp_path):
    path = tmp_path / "c.jsonl"
    first = _record(path, ["q1", "q2"])
    before = path.read_bytes()
    with pytest.raises(CassetteExists) as ei:
        ReplayBackend(path, inner=_inner())
    msg = str(ei.value)
    assert str(path) in msg and "--record_mode=append" in msg
    assert path.read_bytes() == before  # untouched
    assert _replay(path, ["q1", "q2"]) == first


def test_append_keeps_old_entries_and_adds_a_header(tmp_path):
    path = tmp_path / "c.jsonl"
    a = _record(path, ["q1", "q2"])
    b = _record(path, ["q3", "q1"], record_mode="append")
    heads = [json.loads(x) for x in path.read_text().splitlines()]
    assert sum("cassette" in h for h in heads) == 2 and len(heads) == 6
    # identical requests replay in recording order: the older q1 first
    assert _replay(path, ["q1", "q2", "q3", "q1"]) == [a[0], a[1], b[0], b[1]]


def test_overwrite_only_on_request(tmp_path):
    path = tmp_path / "c.jsonl"
    _record(path, ["q1"])
    _record(path, ["q2"], record_mode="overwrite")
    assert len(path.read_text().splitlines()) == 2
    with pytest.raises(BackendError, match="no cassette entry"):
        _replay(path, ["q1"])
    with pytest.raises(ValueError, match="record_mode"):
        ReplayBackend(path, inner=_inner(), record_mode="clobber")


@pytest.mark.parametrize("cut", [1, 10, -2])
def test_partial_last_line_is_tolerated_with_a_warning(tmp_path, cut):
    path = tmp_path / "c.jsonl"
    texts = _record(path, ["q1", "q2", "q3"])
    data = path.read_bytes()
    last = data.rstrip(b"\n").rfind(b"\n") + 1
    path.write_bytes(data[: last + cut] if cut > 0 else data[:cut])  # cut the last entry
    with pytest.warns(RuntimeWarning, match=r"c.jsonl:4: skipping a cut-off cassette line"):
        rep = ReplayBackend(path)
    assert rep.stats["skipped_partial"] == 1
    assert [rep.chat([{"role": "user", "content": p}], CFG)[0].text
            for p in ["q1", "q2"]] == texts[:2]
    with pytest.raises(BackendError, match="no cassette entry"):
        rep.chat([{"role": "user", "content": "q3"}], CFG)


def test_append_after_a_cut_off_line_keeps_everything(tmp_path):
    path = tmp_path / "c.jsonl"
    a = _record(path, ["q1", "q2"])
    path.write_bytes(path.read_bytes()[:-15])  # q2's entry cut mid-line, no newline
    b = _record(path, ["q2", "q3"], record_mode="append")  # starts a new line and segment
    with pytest.warns(RuntimeWarning, match=":3: skipping"):
        assert _replay(path, ["q1", "q2", "q3"]) == [a[0], b[0], b[1]]


def test_corrupt_middle_line_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "c.jsonl"
    _record(path, ["q1", "q2", "q3"])
    lines = path.read_text().splitlines()
    lines[2] = lines[2][:20]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(BackendError, match=r"c.jsonl:3: corrupt cassette line.*followed by"):
        ReplayBackend(path)
    for head in ('{"cassette": 1, "capabilities": "chat"}', '{"cassette": 1, "capabilities": '
                 '["chat"], "context_window": "big"}', '{"cassette": 2}'):
        path.write_text(head + "\n")
        with pytest.raises(BackendError, match=":1: not a jaxlm cassette"):
            ReplayBackend(path)
    path.write_text('{"not": "a header"}\n')
    with pytest.raises(BackendError, match="first line is not a header"):
        ReplayBackend(path)
    path.write_text('{"cassette": 1, "backend": "x", "capabilities": ["chat"]}\n[1]\n{"k": 1}\n')
    with pytest.raises(BackendError, match=r"corrupt cassette line"):
        ReplayBackend(path)


def test_deeply_nested_line_is_not_a_crash(tmp_path):
    path = tmp_path / "c.jsonl"
    _record(path, ["q1"])
    with open(path, "a") as f:
        f.write("[" * 100_000)
    with pytest.warns(RuntimeWarning, match="skipping"):
        assert _replay(path, ["q1"]) == ["reply to q1"]


_CHILD = textwrap.dedent("""
    import sys, time
    from jaxlm.llm import GenConfig, ReplayBackend, ScriptedBackend
    rec = ReplayBackend(sys.argv[1], inner=ScriptedBackend(default="ok " + "x" * 2000))
    for i in range(10_000):
        rec.chat([{"role": "user", "content": f"q{i}"}], GenConfig(max_tokens=4000))
        print(i, flush=True)
        time.sleep(0.01)
""")


def test_sigkill_mid_recording_loses_nothing_that_returned(tmp_path):
    path = tmp_path / "c.jsonl"
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    p = subprocess.Popen([sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE,
                         text=True, env=env)
    try:
        done = -1
        t0 = time.monotonic()
        while done < 20 and time.monotonic() - t0 < 60:
            line = p.stdout.readline()
            if not line:
                break
            done = int(line)
        p.send_signal(signal.SIGKILL)
    finally:
        p.kill()
        p.wait(timeout=30)
    assert done >= 20, "the recorder did not start"
    with warnings_ok():
        rep = ReplayBackend(path)
    # every call that returned (and printed) before the kill replays
    for i in range(done + 1):
        assert rep.chat([{"role": "user", "content": f"q{i}"}],
                        GenConfig(max_tokens=4000))[0].text.startswith("ok ")


class warnings_ok:  # noqa: N801 - the kill may or may not have cut a line
    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._cm.__exit__(*exc)


@pytest.mark.parametrize("response,msg", [
    ("abc", "non-empty list of objects"),
    ([], "non-empty list of objects"),
    ([{"text": 5, "finish_reason": "stop"}], "string 'text'"),
    ([{"text": "x", "finish_reason": "stop", "evil": 1}], "unknown completion fields"),
    ([{"text": "x", "finish_reason": "stop", "token_logprobs": ["NaN"]}], "finite numbers"),
])
def test_malformed_replayed_entries_are_clear_errors(tmp_path, response, msg):
    path = tmp_path / "c.jsonl"
    _record(path, ["q1"])
    lines = path.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["response"] = response
    path.write_text(lines[0] + "\n" + json.dumps(entry) + "\n")
    with pytest.raises(BackendError, match=rf"c.jsonl: the cassette entry for this chat "
                                           rf"request .* is malformed: .*{msg}"):
        _replay(path, ["q1"])


def test_malformed_score_entry(tmp_path):
    path = tmp_path / "c.jsonl"
    rec = ReplayBackend(path, inner=_inner())
    rec.score("prefix", ["a", "b"])
    lines = path.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["response"][0]["sum_logprob"] = "NaN"
    path.write_text(lines[0] + "\n" + json.dumps(entry) + "\n")
    with pytest.raises(BackendError, match="sum_logprob must be a finite number"):
        ReplayBackend(path).score("prefix", ["a", "b"])


class _Batched(ScriptedBackend):
    """A scripted backend with a batched ``complete_many`` that counts its calls."""

    def __init__(self):
        super().__init__(rules=[(r"(\d+)", lambda t: f"reply to {t}")])
        self.batches = 0

    def complete_many(self, prompts, cfg):
        self.batches += 1
        return [self.complete(p, cfg) for p in prompts]


def test_complete_many_records_one_batch_and_replays(tmp_path):
    path = tmp_path / "c.jsonl"
    inner = _Batched()
    rec = ReplayBackend(path, inner=inner)
    prompts = ["p1", "p2", "p1"]
    live = [c[0].text for c in rec.complete_many(prompts, CFG)]
    assert inner.batches == 1 and live == ["reply to p1", "reply to p2", "reply to p1"]
    assert len(path.read_text().splitlines()) == 1 + 3  # one entry per prompt
    rep = ReplayBackend(path)
    assert [c[0].text for c in rep.complete_many(prompts, CFG)] == live
    with pytest.raises(BackendError, match="no cassette entry"):
        rep.complete("p1", CFG)  # both recorded copies were consumed
