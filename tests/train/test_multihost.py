"""Multi-host: 2 processes x 1 CPU device with gloo collectives train the same run as one
process with 4 devices (same global batch, same losses), and write one checkpoint."""

import json
import pathlib
import socket
import subprocess
import sys

import pytest

from jaxlm.train.loop import train_and_evaluate
from jaxlm.train.presets import get_config

WORKER = pathlib.Path(__file__).with_name("multihost_worker.py")
ROOT = pathlib.Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_single_process(tmp_path):
    sys.path.insert(0, str(WORKER.parent))
    from multihost_worker import OVERRIDES

    cache = tmp_path / "cache"
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(i), str(port), str(tmp_path / "mh"), str(cache)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in range(2)
    ]
    outs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=240)
            outs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    results = []
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
        line = [x for x in out.splitlines() if x.startswith("RESULT ")]
        assert line, out[-3000:]
        results.append(json.loads(line[-1][7:]))
    assert {r["processes"] for r in results} == {2} and {r["devices"] for r in results} == {2}
    assert results[0]["losses"] == results[1]["losses"]
    ref = train_and_evaluate(get_config("tiny_test", OVERRIDES + [f"data.cache_dir={cache}"]),
                             tmp_path / "single", quiet=True)
    want = [r["loss"] for r in ref.history]
    assert results[0]["losses"] == pytest.approx(want, rel=1e-5)
    assert results[0]["eval"] == pytest.approx(ref.evals[-1]["loss"], rel=1e-5)
    assert (tmp_path / "mh" / "checkpoints" / "3").is_dir()
