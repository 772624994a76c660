"""Asynchronous decentralized peers over hivemind (optional ``decentralized`` extra). EXPERIMENTAL.

Each peer is its own process with a full replica trained by ``SwapTrainer`` (local
optimizer steps, the spec's ``local_sgd`` mode); every ``period`` steps it averages its
master parameters with whoever is present through hivemind's DHT matchmaking and
``DecentralizedAverager`` (butterfly all-reduce). JAX arrays go to host numpy, are copied
into one flat CPU torch tensor (torch is only the tensor container), averaged and copied
back. A peer that dies only removes itself: the others' averaging rounds time out or
form smaller groups, and they keep training.

Not implemented here (remaining): ``collab_epoch`` / ``delayed`` over hivemind (global
sample counting, target batch), a staleness bound, joiner state download
(``load_state_from_peers``), adaptive deadlines.

This module imports hivemind and torch lazily; core jaxlm never imports it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any

import numpy as np

from jaxlm.offload.procs import emit_result, spec_from_argv


@dataclasses.dataclass(frozen=True)
class HivePeerSpec:
    """One asynchronous peer.

    Attributes:
        peer_id: index (selects the data shard and the seed of its data stream).
        rendezvous: file where peer 0 writes its DHT multiaddrs; others read it.
        steps, period: local steps; parameter averaging every ``period`` steps.
        group_size: target averaging group size; matchmaking_s / averaging_timeout_s:
            hivemind deadlines (exposed, not guessed).
        connect_retries: DHT bootstrap attempts (exponential backoff) before a clear error.
        progress: file the peer appends "step loss" lines to (lets a test kill it mid-run).
    """

    peer_id: int
    rendezvous: str
    preset: str = "gptj-tiny_test"
    overrides: tuple[str, ...] = ()
    cuts: tuple[int, ...] = (2,)
    steps: int = 20
    period: int = 5
    batch: int = 4
    seq: int = 16
    lr: float = 3e-3
    seed: int = 0
    group_size: int = 4
    matchmaking_s: float = 2.0
    averaging_timeout_s: float = 20.0
    connect_retries: int = 5
    progress: str = ""
    out: str = ""


def start_dht(initial_peers: list[str], retries: int = 5, backoff: float = 0.5):
    """Starts a DHT node joined to ``initial_peers``, retrying with exponential backoff.

    Raises:
        ConnectionError: after ``retries`` failed attempts, naming the peers tried.
    """
    import hivemind

    delay, last = backoff, None
    for attempt in range(max(retries, 1)):
        try:
            return hivemind.DHT(initial_peers=initial_peers or None, start=True)
        except Exception as e:  # noqa: BLE001 -- hivemind raises several types here
            last = e
            time.sleep(delay)
            delay *= 2
    raise ConnectionError(
        f"cannot reach the DHT through initial peers {initial_peers} after {retries} attempts "
        f"(last error: {last!r}); check the addresses, that peer 0 is running, and firewalls")


def _flatten(tree_list) -> tuple[np.ndarray, list]:
    import jax

    leaves = jax.tree.leaves(tree_list)
    flat = np.concatenate([np.asarray(x, np.float32).ravel() for x in leaves])
    return flat, leaves


def run_hive_peer(spec: HivePeerSpec) -> dict[str, Any]:
    """Runs one asynchronous peer (in its own process)."""
    import jax
    import optax
    import torch
    from hivemind.averaging import DecentralizedAverager

    from jaxlm.core import MODELS, init
    from jaxlm.offload.swap import SwapTrainer
    from jaxlm.train.data import synthetic_tokens
    from jaxlm.utils.config import apply_overrides

    if spec.peer_id == 0:
        dht = start_dht([], spec.connect_retries)
        tmp = spec.rendezvous + ".tmp"
        with open(tmp, "w") as f:
            json.dump([str(a) for a in dht.get_visible_maddrs()], f)
        os.replace(tmp, spec.rendezvous)
    else:
        t_end = time.monotonic() + 120
        while not os.path.exists(spec.rendezvous):
            if time.monotonic() > t_end:
                raise ConnectionError(f"no rendezvous file {spec.rendezvous} after 120 s")
            time.sleep(0.2)
        with open(spec.rendezvous) as f:
            dht = start_dht(json.load(f), spec.connect_retries)
    cfg = apply_overrides(MODELS.get(spec.preset), list(spec.overrides))
    params = init(jax.random.key(spec.seed), cfg)  # same init on every peer
    tr = SwapTrainer(cfg, params, optax.adamw(spec.lr, weight_decay=0.1), spec.cuts)
    flat, _ = _flatten(tr.master)
    avg = DecentralizedAverager(
        [torch.from_numpy(flat.copy())], dht, start=True, prefix="jaxlm_atom_params",
        target_group_size=spec.group_size, min_group_size=2,
        min_matchmaking_time=spec.matchmaking_s, request_timeout=1.0,
        allreduce_timeout=spec.averaging_timeout_s)
    toks = synthetic_tokens(spec.steps * spec.batch * (spec.seq + 1), cfg.vocab_size,
                            seed=1000 + spec.peer_id)
    toks = toks.reshape(spec.steps, spec.batch, spec.seq + 1)
    losses, rounds, groups, sync_s = [], 0, [], 0.0
    for i in range(spec.steps):
        st = tr.step({"inputs": toks[i, :, :-1], "targets": toks[i, :, 1:]})
        losses.append(st.loss)
        if (i + 1) % spec.period == 0:
            ts = time.perf_counter()
            flat, leaves = _flatten(tr.master)
            with avg.get_tensors() as tensors:
                tensors[0][:] = torch.from_numpy(flat)
            try:
                res = avg.step(timeout=spec.averaging_timeout_s, allow_retries=False)
            except Exception:  # noqa: BLE001 -- a failed round: keep training locally
                res = None
            if res:
                rounds += 1
                groups.append(len(res))
                with avg.get_tensors() as tensors:
                    new = tensors[0].numpy().copy()
                out, off = [], 0
                for x in leaves:
                    out.append(new[off:off + x.size].reshape(x.shape).astype(x.dtype))
                    off += x.size
                tree = jax.tree.unflatten(jax.tree.structure(tr.master), out)
                tr.master = [jax.device_put(g, tr.host) for g in tree]
            sync_s += time.perf_counter() - ts
        if spec.progress:
            with open(spec.progress, "a") as f:
                f.write(f"{i} {st.loss}\n")
    result = {"peer": spec.peer_id, "losses": losses, "rounds": rounds, "group_sizes": groups,
              "sync_s": sync_s}
    avg.shutdown()
    dht.shutdown()
    return result


def hive_main() -> None:
    """Process entry: ``argv[1]`` is a JSON ``HivePeerSpec``."""
    emit_result("HIVE_RESULT", run_hive_peer(spec_from_argv(HivePeerSpec)))
    os._exit(0)  # hivemind's daemon threads can hang interpreter shutdown


def launch_hive(base: HivePeerSpec, n_peers: int, *, kill_peer: int | None = None,
                kill_at: int = 0, timeout: float = 580.0, workdir: str = "/tmp"
                ) -> list[dict[str, Any]]:
    """Runs ``n_peers`` local peer processes; optionally SIGKILLs one after ``kill_at`` steps.

    Returns the survivors' results. Every child is killed on exit.
    """
    import signal
    import subprocess

    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    if os.path.exists(base.rendezvous):
        os.remove(base.rendezvous)
    procs, progs = [], []
    try:
        for p in range(n_peers):
            prog = os.path.join(workdir, f"hive_prog{p}.txt")
            if os.path.exists(prog):
                os.remove(prog)
            progs.append(prog)
            d = dataclasses.asdict(dataclasses.replace(base, peer_id=p, progress=prog))
            procs.append(subprocess.Popen(
                [sys.executable, "-c", "from jaxlm.offload.hive import hive_main; hive_main()",
                 json.dumps(d)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                env=env, start_new_session=True))  # own group: hivemind forks DHT/p2pd children
        t_end = time.monotonic() + timeout
        if kill_peer is not None:
            while time.monotonic() < t_end:
                if os.path.exists(progs[kill_peer]):
                    with open(progs[kill_peer]) as f:
                        if len(f.read().splitlines()) >= kill_at:
                            break
                time.sleep(0.2)
            _kill_group(procs[kill_peer], signal.SIGKILL)  # the peer and its DHT/p2pd children
            procs[kill_peer].wait()
        results = []
        for p, pr in enumerate(procs):
            if p == kill_peer:
                continue
            out, err = pr.communicate(timeout=max(t_end - time.monotonic(), 5))
            if pr.returncode != 0:
                raise RuntimeError(f"hive peer {p} exited with {pr.returncode}: {err[-2000:]}")
            line = [ln for ln in out.splitlines() if ln.startswith("HIVE_RESULT ")][-1]
            results.append(json.loads(line[len("HIVE_RESULT "):]))
        return results
    finally:
        for pr in procs:  # also reaps children a finished or killed peer left behind
            _kill_group(pr, signal.SIGKILL)
            if pr.poll() is None:
                pr.wait()


def _kill_group(proc, sig) -> None:
    """Signals ``proc``'s whole process group (it was started with its own session)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
