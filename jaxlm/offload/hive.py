"""Asynchronous decentralized peers over hivemind (optional ``decentralized`` extra). EXPERIMENTAL.

Each peer is its own process with a full replica trained by ``SwapTrainer`` (local
optimizer steps, the spec's ``local_sgd`` mode) and averages its master parameters with
whoever is present through hivemind's DHT matchmaking and ``DecentralizedAverager``
(butterfly all-reduce). JAX arrays go to host numpy, are copied into one flat CPU torch
tensor (torch is only the tensor container), averaged and copied back. A peer that dies
only removes itself: the others' rounds form smaller groups (or none) and they keep training.

Coordination (every peer publishes ``{step, epoch, samples, done}`` under one DHT key with
a heartbeat TTL; ``SwarmProgress``; a killed peer's record expires after ``heartbeat_ttl_s``):

* **Averaging rounds (epochs).** With ``target_global_batch > 0`` a round starts once the
  samples the live peers accumulated in the current epoch sum to ``target_global_batch``
  (hivemind's collaborative-epoch rule: ``hivemind.Optimizer(target_batch_size=...)``); a
  peer that sees a higher epoch than its own joins that round too ("transition"). With
  ``target_global_batch = 0`` every peer averages every ``period`` local steps. A round
  with no other live peer is skipped (nobody to average with; the epoch still advances).
* **Staleness bound (SSP).** With ``max_staleness = s >= 0`` a peer that has completed ``n``
  local steps starts the next one only if ``n - min(completed steps of the live peers it
  sees) <= s`` (stale synchronous parallel, Ho et al. 2013; ``s = 0`` is bulk-synchronous).
  Completed-step counts of live peers therefore never differ by more than ``s + 1``. It
  waits (polling the DHT every ``poll_s``, joining any round the others start) otherwise;
  finished peers and peers whose heartbeat expired do not hold it back. hivemind has no step bound in its
  local-update mode; its epoch rule is implemented as well: a peer more than
  ``catch_up_epochs`` epochs behind the swarm downloads the state instead of averaging.
  A peer with no samples in the epoch (e.g. one that just downloaded the state) has
  nothing to contribute: it moves to the next epoch without averaging.
* **Join mid-run / laggards.** Every peer serves ``(params, optimizer state, step, epoch)``
  through hivemind's state-download RPC (``DecentralizedAverager.get_current_state`` /
  ``load_state_from_peers``; the most advanced peer is preferred). A peer started with
  ``join=True`` downloads that state before its first step and continues from the served
  step. The state is served between two local steps (a lock), never mid-update.

Not implemented here: ``collab_epoch`` / ``delayed`` gradient averaging over hivemind, an LR
schedule on global samples, adaptive deadlines.

This module imports hivemind and torch lazily; core jaxlm never imports them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxlm.offload.procs import emit_result, spec_from_argv


@dataclasses.dataclass(frozen=True)
class HivePeerSpec:
    """One asynchronous peer.

    Attributes:
        peer_id: index (selects the data shard and the seed of its data stream).
        rendezvous: file where peer 0 writes its DHT multiaddrs; others read it.
        steps: the peer trains until its local step counter reaches ``steps`` (a joiner
            continues from the downloaded step). period: averaging every ``period`` local
            steps when ``target_global_batch == 0``.
        target_global_batch: samples (sequences) all peers accumulate per round (0: period).
        max_staleness: SSP bound in steps (-1: unbounded; live peers' completed steps then
            differ by at most ``max_staleness + 1``).
        catch_up_epochs: a peer more than this many epochs behind downloads the state.
        group_size: target averaging group size; matchmaking_s / averaging_timeout_s:
            hivemind deadlines (exposed, not guessed).
        connect_retries: DHT bootstrap attempts (exponential backoff) before a clear error.
        join: download params, optimizer state and step from a live peer before training;
            join_after_step > 0: the joiner first waits (outside the swarm: it publishes no
            progress and averages nothing) until a peer has done that many steps.
        step_delay_s: extra seconds per step (a deliberately slow peer).
        heartbeat_ttl_s, poll_s: progress-record lifetime and staleness-wait polling.
        host_ip: announce/listen on this IPv4 (network namespaces); "" = hivemind default.
        progress: file the peer appends "step loss time epoch" lines to (tests, kill).
        dump_dir: write per-step flat parameters and served/loaded states there (tests).
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
    target_global_batch: int = 0
    max_staleness: int = -1
    catch_up_epochs: int = 1
    join: bool = False
    join_after_step: int = 0
    join_timeout_s: float = 60.0
    step_delay_s: float = 0.0
    heartbeat_ttl_s: float = 4.0
    poll_s: float = 0.05
    host_ip: str = ""
    progress: str = ""
    dump_dir: str = ""
    out: str = ""


