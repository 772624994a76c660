"""Workers die with their launcher (issue 20, class 3).

Each test starts a launcher in a subprocess, waits until its workers are up, records
every descendant by walking /proc (pid + start time, so a reused pid is not mistaken
for a survivor), signals the launcher, and asserts that none of the recorded processes
is left a few seconds later. Whatever is left is SIGKILLed by pid at the end, so a
failing test does not leave processes behind either.
"""

import importlib.util
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="walks /proc and uses prctl(PR_SET_PDEATHSIG): Linux only")


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(ppid, start time, state) of ``pid`` from /proc, or None when it is gone."""
    try:
        raw = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    rest = raw[raw.rindex(")") + 2:].split()
    return int(rest[1]), int(rest[19]), rest[0]


def _cmdline(pid: int) -> str:
    try:
        return pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def descendants(root: int) -> dict[int, tuple[int, str]]:
    """``{pid: (start time, command line)}`` of every live descendant of ``root``."""
    children: dict[int, list[int]] = {}
    info = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        st = _stat(int(d))
        if st is None or st[2] in "ZX":
            continue
        children.setdefault(st[0], []).append(int(d))
        info[int(d)] = st
    out, todo = {}, [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out[c] = (info[c][1], _cmdline(c))
            todo.append(c)
    return out


def alive(recorded: dict[int, tuple[int, str]]) -> dict[int, str]:
    """The recorded processes still running (zombies count as gone)."""
    left = {}
    for pid, (start, cmd) in recorded.items():
        st = _stat(pid)
        if st is not None and st[1] == start and st[2] not in "ZX":
            left[pid] = cmd
    return left


def _wait_gone(recorded, timeout: float) -> dict[int, str]:
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        left = alive(recorded)
        if not left:
            return {}
        time.sleep(0.1)
    return alive(recorded)


def _reap_leftovers(recorded) -> None:
    """SIGKILLs what is left of ``recorded``, the processes they started since, and the
    process groups they lead (a failing test must not leave its workers running)."""
    left = set(alive(recorded))
    for pid in list(left):
        left |= set(descendants(pid))
    for pid in left:
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _default_signals() -> None:
    """Runs in the launcher child before exec: SIGHUP/SIGINT back to their defaults.

    A launcher started under ``nohup`` or as a background job inherits SIGHUP/SIGINT
    ignored, and ``Children`` rightly keeps an inherited "ignore"; the tests model a
    launcher in a terminal session, where both signals are live."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    return env


