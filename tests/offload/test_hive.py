"""Asynchronous hivemind peers (optional extra): a peer killed mid-run does not stop the rest."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import importlib.util

import pytest

# Checked without importing: hivemind forks helper processes on import, which must never
# happen inside the pytest process (only the peer subprocesses import it).
if importlib.util.find_spec("hivemind") is None:
    pytest.skip("needs the `decentralized` extra (hivemind)", allow_module_level=True)

from jaxlm.offload import hive  # noqa: E402


@pytest.mark.slow
def test_kill_one_of_three_peers(tmp_path):
    base = hive.HivePeerSpec(peer_id=0, rendezvous=str(tmp_path / "rdv.json"),
                             overrides=("n_layers=2",), steps=12, period=3, group_size=3,
                             matchmaking_s=1.5, averaging_timeout_s=15.0)
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    procs = []
    try:
        for p in range(3):
            d = dataclasses.asdict(dataclasses.replace(
                base, peer_id=p, progress=str(tmp_path / f"prog{p}.txt")))
            procs.append(subprocess.Popen(
                [sys.executable, "-c", "from jaxlm.offload.hive import hive_main; hive_main()",
                 json.dumps(d)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                env=env))
        prog = tmp_path / "prog2.txt"
        t_end = time.monotonic() + 200
        while time.monotonic() < t_end:  # kill peer 2 once it has done 5 steps
            if prog.exists() and len(prog.read_text().splitlines()) >= 5:
                break
            time.sleep(0.2)
        procs[2].send_signal(signal.SIGKILL)
        procs[2].wait()
        results = []
        for pr in procs[:2]:
            out, err = pr.communicate(timeout=max(t_end - time.monotonic(), 5))
            assert pr.returncode == 0, err[-2000:]
            line = [ln for ln in out.splitlines() if ln.startswith("HIVE_RESULT ")][-1]
            results.append(json.loads(line[len("HIVE_RESULT "):]))
    finally:
        for pr in procs:
            if pr.poll() is None:
                pr.kill()
                pr.wait()
    for r in results:
        assert len(r["losses"]) == base.steps  # the survivors finished
        assert r["rounds"] >= 1  # and averaged with someone
        assert r["losses"][-1] < r["losses"][0]


def test_unreachable_dht_clear_error():
    # in a child process: hivemind forks daemons and must not live in the pytest process
    code = ("from jaxlm.offload.hive import start_dht; start_dht(['/ip4/127.0.0.1/tcp/9/p2p/"
            "12D3KooWHyQqSF677CwTxGkm4ZskUnH8BS5DL7KpPtYfLA3qAedR'], retries=2, backoff=0.1)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "ConnectionError: cannot reach the DHT" in r.stderr, r.stderr[-2000:]