def validate_spec(spec: HivePeerSpec) -> None:
    """Raises ValueError naming the bad field (before any process or DHT is started)."""
    if spec.steps < 1 or spec.batch < 1 or spec.seq < 1:
        raise ValueError(f"steps, batch and seq must be >= 1, got {spec.steps}, {spec.batch}, "
                         f"{spec.seq}")
    if spec.target_global_batch < 0:
        raise ValueError(f"target_global_batch must be >= 0 (0: average every `period` steps), "
                         f"got {spec.target_global_batch}")
    if spec.target_global_batch == 0 and spec.period < 1:
        raise ValueError(f"period must be >= 1 when target_global_batch is 0, got {spec.period}")
    if spec.max_staleness < -1:
        raise ValueError(f"max_staleness must be >= 0 steps (or -1: unbounded), got "
                         f"{spec.max_staleness}")
    if spec.heartbeat_ttl_s <= 0 or spec.poll_s <= 0:
        raise ValueError("heartbeat_ttl_s and poll_s must be > 0")


# ------------------------------------------------------------------ coordination (pure logic)
def slowest_live_step(records: Mapping[str, dict], me: str, my_step: int) -> int:
    """The smallest step among live, unfinished peers (this peer included)."""
    steps = [int(r["step"]) for n, r in records.items() if n != me and not r.get("done")]
    return min([my_step, *steps])


def must_wait(records: Mapping[str, dict], me: str, my_step: int, max_staleness: int) -> bool:
    """SSP gate: True if this peer (``my_step`` steps completed) is more than
    ``max_staleness`` steps ahead of the slowest live peer and must not start another step."""
    if max_staleness < 0:
        return False
    return my_step - slowest_live_step(records, me, my_step) > max_staleness


def global_epoch(records: Mapping[str, dict], my_epoch: int) -> int:
    return max([my_epoch, *(int(r["epoch"]) for r in records.values() if not r.get("done"))])


def epoch_samples(records: Mapping[str, dict], epoch: int) -> int:
    """Samples the swarm accumulated towards ``epoch`` (finished peers' included)."""
    return sum(int(r["samples"]) for r in records.values() if int(r["epoch"]) == epoch)


def round_decision(records: Mapping[str, dict], me: str, *, epoch: int, samples: int,
                   steps_since: int, target: int, period: int, catch_up_epochs: int = 1
                   ) -> str | None:
    """What this peer does now: None (keep training), "catch_up" (download the state: more
    than ``catch_up_epochs`` epochs behind), "transition" (the swarm moved to a later epoch:
    join its round), "target" (the epoch's samples reached ``target``) or "period"."""
    if target <= 0:  # fixed period: no epoch bookkeeping across peers
        return "period" if steps_since >= period else None
    ge = global_epoch(records, epoch)
    if ge - epoch > catch_up_epochs:
        return "catch_up"
    if ge > epoch:
        return "transition"
    mine = {**records, me: {"epoch": epoch, "samples": samples}}
    return "target" if epoch_samples(mine, epoch) >= target else None


