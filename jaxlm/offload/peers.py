"""Several peers training full copies of the model (one process per peer).

Lock-step mode (implemented): ``jax.distributed`` with CPU (gloo) or GPU (NCCL)
collectives. Every peer runs its own ``SwapTrainer`` on its own data shard; the
``Synchronizer`` decides what crosses the network:

* ``collab_epoch``: sub-model gradients are averaged across peers before each host update
  (equal to synchronous large-batch training; exact against one process on the
  concatenated batch);
* ``local_sgd``: local optimizer steps, master parameters averaged every ``period`` steps.

Lock-step is not fault tolerant: ``jax.distributed`` has a fixed process count and shuts
every process down when one dies.

Asynchronous decentralized mode: ``jaxlm.offload.hive`` (experimental; hivemind DHT +
DecentralizedAverager, local SGD with parameter averaging every ``period`` steps or when the
swarm's samples reach ``target_global_batch``, an SSP staleness bound, joiner/laggard state
download through hivemind's ``load_state_from_peers``, survives killed peers). Gradient
averaging over hivemind (collab_epoch/delayed) is not implemented (``AsyncPeer`` raises
NotImplementedError).

Worker entry (used by the tests and ``experiments/atom_train.py``)::

    python -c "from jaxlm.offload.peers import worker_main; worker_main()" '<json spec>'
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxlm.offload.procs import emit_result, run_workers, spec_from_argv

SYNC_MODES = ("collab_epoch", "local_sgd")


@dataclasses.dataclass(frozen=True)
class PeerSpec:
    """What one lock-step peer process runs.

    Attributes:
        coordinator: "host:port" of process 0's coordinator.
        num_processes, process_id: the group.
        preset, overrides: model (``MODELS.get(preset)`` + ``apply_overrides``).
        cuts: sub-model cut points.
        steps, batch, seq, lr, seed: training run; peer p uses data rows
            ``[p * batch, (p + 1) * batch)`` of each global batch of ``num_processes * batch``.
        sync: "collab_epoch" or "local_sgd"; period: local_sgd averaging period.
        out: .npz path for the final parameters and losses (or "").
        local_devices: CPU devices per process (2 = real host->device copies).
    """

    coordinator: str
    num_processes: int
    process_id: int
    preset: str = "gptj-tiny_test"
    overrides: tuple[str, ...] = ()
    cuts: tuple[int, ...] = (2,)
    steps: int = 3
    batch: int = 2
    seq: int = 16
    lr: float = 1e-2
    seed: int = 0
    sync: str = "collab_epoch"
    period: int = 2
    out: str = ""
    local_devices: int = 2


def global_batches(vocab: int, steps: int, rows: int, seq: int, seed: int) -> list[dict]:
    """Deterministic synthetic global batches (the same on every peer)."""
    rng = np.random.default_rng(seed + 1)
    out = []
    for _ in range(steps):
        x = rng.integers(0, vocab, (rows, seq + 1)).astype(np.int32)
        out.append({"inputs": x[:, :-1], "targets": x[:, 1:]})
    return out


class Synchronizer:
    """Cross-peer averaging for the lock-step mode (all peers call it in the same order)."""

    def __init__(self, mode: str, period: int = 1):
        if mode not in SYNC_MODES:
            raise ValueError(f"sync mode must be one of {SYNC_MODES}, got {mode!r} (the "
                             "'delayed' mode and the asynchronous hivemind mode are not "
                             "implemented)")
        if period < 1:
            raise ValueError(f"sync period must be >= 1, got {period}")
        self.mode, self.period = mode, period
        self.bytes_sent = 0

    @staticmethod
    def mean_tree(tree: Any) -> Any:
        """Average a host pytree over all processes (exact, gathers every copy)."""
        import jax
        from jax.experimental import multihost_utils

        local = jax.tree.map(np.asarray, tree)
        gathered = multihost_utils.process_allgather(local)
        return jax.tree.map(lambda g, x: np.mean(g, axis=0).astype(x.dtype), gathered, local)

    def grad_hook(self):
        if self.mode != "collab_epoch":
            return None

        def hook(k, g):
            import jax

            self.bytes_sent += sum(x.nbytes for x in jax.tree.leaves(g))
            return jax.device_put(self.mean_tree(g), jax.tree.leaves(g)[0].device)

        return hook

    def after_step(self, trainer, step: int) -> None:
        if self.mode == "local_sgd" and (step + 1) % self.period == 0:
            import jax

            for k in range(trainer.num_submodels):
                self.bytes_sent += sum(np.asarray(x).nbytes for x in
                                       jax.tree.leaves(trainer.master[k]))
                trainer.master[k] = jax.device_put(self.mean_tree(trainer.master[k]),
                                                   trainer.host)


def run_lockstep_peer(spec: PeerSpec) -> dict[str, Any]:
    """Runs one peer to completion (call in a fresh process). Returns losses and timing."""
    import time

    import jax

    jax.config.update("jax_num_cpu_devices", spec.local_devices)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(spec.coordinator, spec.num_processes, spec.process_id,
                               initialization_timeout=120)
    import optax

    from jaxlm.core import MODELS, init
    from jaxlm.offload.swap import SwapTrainer
    from jaxlm.utils.config import apply_overrides

    cfg = apply_overrides(MODELS.get(spec.preset), list(spec.overrides))
    params = init(jax.random.key(spec.seed), cfg)
    tx = optax.adamw(spec.lr, weight_decay=0.1)
    tr = SwapTrainer(cfg, params, tx, spec.cuts)
    sync = Synchronizer(spec.sync, spec.period)
    batches = global_batches(cfg.vocab_size, spec.steps, spec.num_processes * spec.batch,
                             spec.seq, spec.seed)
    lo, hi = spec.process_id * spec.batch, (spec.process_id + 1) * spec.batch
    losses, t0 = [], time.perf_counter()
    for i, gb in enumerate(batches):
        st = tr.step({k: v[lo:hi] for k, v in gb.items()}, grad_hook=sync.grad_hook())
        sync.after_step(tr, i)
        losses.append(st.loss)
    wall = time.perf_counter() - t0
    res = {"losses": losses, "wall_s": wall, "sync_bytes": sync.bytes_sent}
    if spec.out:
        flat = {jax.tree_util.keystr(p): np.asarray(x)
                for p, x in jax.tree_util.tree_leaves_with_path(tr.params())}
        np.savez(spec.out, losses=np.asarray(losses), **flat)
    jax.distributed.shutdown()
    return res


def worker_main() -> None:
    """Process entry: ``argv[1]`` is a JSON ``PeerSpec``."""
    from jaxlm.utils.lifeline import bind_to_parent

    bind_to_parent()  # dies when the launcher dies
    emit_result("PEER_RESULT", run_lockstep_peer(spec_from_argv(PeerSpec)))


def launch_lockstep(spec: PeerSpec, *, timeout: float = 240.0, python: str | None = None
                    ) -> list[dict[str, Any]]:
    """Starts ``spec.num_processes`` local peer processes and waits for them (loopback).

    Every child is killed if any fails or the timeout passes.
    """
    specs = [dataclasses.replace(spec, process_id=p,
                                 out=f"{spec.out}.{p}.npz" if spec.out else "")
             for p in range(spec.num_processes)]
    return run_workers("jaxlm.offload.peers:worker_main", specs, tag="PEER_RESULT",
                       what="peer", timeout=timeout, python=python)


class AsyncPeer:
    """Asynchronous decentralized peer over hivemind (DHT + DecentralizedAverager).

    Not implemented: gradient averaging over hivemind (collab_epoch / delayed modes). The
    local-SGD async mode (target global batch, staleness bound, joiner state download) is
    ``jaxlm.offload.hive``.
    """

    def __init__(self, *args, **kwargs):
        raise NotImplementedError(
            "jaxlm.offload.peers.AsyncPeer (hivemind collab_epoch/delayed modes) is not "
            "implemented yet; use jaxlm.offload.hive (local SGD + hivemind averaging, target "
            "global batch, staleness bound, joiners) or the "
            "lock-step mode (launch_lockstep)")
