"""A real pipeline baseline: the model split across stage processes over TCP (loopback).

GPipe schedule per step: all M micro-batches forward (stage s sends its boundary
activations to s+1), then all backward in the same order (gradients w.r.t. the boundary
go back to s-1); each stage averages its parameter gradients over the micro-batches and
applies its own AdamW update. Exact against one all-resident step on the full batch.

Activations travel as raw float32 bytes over one TCP connection per stage boundary.
``comm`` sets how a stage's sends relate to its compute:

* ``buffered`` (default): ``sendall`` returns once the message is in the kernel's socket
  buffer, so small messages overlap the next compute by accident of buffer size;
* ``blocking`` (no overlap): the receiver acknowledges every message once it has read it,
  and the sender computes on only then (compute, then communicate);
* ``overlap``: a sender thread puts messages on the wire in order while the stage computes
  the next micro-batch (it waits for its queue to drain before the optimizer step).

Each stage also reports its measured compute per call (forward, backward per micro-batch,
optimizer update), which the cost model (``netsim.gpipe_schedule_time``) takes as input.
``link_mbps`` emulates a slow link by sleeping ``bytes * 8 / link`` per message on top of
the real loopback transfer (a crude stand-in for ``tc`` shaping). With ``hosts`` (one IPv4
per stage) and ``launch_pipeline(..., prefixes=...)`` the stages run in their own network
namespaces over really shaped links (``jaxlm.offload.netns``, ``experiments/atom_netns.py``).
Worker entry::

    python -c "from jaxlm.offload.pipeline import stage_main; stage_main()" '<json spec>'
"""

from __future__ import annotations

import dataclasses
import json
import queue
import socket
import struct
import threading
import time
from typing import Any

import numpy as np

from jaxlm.offload.procs import emit_result, run_workers, spec_from_argv


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One pipeline stage process.

    Attributes:
        ports: one loopback port per stage boundary (len = stages - 1).
        stage: this stage's index; stage_cuts: cut points over ``stages.layer_names``
            giving ``stages`` contiguous stages.
        micro: micro-batches M per step; batch: sequences per micro-batch.
        link_mbps: emulated link bandwidth (0: no emulation).
        hosts: one IPv4 per stage (stage s listens on ``hosts[s]``); () = loopback.
        comm: ``buffered``, ``blocking`` (no overlap) or ``overlap`` (see the module doc).
    """

    ports: tuple[int, ...]
    stage: int
    stage_cuts: tuple[int, ...]
    preset: str = "gptj-tiny_test"
    overrides: tuple[str, ...] = ()
    steps: int = 2
    micro: int = 2
    batch: int = 2
    seq: int = 16
    lr: float = 1e-2
    seed: int = 0
    link_mbps: float = 0.0
    hosts: tuple[str, ...] = ()
    out: str = ""
    comm: str = "buffered"


COMM_MODES = ("buffered", "blocking", "overlap")


def _send(sock: socket.socket, arr: np.ndarray, link_mbps: float) -> int:
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    hdr = json.dumps(list(arr.shape)).encode()
    payload = arr.tobytes()
    sock.sendall(struct.pack("!II", len(hdr), len(payload)) + hdr + payload)
    if link_mbps > 0:
        time.sleep(len(payload) * 8 / (link_mbps * 1e6))
    return len(payload)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ConnectionError("pipeline peer closed the connection")
        buf.extend(chunk)
    return bytes(buf)


def _recv(sock: socket.socket, ack: bool = False) -> np.ndarray:
    hl, pl = struct.unpack("!II", _recv_exact(sock, 8))
    shape = json.loads(_recv_exact(sock, hl))
    out = np.frombuffer(_recv_exact(sock, pl), np.float32).reshape(shape)
    if ack:  # comm="blocking": the sender waits for this before it computes on
        sock.sendall(b"k")
    return out


class _Link:
    """A stage's outgoing messages in one of the ``COMM_MODES``."""

    def __init__(self, comm: str, link_mbps: float):
        if comm not in COMM_MODES:
            raise ValueError(f"StageSpec.comm must be one of {COMM_MODES}, got {comm!r}")
        self.comm, self.link_mbps, self.sent = comm, link_mbps, 0
        self._q: queue.Queue | None = None
        self._err: list[BaseException] = []
        if comm == "overlap":
            self._q = queue.Queue()
            threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            try:
                if item is not None and not self._err:
                    self.sent += _send(item[0], item[1], self.link_mbps)
            except BaseException as e:  # noqa: BLE001 -- re-raised by flush() in the stage
                self._err.append(e)
            finally:
                self._q.task_done()
            if item is None:
                return

    def send(self, sock: socket.socket, arr: np.ndarray) -> None:
        if self._q is not None:
            self._q.put((sock, np.ascontiguousarray(arr, dtype=np.float32)))
            return
        self.sent += _send(sock, arr, self.link_mbps)
        if self.comm == "blocking" and _recv_exact(sock, 1) != b"k":
            raise ConnectionError("pipeline: bad acknowledgement from the next stage")

    def flush(self) -> None:
        """Waits until every queued message is on the wire (overlap mode)."""
        if self._q is not None:
            self._q.join()
        if self._err:
            raise ConnectionError(f"pipeline sender thread failed: {self._err[0]!r}")

    def close(self) -> None:
        self.flush()
        if self._q is not None:
            self._q.put(None)