def partners(records: Mapping[str, dict], me: str, epoch: int, target: int) -> int:
    """Live, unfinished other peers that can still average with this one: with a target
    batch only those still in this epoch (a peer publishes its next epoch after its round)."""
    return sum(1 for n, r in records.items() if n != me and not r.get("done")
               and (target <= 0 or int(r["epoch"]) == epoch))


class SwarmProgress:
    """Progress records of all peers under one DHT key (one subkey per peer), with a heartbeat.

    ``publish`` stores this peer's record (expiring after ``ttl`` s); a background thread
    re-stores the latest one every ``ttl / 4`` s so a peer in a long step or a long averaging
    round stays live, and a killed peer disappears after ``ttl``. ``read`` returns the
    unexpired records ``{peer name: record}``.
    """

    def __init__(self, dht, key: str, name: str, ttl: float):
        self.dht, self.key, self.name, self.ttl = dht, key, name, ttl
        self._lock = threading.Lock()
        self._rec: dict | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="hive-heartbeat")
        self._thread.start()

    def _store(self, rec: dict, ttl: float) -> None:
        from hivemind.utils import get_dht_time

        with self._lock:
            self.dht.store(self.key, rec, get_dht_time() + ttl, subkey=self.name)

    def publish(self, **rec) -> None:
        rec = {**rec, "t": time.time()}
        self._rec = rec
        self._store(rec, self.ttl)

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            if self._rec is not None:
                try:
                    self._store({**self._rec, "t": time.time()}, self.ttl)
                except Exception:  # noqa: BLE001 -- DHT shutting down; the next beat retries
                    pass

    def read(self) -> dict[str, dict]:
        with self._lock:
            got = self.dht.get(self.key, latest=True)
        if got is None or not isinstance(got.value, dict):
            return {}
        return {k: v.value for k, v in got.value.items()
                if hasattr(v, "value") and isinstance(v.value, dict)}

    def close(self, **final) -> None:
        """Stops the heartbeat; publishes a last record (e.g. ``done=True``) if given."""
        self._stop.set()
        self._thread.join(timeout=2)
        if final:
            self._rec = {**(self._rec or {}), **final, "t": time.time()}
            self._store(self._rec, max(self.ttl, 30.0))


def start_dht(initial_peers: list[str], retries: int = 5, backoff: float = 0.5,
              host_ip: str = ""):
    """Starts a DHT node joined to ``initial_peers``, retrying with exponential backoff.

    Raises:
        ConnectionError: after ``retries`` failed attempts, naming the peers tried.
    """
    import hivemind

    kw = {"host_maddrs": [f"/ip4/{host_ip}/tcp/0"]} if host_ip else {}
    delay, last = backoff, None
    for _ in range(max(retries, 1)):
        try:
            return hivemind.DHT(initial_peers=initial_peers or None, start=True, **kw)
        except Exception as e:  # noqa: BLE001 -- hivemind raises several types here
            last = e
            time.sleep(delay)
            delay *= 2
    raise ConnectionError(
        f"cannot reach the DHT through initial peers {initial_peers} after {retries} attempts "
        f"(last error: {last!r}); check the addresses, that peer 0 is running, and firewalls")


# ------------------------------------------------------------------ flat host state
def flatten(tree: Any) -> np.ndarray:
    """All leaves of ``tree`` as one float32 vector (int leaves, e.g. Adam's count, exact
    below 2**24)."""
    import jax

    leaves = jax.tree.leaves(tree)
    if not leaves:
        return np.zeros((0,), np.float32)
    return np.concatenate([np.asarray(x, np.float32).ravel() for x in leaves])


