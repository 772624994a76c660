"""A real pipeline baseline: the model split across stage processes over TCP (loopback).

GPipe schedule per step: all M micro-batches forward (stage s sends its boundary
activations to s+1), then all backward in the same order (gradients w.r.t. the boundary
go back to s-1); each stage averages its parameter gradients over the micro-batches and
applies its own AdamW update. Exact against one all-resident step on the full batch.

Activations travel as raw float32 bytes over one TCP connection per stage boundary.
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
import socket
import struct
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


def _recv(sock: socket.socket) -> np.ndarray:
    hl, pl = struct.unpack("!II", _recv_exact(sock, 8))
    shape = json.loads(_recv_exact(sock, hl))
    return np.frombuffer(_recv_exact(sock, pl), np.float32).reshape(shape)


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
    update = jax.jit(lambda p, s, g: (lambda u, s2: (optax.apply_updates(p, u), s2))(
        *tx.update(g, s, p)))
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
    losses, sent, t_comm = [], 0, 0.0
    t0 = time.perf_counter()
    step_times = []
    for gb in batches:
        ts = time.perf_counter()
        mbs = [{k: v[m * spec.batch:(m + 1) * spec.batch] for k, v in gb.items()}
               for m in range(spec.micro)]
        xs = []
        for mb in mbs:  # forward
            x = None
            if prev is not None:
                tc = time.perf_counter()
                x = jax.numpy.asarray(_recv(prev))
                t_comm += time.perf_counter() - tc
            xs.append(x)
            if nxt is not None:
                y = sub.fwd(params, x, mb)
                tc = time.perf_counter()
                sent += _send(nxt, np.asarray(y), spec.link_mbps)
                t_comm += time.perf_counter() - tc
        acc, step_loss = None, 0.0
        for m, mb in enumerate(mbs):  # backward
            if nxt is None:
                loss, gp, gx = sub.loss_bwd(params, xs[m], mb)
                step_loss += float(loss) / spec.micro
            else:
                tc = time.perf_counter()
                g = jax.numpy.asarray(_recv(nxt))
                t_comm += time.perf_counter() - tc
                gp, gx = sub.fwd_bwd(params, xs[m], g, mb)
            if prev is not None:
                tc = time.perf_counter()
                sent += _send(prev, np.asarray(gx), spec.link_mbps)
                t_comm += time.perf_counter() - tc
            acc = gp if acc is None else jax.tree.map(lambda a, b: a + b, acc, gp)
        grads = jax.tree.map(lambda a: a / spec.micro, acc)
        params, opt = update(params, opt, grads)
        losses.append(step_loss)
        jax.block_until_ready(params)
        step_times.append(time.perf_counter() - ts)
    jax.block_until_ready(params)
    wall = time.perf_counter() - t0
    for s in (prev, nxt):
        if s is not None:
            s.close()
    if spec.out:
        flat = {f"{sub.start + i}/{jax.tree_util.keystr(p)}": np.asarray(x)
                for i, lp in enumerate(params)
                for p, x in jax.tree_util.tree_leaves_with_path(lp)}
        np.savez(spec.out, **flat)
    return {"stage": spec.stage, "losses": losses if nxt is None else [], "wall_s": wall,
            "comm_s": t_comm, "bytes_sent": sent,
            "median_step_s": float(np.median(step_times[1:] or step_times))}


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