def _connect(port: int, timeout: float = 60.0, host: str = "127.0.0.1") -> socket.socket:
    delay, t_end = 0.05, time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection((host, port), timeout=timeout)
        except OSError:
            if time.monotonic() > t_end:
                raise ConnectionError(f"pipeline: cannot reach the next stage on {host}:{port} "
                                      f"after {timeout:.0f} s") from None
            time.sleep(delay)
            delay = min(delay * 2, 1.0)  # retry with backoff


def run_stage(spec: StageSpec) -> dict[str, Any]:
    """Runs one stage to completion (in its own process)."""
    import jax
    import optax

    from jaxlm.core import MODELS, init
    from jaxlm.offload import stages as stg
    from jaxlm.offload.peers import global_batches
    from jaxlm.utils.config import apply_overrides

    cfg = apply_overrides(MODELS.get(spec.preset), list(spec.overrides))
    n_stages = len(spec.stage_cuts) + 1
    sub = stg.make_submodels(cfg, spec.stage_cuts)[spec.stage]
    per = stg.split_params(init(jax.random.key(spec.seed), cfg), cfg)
    params = list(per[sub.start:sub.end])
    tx = optax.adamw(spec.lr, weight_decay=0.1)
    opt = tx.init(params)
    micro = spec.micro

    def _update(p, s, acc):  # the micro-batch mean of the summed gradients, then AdamW
        g = jax.tree.map(lambda a: a / micro, acc)
        u, s2 = tx.update(g, s, p)
        return optax.apply_updates(p, u), s2

    update = jax.jit(_update)
    accumulate = jax.jit(lambda a, b: jax.tree.map(lambda x, y: x + y, a, b))
    prev = nxt = None
    if spec.stage > 0:  # server side of the boundary to the previous stage
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((spec.hosts[spec.stage] if spec.hosts else "127.0.0.1",
                  spec.ports[spec.stage - 1]))
        srv.listen(1)
        srv.settimeout(120)
    if spec.stage < n_stages - 1:
        nxt = _connect(spec.ports[spec.stage],
                       host=spec.hosts[spec.stage + 1] if spec.hosts else "127.0.0.1")
    if spec.stage > 0:
        prev, _ = srv.accept()
        srv.close()
    rows = spec.micro * spec.batch
    batches = global_batches(cfg.vocab_size, spec.steps, rows, spec.seq, spec.seed)
    link = _Link(spec.comm, spec.link_mbps)
    ack = spec.comm == "blocking"
    losses, t_comm = [], 0.0
    t0 = time.perf_counter()
    step_times, t_fwd, t_bwd, t_upd, compute = [], [], [], [], []

    def timed(out: list, fn, *args, acc=None):
        """Runs ``fn(*args)`` (and, for a backward call, adds its parameter gradient into
        ``acc``), blocking, and appends the seconds to ``out``; returns (result, acc)."""
        tc = time.perf_counter()
        r = fn(*args)
        if acc is not False:  # backward: r = (..., param grads, boundary grad)
            gp = r[-2]
            acc = gp if acc is None else accumulate(acc, gp)
        r, acc = jax.block_until_ready((r, acc))
        out.append(time.perf_counter() - tc)
        return r, acc

    for gb in batches:
        ts = time.perf_counter()
        n_calls = (len(t_fwd), len(t_bwd), len(t_upd))
        mbs = [{k: v[m * spec.batch:(m + 1) * spec.batch] for k, v in gb.items()}
               for m in range(spec.micro)]
        xs = []
        for mb in mbs:  # forward
            x = None
            if prev is not None:
                tc = time.perf_counter()
                x = jax.numpy.asarray(_recv(prev, ack))
                t_comm += time.perf_counter() - tc
            xs.append(x)
            if nxt is not None:
                y, _ = timed(t_fwd, sub.fwd, params, x, mb, acc=False)
                tc = time.perf_counter()
                link.send(nxt, np.asarray(y))
                t_comm += time.perf_counter() - tc
        acc, step_loss = None, 0.0
        for m, mb in enumerate(mbs):  # backward
            if nxt is None:
                (loss, _, gx), acc = timed(t_bwd, sub.loss_bwd, params, xs[m], mb, acc=acc)
                step_loss += float(loss) / spec.micro
            else:
                tc = time.perf_counter()
                g = jax.numpy.asarray(_recv(nxt, ack))
                t_comm += time.perf_counter() - tc
                (_, gx), acc = timed(t_bwd, sub.fwd_bwd, params, xs[m], g, mb, acc=acc)
            if prev is not None:
                tc = time.perf_counter()
                link.send(prev, np.asarray(gx))
                t_comm += time.perf_counter() - tc
        tc = time.perf_counter()
        link.flush()
        t_comm += time.perf_counter() - tc
        (params, opt), _ = timed(t_upd, update, params, opt, acc, acc=False)
        losses.append(step_loss)
        step_times.append(time.perf_counter() - ts)
        compute.append(sum(sum(calls[i:]) for calls, i in zip((t_fwd, t_bwd, t_upd), n_calls)))
    jax.block_until_ready(params)
    wall = time.perf_counter() - t0
    link.close()
    for s in (prev, nxt):
        if s is not None:
            s.close()
    if spec.out:
        flat = {f"{sub.start + i}/{jax.tree_util.keystr(p)}": np.asarray(x)
                for i, lp in enumerate(params)
                for p, x in jax.tree_util.tree_leaves_with_path(lp)}
        np.savez(spec.out, **flat)
    def med(xs: list[float], skip: int) -> float:  # steady state: past the compiling calls
        return float(np.median(xs[skip:] or xs)) if xs else 0.0

    m_n = spec.micro
    return {"stage": spec.stage, "losses": losses if nxt is None else [], "wall_s": wall,
            "comm_s": t_comm, "bytes_sent": link.sent, "comm": spec.comm,
            "median_step_s": med(step_times, 1), "median_compute_s": med(compute, 1),
            "fwd_s": med(t_fwd, m_n), "bwd_s": med(t_bwd, m_n), "update_s": med(t_upd, 1)}


