"""Peers in their own Linux network namespaces, joined through a bridge by ``tc``-shaped veths.

Layout (``Topology(n, rate_mbit, delay_ms)``)::

    netns <p>n0 (10.77.0.1/24, eth0) --veth--+
    netns <p>n1 (10.77.0.2/24, eth0) --veth--+-- bridge br0 in netns <p>hub
    ...                                      +

Each link is shaped in both directions with a token bucket (``tc qdisc tbf``: the peer's
``eth0`` egress and the hub end's egress towards the peer), so every peer has a full-duplex
link of ``rate_mbit``; ``delay_ms > 0`` adds a ``netem`` delay (needs the ``sch_netem`` kernel
module). Processes run inside a namespace through ``exec_prefix(i)`` (``ip netns exec``).

Everything this module creates is named with ``PREFIX`` (namespaces; veths before they move)
and is removed by ``Topology.close`` (also on errors during setup) and by ``cleanup()``,
which deletes leftovers of earlier crashed runs by prefix. Requires Linux, root
(CAP_NET_ADMIN), iproute2 (``ip``) and ``tc``: ``check_support()`` names what is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

PREFIX = "jxn"  # every namespace / veth this module creates starts with this


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be used here (the message names what is missing)."""


def _run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed ({r.returncode}): {r.stderr.strip()}")
    return r


def check_support() -> None:
    """Raises ``NetnsUnavailable`` naming what is missing (OS, root, ip, tc, netns, veth)."""
    if not sys.platform.startswith("linux"):
        raise NetnsUnavailable(f"network namespaces need Linux (this is {sys.platform})")
    if os.geteuid() != 0:
        raise NetnsUnavailable("network namespaces need root (CAP_NET_ADMIN); run as root")
    for tool, pkg in (("ip", "iproute2"), ("tc", "iproute2 (tc)")):
        if shutil.which(tool) is None:
            raise NetnsUnavailable(f"`{tool}` not found on PATH: install {pkg}")
    name = f"{PREFIX}chk{os.getpid() % 100000}"
    r = _run(["ip", "netns", "add", name], check=False)
    if r.returncode != 0:
        raise NetnsUnavailable(f"`ip netns add` failed (network namespaces unsupported or not "
                               f"permitted here): {r.stderr.strip()}")
    try:
        va, vb = f"{name}a", f"{name}b"
        r = _run(["ip", "link", "add", va, "type", "veth", "peer", "name", vb], check=False)
        if r.returncode != 0:
            raise NetnsUnavailable(f"cannot create a veth pair: {r.stderr.strip()}")
        _run(["ip", "link", "del", va], check=False)
    finally:
        _run(["ip", "netns", "del", name], check=False)


def leftovers(prefix: str = PREFIX) -> tuple[list[str], list[str]]:
    """(namespaces, root-namespace links) whose names start with ``prefix``."""
    ns = [ln.split()[0] for ln in _run(["ip", "netns", "list"], check=False).stdout.splitlines()
          if ln.strip().startswith(prefix)]
    links = []
    for ln in _run(["ip", "-o", "link", "show"], check=False).stdout.splitlines():
        parts = ln.split(":")
        if len(parts) > 1:
            name = parts[1].strip().split("@")[0]
            if name.startswith(prefix):
                links.append(name)
    return ns, links


def cleanup(prefix: str = PREFIX) -> int:
    """Deletes every namespace and root-namespace link named ``prefix*`` (crashed runs).

    Processes still running inside such a namespace keep it alive until they exit (the
    name is removed at once). Returns the number of objects deleted.
    """
    ns, links = leftovers(prefix)
    for n in ns:
        _run(["ip", "netns", "del", n], check=False)
    for link in links:
        _run(["ip", "link", "del", link], check=False)
    return len(ns) + len(links)


def _shape_cmds(dev: str, rate_mbit: float | None, delay_ms: float) -> list[list[str]]:
    """``tc`` commands (without the netns part) shaping ``dev``'s egress."""
    cmds = [["tc", "qdisc", "del", "dev", dev, "root"]]
    tbf = []
    if rate_mbit:
        rate_bytes = rate_mbit * 1e6 / 8
        burst = int(max(16 * 1024, rate_bytes / 100))  # 10 ms of traffic (>= rate / HZ)
        tbf = ["tbf", "rate", f"{rate_mbit}mbit", "burst", str(burst), "latency", "100ms"]
    if delay_ms > 0:
        cmds.append(["tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "netem",
                     "delay", f"{delay_ms}ms"])
        if tbf:
            cmds.append(["tc", "qdisc", "add", "dev", dev, "parent", "1:", "handle", "2:", *tbf])
    elif tbf:
        cmds.append(["tc", "qdisc", "add", "dev", dev, "root", *tbf])
    return cmds