def unflatten(flat: np.ndarray, like: Any, device) -> Any:
    """Inverse of ``flatten`` onto ``like``'s structure, dtypes and shapes, placed on
    ``device``."""
    import jax

    leaves = jax.tree.leaves(like)
    if flat.size != sum(int(np.size(x)) for x in leaves):
        raise ValueError(f"state of {flat.size} elements does not match the model's "
                         f"{sum(int(np.size(x)) for x in leaves)} (different preset/overrides?)")
    out, off = [], 0
    for x in leaves:
        n = int(np.size(x))
        out.append(np.asarray(flat[off:off + n]).reshape(np.shape(x)).astype(np.asarray(x).dtype))
        off += n
    return jax.device_put(jax.tree.unflatten(jax.tree.structure(like), out), device)


def _set_master(tr, master) -> None:
    tr.master = list(master)
    if getattr(tr, "pinned", None) is not None:  # GPU pinned-host staging copies
        tr._refresh_pinned(range(tr.num_submodels))


def _make_averager(flat: np.ndarray, dht, spec: HivePeerSpec, serve):
    """A ``DecentralizedAverager`` over one flat tensor whose state-download RPC serves
    ``serve() -> (metadata, [tensors])`` (called on hivemind's background thread)."""
    import torch
    from hivemind.averaging import DecentralizedAverager

    class StateServingAverager(DecentralizedAverager):
        def get_current_state(self):
            meta, arrays = serve()
            return meta, [torch.from_numpy(a) for a in arrays], None

    return StateServingAverager(
        [torch.from_numpy(flat.copy())], dht, start=True, prefix="jaxlm_atom_params",
        target_group_size=spec.group_size, min_group_size=2,
        min_matchmaking_time=spec.matchmaking_s, request_timeout=1.0,
        allreduce_timeout=spec.averaging_timeout_s)


def _read_rendezvous(path: str, timeout: float = 120.0) -> list[str]:
    t_end = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > t_end:
            raise ConnectionError(f"no rendezvous file {path} after {timeout:.0f} s (is peer 0 "
                                  "running?)")
        time.sleep(0.2)
    with open(path) as f:
        return json.load(f)


