"""Asynchronous hivemind peers (optional extra): a peer killed mid-run does not stop the rest."""

import os
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


def _procs_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains ``text`` (Linux /proc; empty elsewhere)."""
    pids = []
    for d in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        pids.append(int(d))
            except OSError:
                pass
    return pids


@pytest.mark.slow
def test_kill_one_of_three_peers(tmp_path):
    base = hive.HivePeerSpec(peer_id=0, rendezvous=str(tmp_path / "rdv.json"),
                             overrides=("n_layers=2",), steps=12, period=3, group_size=3,
                             matchmaking_s=1.5, averaging_timeout_s=15.0)
    # peer 2 is SIGKILLed once it has done 5 steps
    results = hive.launch_hive(base, 3, kill_peer=2, kill_at=5, timeout=200,
                               workdir=str(tmp_path))
    assert len(results) == 2
    for r in results:
        assert len(r["losses"]) == base.steps  # the survivors finished
        assert r["rounds"] >= 1  # and averaged with someone
        assert r["losses"][-1] < r["losses"][0]
    # nothing is left behind: the killed peer's forked DHT process included (its p2pd daemon
    # shares the process group that launch_hive kills)
    time.sleep(0.5)
    assert _procs_mentioning(str(tmp_path / "rdv.json")) == []


def test_unreachable_dht_clear_error():
    # in a child process: hivemind forks daemons and must not live in the pytest process
    code = ("from jaxlm.offload.hive import start_dht; start_dht(['/ip4/127.0.0.1/tcp/9/p2p/"
            "12D3KooWHyQqSF677CwTxGkm4ZskUnH8BS5DL7KpPtYfLA3qAedR'], retries=2, backoff=0.1)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "ConnectionError: cannot reach the DHT" in r.stderr, r.stderr[-2000:]