def stage_main() -> None:
    """Process entry: ``argv[1]`` is a JSON ``StageSpec``."""
    from jaxlm.utils.lifeline import bind_to_parent

    bind_to_parent()  # dies when the launcher dies
    emit_result("STAGE_RESULT", run_stage(spec_from_argv(StageSpec)))


def launch_pipeline(spec: StageSpec, *, timeout: float = 240.0,
                    prefixes: list[list[str]] | None = None) -> list[dict[str, Any]]:
    """Starts one process per stage and waits; kills all on any failure.

    On loopback by default; with ``spec.hosts`` and ``prefixes`` (one command prefix per stage,
    e.g. ``Topology.exec_prefix(s)``) each stage runs in its own network namespace.
    """
    n = len(spec.stage_cuts) + 1
    if spec.comm not in COMM_MODES:
        raise ValueError(f"StageSpec.comm must be one of {COMM_MODES}, got {spec.comm!r}")
    if spec.hosts and len(spec.hosts) != n:
        raise ValueError(f"hosts needs one address per stage ({n}), got {len(spec.hosts)}")
    ports = []
    for s_i in range(n - 1):
        if spec.hosts:  # fresh namespaces: any port is free
            ports.append(29500 + s_i)
            continue
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    specs = [dataclasses.replace(spec, ports=tuple(ports), stage=st,
                                 out=f"{spec.out}.{st}.npz" if spec.out else "")
             for st in range(n)]
    return run_workers("jaxlm.offload.pipeline:stage_main", specs, tag="STAGE_RESULT",
                       what="stage", timeout=timeout, prefixes=prefixes)