def run_hive_peer(spec: HivePeerSpec) -> dict[str, Any]:
    """Runs one asynchronous peer (in its own process)."""
    import jax
    import optax
    import torch

    from jaxlm.core import MODELS, init
    from jaxlm.offload.swap import SwapTrainer
    from jaxlm.train.data import synthetic_tokens
    from jaxlm.utils.config import apply_overrides

    validate_spec(spec)
    if spec.peer_id == 0 and not spec.join:
        dht = start_dht([], spec.connect_retries, host_ip=spec.host_ip)
        tmp = spec.rendezvous + ".tmp"
        with open(tmp, "w") as f:
            json.dump([str(a) for a in dht.get_visible_maddrs()], f)
        os.replace(tmp, spec.rendezvous)
    else:
        dht = start_dht(_read_rendezvous(spec.rendezvous), spec.connect_retries,
                        host_ip=spec.host_ip)
    cfg = apply_overrides(MODELS.get(spec.preset), list(spec.overrides))
    params = init(jax.random.key(spec.seed), cfg)  # same init on every peer
    tr = SwapTrainer(cfg, params, optax.adamw(spec.lr, weight_decay=0.1), spec.cuts)
    me = f"p{spec.peer_id}"
    st = {"step": 0, "epoch": 0, "samples": 0, "since": 0}
    lock = threading.Lock()  # held while the trainer state changes: state is served between steps
    served: list[dict] = []

    def serve():
        with lock:
            meta = {"step": st["step"], "epoch": st["epoch"], "peer": spec.peer_id}
            arrays = [flatten(tr.master), flatten(tr.opt_state)]
        served.append(meta)
        if spec.dump_dir:
            np.save(os.path.join(spec.dump_dir, f"served_{me}_s{meta['step']}.npy"), arrays[0])
        return meta, arrays

    avg = _make_averager(flatten(tr.master), dht, spec, serve)
    prog = SwarmProgress(dht, "jaxlm_atom_progress", me, spec.heartbeat_ttl_s)
    toks = synthetic_tokens(spec.steps * spec.batch * (spec.seq + 1), cfg.vocab_size,
                            seed=1000 + spec.peer_id)
    toks = toks.reshape(spec.steps, spec.batch, spec.seq + 1)
    res: dict[str, Any] = {"peer": spec.peer_id, "losses": [], "steps": [], "step_end_t": [],
                           "rounds": 0, "group_sizes": [], "round_log": [], "sync_s": 0.0,
                           "wait_s": 0.0, "waits": 0, "downloads": []}

    def download(why: str) -> bool:
        t0 = time.perf_counter()
        got = avg.load_state_from_peers(timeout=spec.join_timeout_s)
        if not got:
            return False
        meta, tensors = got
        # like hivemind's catch-up: take the swarm's epoch (the server may be one behind)
        epoch = global_epoch(prog.read(), int(meta["epoch"]))
        with lock:
            _set_master(tr, unflatten(tensors[0].numpy(), tr.master, tr.host))
            tr.opt_state = unflatten(tensors[1].numpy(), tr.opt_state, tr.host)
            st.update(step=int(meta["step"]), epoch=epoch, samples=0, since=0)
        res["downloads"].append({"why": why, "from": int(meta["peer"]), "step": st["step"],
                                 "epoch": st["epoch"], "s": time.perf_counter() - t0})
        if spec.dump_dir:
            np.savez(os.path.join(spec.dump_dir, f"loaded_{me}_{len(res['downloads']) - 1}.npz"),
                     params=tensors[0].numpy(),
                     opt=tensors[1].numpy(), step=st["step"], peer=int(meta["peer"]))
        return True

    if spec.join:
        t_end = time.monotonic() + spec.join_timeout_s
        while spec.join_after_step > 0 and max(
                [0, *(int(r["step"]) for r in prog.read().values())]) < spec.join_after_step:
            if time.monotonic() > t_end:
                raise ConnectionError(f"peer {spec.peer_id}: no peer reached step "
                                      f"{spec.join_after_step} within {spec.join_timeout_s:.0f} s")
            time.sleep(spec.poll_s)
        while not download("join"):
            if time.monotonic() > t_end:
                raise ConnectionError(f"peer {spec.peer_id}: no live peer served its state "
                                      f"within {spec.join_timeout_s:.0f} s")
            time.sleep(0.5)

    def publish(done: bool = False):
        prog.publish(step=st["step"], epoch=st["epoch"], samples=st["samples"], done=done)

    def do_round(why: str, records: dict) -> None:
        ts = time.perf_counter()
        entry = {"why": why, "epoch": st["epoch"], "step": st["step"],
                 "seen": epoch_samples({**records, me: {"epoch": st["epoch"],
                                                        "samples": st["samples"]}}, st["epoch"]),
                 "mine": st["samples"], "group": 0}
        if why == "catch_up" and download("catch_up"):
            entry["group"] = -1
        elif st["samples"] > 0 and partners(records, me, st["epoch"],
                                            spec.target_global_batch) > 0:
            with lock:
                flat = flatten(tr.master)
            with avg.get_tensors() as tensors:
                tensors[0][:] = torch.from_numpy(flat)
            try:
                out = avg.step(timeout=spec.averaging_timeout_s, allow_retries=False)
            except Exception:  # noqa: BLE001 -- a failed round: keep training locally
                out = None
            if out:
                with avg.get_tensors() as tensors:
                    new = tensors[0].numpy().copy()
                with lock:
                    _set_master(tr, unflatten(new, tr.master, tr.host))
                res["rounds"] += 1
                res["group_sizes"].append(len(out))
                entry["group"] = len(out)
        if entry["group"] >= 0:
            with lock:
                st.update(epoch=max(st["epoch"] + 1, global_epoch(records, st["epoch"])),
                          samples=0, since=0)
        avg.state_sharing_priority = float(st["step"])  # prefer the most advanced server
        entry["s"], entry["t_end"] = time.perf_counter() - ts, time.time()
        res["round_log"].append(entry)
        res["sync_s"] += entry["s"]
        publish()

    def check_round() -> bool:
        records = prog.read()
        why = round_decision(records, me, epoch=st["epoch"], samples=st["samples"],
                             steps_since=st["since"], target=spec.target_global_batch,
                             period=spec.period, catch_up_epochs=spec.catch_up_epochs)
        if why is not None:
            do_round(why, records)
            return True
        return False

    publish()
    while st["step"] < spec.steps:
        # staleness gate: wait (joining rounds the others start) until within the bound
        waited, t0 = False, time.perf_counter()
        while spec.max_staleness >= 0:
            records = prog.read()
            if not must_wait(records, me, st["step"], spec.max_staleness):
                break
            if not check_round():
                waited = True
                time.sleep(spec.poll_s)
        if waited:
            res["waits"] += 1
            res["wait_s"] += time.perf_counter() - t0
        i = st["step"]
        if spec.dump_dir and not res["steps"]:  # the parameters the first step starts from
            np.save(os.path.join(spec.dump_dir, f"first_{me}.npy"), flatten(tr.master))
        with lock:
            out = tr.step({"inputs": toks[i, :, :-1], "targets": toks[i, :, 1:]})
            if spec.step_delay_s > 0:
                time.sleep(spec.step_delay_s)
            st["step"] += 1
            st["samples"] += spec.batch
            st["since"] += 1
        t_end = time.time()
        res["losses"].append(out.loss)
        res["steps"].append(st["step"])
        res["step_end_t"].append(t_end)
        if spec.progress:  # logged before the DHT sees the step
            with open(spec.progress, "a") as f:
                f.write(f"{st['step']} {out.loss} {t_end} {st['epoch']}\n")
        if spec.dump_dir:
            np.save(os.path.join(spec.dump_dir, f"{me}_s{st['step']}.npy"), flatten(tr.master))
        publish()
        check_round()
    res["served"] = served
    res["final_step"], res["final_epoch"] = st["step"], st["epoch"]
    prog.close(step=st["step"], epoch=st["epoch"], samples=st["samples"], done=True)
    avg.shutdown()
    dht.shutdown()
    return res