class Topology:
    """``n`` peer namespaces on one shaped bridge (a context manager; always cleans up).

    Args:
        n: peers (2-16).
        rate_mbit: per-link rate in Mbit/s in each direction (None: unshaped veth).
        delay_ms: one-way delay added on each egress (netem; 0: none).
        subnet: the first three octets of the peers' /24 (peer i is ``<subnet>.<i+1>``).
        tag: a short name part (default: derived from the pid) so parallel runs don't clash.
    """

    def __init__(self, n: int, rate_mbit: float | None = None, delay_ms: float = 0.0,
                 subnet: str = "10.77.0", tag: str | None = None):
        if not 2 <= n <= 16:
            raise ValueError(f"Topology needs 2..16 peers, got {n}")
        if rate_mbit is not None and rate_mbit <= 0:
            raise ValueError(f"rate_mbit must be > 0 or None, got {rate_mbit}")
        if delay_ms < 0:
            raise ValueError(f"delay_ms must be >= 0, got {delay_ms}")
        self.n, self.rate_mbit, self.delay_ms, self.subnet = n, rate_mbit, delay_ms, subnet
        tag = tag or f"{os.getpid() % 10000}"
        self.base = f"{PREFIX}{tag}"
        if len(self.base) + 4 > 15:
            raise ValueError(f"tag {tag!r} too long (interface names are <= 15 characters)")
        self.hub = f"{self.base}hub"
        self.ns = [f"{self.base}n{i}" for i in range(n)]
        self.ips = [f"{subnet}.{i + 1}" for i in range(n)]
        self._up = False
        self._kids = None

    # -- lifecycle
    def __enter__(self) -> Topology:
        from jaxlm.utils.lifeline import Children

        check_support()
        # SIGTERM/SIGINT/SIGHUP kill this topology's programs and unwind, so close() runs
        self._kids = Children().__enter__()
        try:
            self._build()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self._kids is not None:
                self._kids.kill_all()
            self.close()
        finally:
            if self._kids is not None:
                self._kids.__exit__(None, None, None)
                self._kids = None

    def _build(self) -> None:
        self._up = True
        for name in [self.hub, *self.ns]:
            _run(["ip", "netns", "add", name])
            _run(["ip", "-n", name, "link", "set", "lo", "up"])
        _run(["ip", "-n", self.hub, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", self.hub, "link", "set", "br0", "up"])
        for i, ns in enumerate(self.ns):
            a, b = f"{self.base}a{i}", f"{self.base}b{i}"
            _run(["ip", "link", "add", a, "type", "veth", "peer", "name", b])
            _run(["ip", "link", "set", a, "netns", self.hub])
            _run(["ip", "link", "set", b, "netns", ns])
            _run(["ip", "-n", ns, "link", "set", b, "name", "eth0"])
            _run(["ip", "-n", ns, "addr", "add", f"{self.ips[i]}/24", "dev", "eth0"])
            _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            _run(["ip", "-n", self.hub, "link", "set", a, "master", "br0"])
            _run(["ip", "-n", self.hub, "link", "set", a, "up"])
        self.shape(self.rate_mbit, self.delay_ms)

    def shape(self, rate_mbit: float | None, delay_ms: float = 0.0) -> None:
        """(Re)applies the per-link rate and delay on every link, both directions."""
        for i, ns in enumerate(self.ns):
            for where, dev in ((ns, "eth0"), (self.hub, f"{self.base}a{i}")):
                for j, cmd in enumerate(_shape_cmds(dev, rate_mbit, delay_ms)):
                    r = _run(["ip", "netns", "exec", where, *cmd], check=False)
                    if j > 0 and r.returncode != 0:  # (the first one deletes; may find none)
                        kind = "netem" if "netem" in cmd else "tbf"
                        raise NetnsUnavailable(
                            f"tc qdisc {kind} failed on {dev} ({r.stderr.strip()}); "
                            + ("the sch_netem kernel module is missing: use delay_ms=0"
                               if kind == "netem" else "is the sch_tbf module available?"))
        self.rate_mbit, self.delay_ms = rate_mbit, delay_ms

    def close(self) -> None:
        """Deletes this topology's namespaces (their veths and the bridge go with them)."""
        if not self._up:
            return
        for name in [*self.ns, self.hub]:
            _run(["ip", "netns", "del", name], check=False)
        for i in range(self.n):  # veths not yet moved when setup failed
            _run(["ip", "link", "del", f"{self.base}a{i}"], check=False)
        self._up = False

    # -- use
    def exec_prefix(self, i: int) -> list[str]:
        """Command prefix running a program inside peer ``i``'s namespace."""
        return ["ip", "netns", "exec", self.ns[i]]

    def spawn(self, i: int, cmd: list[str], **popen_kw) -> subprocess.Popen:
        """Starts ``cmd`` in peer ``i``'s namespace, in its own process group; it is killed
        when the topology closes or this process gets SIGTERM/SIGINT/SIGHUP (a Python worker
        that calls ``jaxlm.utils.lifeline.bind_to_parent`` also dies with this process)."""
        if self._kids is None:
            raise RuntimeError("Topology.spawn needs an open topology (use `with Topology(...)`)")
        return self._kids.spawn([*self.exec_prefix(i), *cmd], **popen_kw)

    def run(self, i: int, cmd: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess:
        return subprocess.run([*self.exec_prefix(i), *cmd], capture_output=True, text=True,
                              timeout=timeout)


_SINK = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1)
print("ready", flush=True)
c, _ = s.accept(); n = 0
while True:
    b = c.recv(1 << 20)
    if not b: break
    n += len(b)
c.sendall(b"k"); c.close(); print(n, flush=True)
"""

_SOURCE = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
buf = b"x" * int(sys.argv[3]); t0 = time.perf_counter()
s.sendall(buf); s.shutdown(socket.SHUT_WR); s.recv(1)
print(time.perf_counter() - t0, flush=True)
"""


_BIND = "from jaxlm.utils.lifeline import bind_to_parent; bind_to_parent()\n"


def measure_transfer(topo: Topology, src: int, dst: int, nbytes: int, port: int = 29399
                     ) -> float:
    """Seconds to send ``nbytes`` over TCP from peer ``src`` to peer ``dst`` (acknowledged)."""
    sink = topo.spawn(dst, [sys.executable, "-c", _BIND + _SINK, topo.ips[dst], str(port)],
                      stdout=subprocess.PIPE, text=True)
    try:
        if sink.stdout.readline().strip() != "ready":
            raise RuntimeError("transfer sink did not start")
        r = topo.run(src, [sys.executable, "-c", _SOURCE, topo.ips[dst], str(port),
                           str(nbytes)])
        if r.returncode != 0:
            raise RuntimeError(f"transfer source failed: {r.stderr[-1000:]}")
        got = int(sink.communicate(timeout=30)[0].strip())
        if got != nbytes:
            raise RuntimeError(f"sink received {got} of {nbytes} bytes")
        return float(r.stdout.strip())
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()


def wait_gone(names: list[str], timeout: float = 5.0) -> bool:
    """True once none of ``names`` is listed by ``ip netns list``."""
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        ns, _ = leftovers(PREFIX)
        if not set(ns) & set(names):
            return True
        time.sleep(0.1)
    return False


# ------------------------------------------------------------------ measured points
def atom_point(topo: Topology | None, workdir: str, *, steps: int = 25, batch: int = 8,
               seq: int = 32, period: int = 4, overrides: tuple[str, ...] = ("n_layers=2",),
               matchmaking_s: float = 0.5, timeout: float = 240.0) -> dict:
    """Atom-style data-parallel peers (``hive`` local SGD, averaging every ``period`` steps),
    one per namespace of ``topo`` (or on loopback when None). Tokens/s of all peers together
    over the window in which every peer is past its first (compiling) step and not finished.

    Returns:
        {tokens_per_s, window_s, n_rounds_per_peer, round_s (median), compute_s_per_step
         (median step interval), sync_fraction (time in rounds / window), group_sizes, peers,
         period, batch, seq, raw (per-peer step end times and round logs)}.
    """
    from jaxlm.offload import hive

    n = topo.n if topo is not None else 2
    os.makedirs(workdir, exist_ok=True)
    base = hive.HivePeerSpec(peer_id=0, rendezvous=os.path.join(workdir, "rdv.json"),
                             overrides=overrides, steps=steps, period=period, batch=batch,
                             seq=seq, group_size=n, matchmaking_s=matchmaking_s,
                             averaging_timeout_s=30.0)
    per = {i: {"host_ip": topo.ips[i]} for i in range(n)} if topo is not None else {}
    pre = {i: topo.exec_prefix(i) for i in range(n)} if topo is not None else {}
    res = hive.launch_hive(base, n, per_peer=per, prefix_cmds=pre, timeout=timeout,
                           workdir=workdir)
    import numpy as np

    # the common window in which every peer is past its first (compiling) step
    t0 = max(r["step_end_t"][0] for r in res)
    t1 = min(r["step_end_t"][-1] for r in res)
    tokens = sum(sum(1 for t in r["step_end_t"] if t0 < t <= t1) for r in res) * batch * seq
    rounds = [e for r in res for e in r["round_log"] if t0 < e["t_end"] <= t1]
    gaps = np.concatenate([np.diff(r["step_end_t"]) for r in res])
    window = t1 - t0
    # the median round: the first one also holds the wait for peers still compiling
    round_s = float(np.median([e["s"] for e in rounds])) if rounds else 0.0
    in_window = sum(min(e["s"], e["t_end"] - t0) for e in rounds)
    return {"tokens_per_s": tokens / window if window > 0 else float("nan"),
            "window_s": window, "n_rounds_per_peer": len(rounds) / n, "round_s": round_s,
            # a step interval without a round is compute (+ DHT progress bookkeeping)
            "compute_s_per_step": float(np.median(gaps)),
            "sync_fraction": in_window / n / window if window > 0 else 0.0,
            "group_sizes": [r["group_sizes"] for r in res], "peers": n, "period": period,
            "batch": batch, "seq": seq,
            "raw": [{k: r[k] for k in ("step_end_t", "round_log")} for r in res]}


def pipeline_point(topo: Topology | None, *, steps: int = 8, micro: int = 4, batch: int = 4,
                   seq: int = 32, overrides: tuple[str, ...] = ("n_layers=2",),
                   comm: str = "buffered", timeout: float = 240.0) -> dict:
    """The GPipe baseline with one stage per namespace of ``topo`` (loopback when None).

    ``comm``: ``jaxlm.offload.pipeline`` send mode (blocking = no overlap, overlap = a sender
    thread, buffered = plain kernel-buffered sends).

    Returns:
        {tokens_per_s, median_step_s, bytes_per_step, act_bytes, stages, micro, batch, seq,
         comm, fwd_s, bwd_s, update_s (per stage, median seconds per call), compute_s (per
         stage, median compute seconds per step)}.
    """
    from jaxlm.core import MODELS
    from jaxlm.offload import pipeline
    from jaxlm.utils.config import apply_overrides

    n = topo.n if topo is not None else 2
    cfg = apply_overrides(MODELS.get("gptj-tiny_test"), list(overrides))
    layers = cfg.n_layers + 2
    cuts = tuple(round(layers * i / n) for i in range(1, n))
    spec = pipeline.StageSpec((), 0, cuts, "gptj-tiny_test", tuple(overrides), steps, micro,
                              batch, seq, hosts=tuple(topo.ips) if topo is not None else (),
                              comm=comm)
    res = pipeline.launch_pipeline(
        spec, timeout=timeout,
        prefixes=[topo.exec_prefix(i) for i in range(n)] if topo is not None else None)
    res = sorted(res, key=lambda r: r["stage"])
    step_s = max(r["median_step_s"] for r in res)
    return {"tokens_per_s": micro * batch * seq / step_s, "median_step_s": step_s,
            "bytes_per_step": res[0]["bytes_sent"] / steps,
            "act_bytes": batch * seq * cfg.d_model * 4, "stages": n, "micro": micro,
            "batch": batch, "seq": seq, "comm": comm,
            "fwd_s": [r["fwd_s"] for r in res], "bwd_s": [r["bwd_s"] for r in res],
            "update_s": [r["update_s"] for r in res],
            "compute_s": [r["median_compute_s"] for r in res]}