# A launcher that starts two workers through ``Children``; each worker binds to it and
# forks a grandchild (``sleep``) that shares the worker's process group.
_LAUNCHER = textwrap.dedent("""
    import subprocess, sys, time
    from jaxlm.utils.lifeline import Children
    worker = ("from jaxlm.utils.lifeline import bind_to_parent; bind_to_parent(); "
              "import subprocess, time; subprocess.Popen(['sleep', '300']); time.sleep(300)")
    with Children() as kids:
        for _ in range(2):
            kids.spawn([sys.executable, "-c", worker])
        print("started", flush=True)
        time.sleep(300)
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGKILL])
def test_workers_and_their_children_die_with_the_launcher(sig):
    launcher = subprocess.Popen([sys.executable, "-c", _LAUNCHER], cwd=ROOT, env=_env(),
                                preexec_fn=_default_signals,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    recorded: dict = {}
    try:
        assert launcher.stdout.readline().strip() == "started"
        t_end = time.monotonic() + 30
        while time.monotonic() < t_end:  # 2 workers + 2 sleeps
            recorded = descendants(launcher.pid)
            if sum("sleep 300" in c for _, c in recorded.values()) == 2:
                break
            time.sleep(0.05)
        assert sum("sleep 300" in c for _, c in recorded.values()) == 2, recorded
        assert len(recorded) == 4
        launcher.send_signal(sig)
        rc = launcher.wait(timeout=60)  # a liveness bound, generous for a loaded machine
        assert rc != 0
        if sig == signal.SIGTERM:
            assert rc == 128 + signal.SIGTERM  # unwound (finally blocks ran), not just killed
        left = _wait_gone(recorded, timeout=10)
        assert not left, f"left running after {sig.name}: {left}"
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        _reap_leftovers(recorded)


def test_bind_to_parent_is_a_no_op_without_a_launcher(monkeypatch):
    from jaxlm.utils import lifeline

    monkeypatch.delenv(lifeline.PARENT_ENV, raising=False)
    assert lifeline.bind_to_parent() is False


@pytest.mark.skipif(importlib.util.find_spec("hivemind") is None,
                    reason="needs the `decentralized` extra (hivemind)")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_atom_hive_peers_and_p2pd_die_with_the_launcher(sig, tmp_path):
    """``atom_train --mode=hive``: the peers, their DHT processes and p2pd daemons all go.

    Up = each of the 2 peers has a p2pd daemon among its descendants (the DHT is running);
    no training step is needed for that, which keeps this test to ~15-25 s per signal.
    """
    wd = tmp_path / "hive"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "experiments.atom_train", "--mode=hive", "--peers=2",
         "--steps=1000", "--batch=2", "--seq=16", f"--workdir={wd}"],
        cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        preexec_fn=_default_signals)
    recorded: dict = {}
    try:
        t_end = time.monotonic() + 120
        up = False
        while time.monotonic() < t_end and launcher.poll() is None:
            recorded = descendants(launcher.pid)
            peers = [p for p, (_, c) in recorded.items() if "hive_main" in c
                     and _stat(p) is not None and _stat(p)[0] == launcher.pid]
            p2pd = [p for p, (_, c) in recorded.items() if "p2pd" in c]
            if len(peers) == 2 and len(p2pd) >= 2:
                up = True
                break
            time.sleep(0.2)
        assert up, (launcher.poll(), recorded,
                    launcher.stderr.read()[-2000:] if launcher.poll() is not None else "")
        time.sleep(0.5)
        recorded = {**recorded, **descendants(launcher.pid)}
        launcher.send_signal(sig)
        launcher.wait(timeout=60)
        left = _wait_gone(recorded, timeout=10)
        assert not left, f"left running after {sig.name}: {left}"
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        _reap_leftovers(recorded)


def _netns_missing() -> str | None:
    from jaxlm.offload import netns

    try:
        netns.check_support()
    except netns.NetnsUnavailable as e:
        return str(e)
    return None


_NETNS_LAUNCHER = textwrap.dedent("""
    import sys, time
    from jaxlm.offload import netns
    worker = ("from jaxlm.utils.lifeline import bind_to_parent; bind_to_parent(); "
              "import subprocess, time; subprocess.Popen(['sleep', '300']); time.sleep(300)")
    with netns.Topology(2, tag=sys.argv[1]) as topo:
        for i in range(2):
            topo.spawn(i, [sys.executable, "-c", worker])
        print(" ".join([*topo.ns, topo.hub]), flush=True)
        time.sleep(300)
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_netns_launcher_kills_workers_and_removes_namespaces(sig):
    why = _netns_missing()
    if why is not None:
        pytest.skip(f"netns unavailable: {why}")
    from jaxlm.offload import netns

    tag = f"k{os.getpid() % 1000}"
    launcher = subprocess.Popen([sys.executable, "-c", _NETNS_LAUNCHER, tag], cwd=ROOT,
                                env=_env(), preexec_fn=_default_signals,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    recorded: dict = {}
    try:
        names = launcher.stdout.readline().split()
        assert len(names) == 3, launcher.stderr.read()[-2000:] if launcher.poll() else names
        t_end = time.monotonic() + 30
        while time.monotonic() < t_end:
            recorded = descendants(launcher.pid)
            if sum("sleep 300" in c for _, c in recorded.values()) == 2:
                break
            time.sleep(0.05)
        assert sum("sleep 300" in c for _, c in recorded.values()) == 2, recorded
        launcher.send_signal(sig)
        assert launcher.wait(timeout=60) == 128 + sig
        assert not _wait_gone(recorded, timeout=10)
        assert not set(names) & set(netns.leftovers()[0])  # Topology.close() ran
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        _reap_leftovers(recorded)
        netns.cleanup(f"{netns.PREFIX}{tag}")