def hive_main() -> None:
    """Process entry: ``argv[1]`` is a JSON ``HivePeerSpec``."""
    from jaxlm.utils.lifeline import bind_to_parent

    bind_to_parent()  # dies (with its DHT/p2pd children) when the launcher dies
    emit_result("HIVE_RESULT", run_hive_peer(spec_from_argv(HivePeerSpec)))
    os._exit(0)  # hivemind's daemon threads can hang interpreter shutdown


def _progress_lines(path: str) -> int:
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return len(f.read().splitlines())


def launch_hive(base: HivePeerSpec, n_peers: int, *, kill_peer: int | None = None,
                kill_at: int = 0, join_at: int = 0, per_peer: Mapping[int, dict] | None = None,
                prefix_cmds: Mapping[int, list[str]] | None = None, timeout: float = 580.0,
                workdir: str = "/tmp") -> list[dict[str, Any]]:
    """Runs ``n_peers`` local peer processes, each in its own process group.

    Args:
        base: the spec every peer starts from (``peer_id``/``progress`` are set per peer).
        n_peers: peers started at once.
        kill_peer, kill_at: SIGKILL that peer's process group after it logged ``kill_at``
            steps.
        join_at: > 0 starts one more peer (id ``n_peers``, ``join=True``) once peer 0 logged
            ``join_at`` steps.
        per_peer: field overrides per peer id (e.g. ``{1: {"step_delay_s": 0.2}}``).
        prefix_cmds: per peer id, a command prefix (e.g. ``["ip", "netns", "exec", ns]``).
        timeout: seconds for the whole run.

    Returns:
        The results of the peers that were not killed (joiner last). Every process group is
        killed on exit, finished or not, and on SIGTERM/SIGINT/SIGHUP to this process; the
        peers kill their own groups when this process dies (``jaxlm.utils.lifeline``).
    """
    import signal
    import subprocess

    from jaxlm.utils.lifeline import Children

    validate_spec(base)
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    if os.path.exists(base.rendezvous):
        os.remove(base.rendezvous)
    per_peer, prefix_cmds = dict(per_peer or {}), dict(prefix_cmds or {})
    procs, progs = [], []

    def start(p: int, **extra):
        prog = os.path.join(workdir, f"hive_prog{p}.txt")
        if os.path.exists(prog):
            os.remove(prog)
        progs.append(prog)
        spec = dataclasses.replace(base, peer_id=p, progress=prog, **{**per_peer.get(p, {}),
                                                                       **extra})
        procs.append(kids.spawn(  # own group: hivemind forks DHT/p2pd children
            [*prefix_cmds.get(p, []), sys.executable, "-c",
             "from jaxlm.offload.hive import hive_main; hive_main()",
             json.dumps(dataclasses.asdict(spec))], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=env))

    def wait_for(p: int, n: int, t_end: float) -> None:
        while time.monotonic() < t_end and _progress_lines(progs[p]) < n:
            if procs[p].poll() is not None:
                raise RuntimeError(f"hive peer {p} exited with {procs[p].returncode} before "
                                   f"step {n}: {procs[p].stderr.read()[-2000:]}")
            time.sleep(0.1)

    kids = Children()
    try:
        kids.__enter__()
        for p in range(n_peers):
            start(p)
        t_end = time.monotonic() + timeout
        events = sorted([(kill_at, "kill")] * (kill_peer is not None)
                        + [(join_at, "join")] * (join_at > 0))
        for n, what in events:
            if what == "kill":
                wait_for(kill_peer, n, t_end)
                _kill_group(procs[kill_peer], signal.SIGKILL)  # the peer + DHT/p2pd children
                procs[kill_peer].wait()
            else:
                wait_for(0, n, t_end)
                start(n_peers, join=True)
        results = []
        for p, pr in enumerate(procs):
            if p == kill_peer:
                continue
            out, err = pr.communicate(timeout=max(t_end - time.monotonic(), 5))
            if pr.returncode != 0:
                raise RuntimeError(f"hive peer {p} exited with {pr.returncode}: {err[-2000:]}")
            lines = [ln for ln in out.splitlines() if ln.startswith("HIVE_RESULT ")]
            if not lines:
                raise RuntimeError(f"hive peer {p} printed no result: {err[-2000:]}")
            results.append(json.loads(lines[-1][len("HIVE_RESULT "):]))
        return results
    finally:
        kids.__exit__(None, None, None)  # SIGKILLs every peer's group, finished or not


def _kill_group(proc, sig) -> None:
    """Signals ``proc``'s whole process group (it was started with its own session)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def max_step_gap(results: list[dict[str, Any]]) -> int:
    """Largest (most steps done) - (fewest steps done) over the merged step-completion times
    of peers that are all still running (from each peer's ``step_end_t`` log)."""
    spans = [(r["step_end_t"][0], r["step_end_t"][-1]) for r in results if r["step_end_t"]]
    if len(spans) < 2:
        return 0
    lo, hi = max(s[0] for s in spans), min(s[1] for s in spans)
    events = sorted(t for r in results for t in r["step_end_t"] if lo <= t <= hi)
    gap = 0
    for t in events:
        done = [int(np.searchsorted(r["step_end_t"], t, side="right")) - 1 for r in results]
        steps = [r["steps"][d] if d >= 0 else r["steps"][0] - 1 for r, d in zip(results, done)]
        gap = max(gap, max(steps) - min(steps))
    return gap
