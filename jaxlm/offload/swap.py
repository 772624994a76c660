"""Swap executor: host-resident master params and optimizer, sub-models streamed to the device.

Out-of-graph engine of the spec (sections 1.3, 1.4, 1.8):

* master parameters and optimizer state live on the host device (the CPU backend's
  device, i.e. host RAM); only the working copy of the sub-model(s) being run is on the
  compute device;
* forward: the copy of sub-model k+1 is dispatched (``jax.device_put``) *before* the
  compute of k, so on backends with separate copy streams they overlap; sub-model k's
  device copy is dropped after use, except the last one, which stays resident for backward;
* backward in reverse order with recompute (``SubModel.fwd_bwd``), prefetching k-1 first;
  each sub-model's gradients are copied back to the host as soon as they exist;
* the host optimizer (any optax transformation) is applied either eagerly per sub-model
  (``host-eager``: one optax state per sub-model; exact only for per-leaf transformations,
  e.g. Adam/AdamW without global-norm clipping) or once on the whole tree after backward
  (``host-at-sync``: exact for any chain, clipping included).

Which device is "host" and which is "compute": on a GPU/TPU the compute device is the
accelerator and copies are real H2D/D2H transfers. On a CPU-only process with several
(fake) CPU devices the compute device is ``cpu:1`` and host->device copies are real
memcpys between buffers; with one CPU device the copies are no-ops.

Prefetch modes: ``dispatch`` (default; ``jax.device_put`` of k+1 dispatched before the
compute of k: overlaps on a GPU's copy streams, never on CPU, where the runtime runs the
copy and the next computation one after the other), ``thread`` (copy engines: an H2D worker
thread prefetches, a D2H worker thread offloads gradients and an update worker thread applies
the host-eager update while backward continues; on CPU the copies are numpy memcpys into
aligned staging slots, which release the GIL, so they really run beside XLA's compute, and
``copy_cores`` pins the three workers to given cores (``engines.CorePartition``; XLA's own
worker threads stay where they are unless ``engines.pin_process_threads`` moves them);
per-phase telemetry is always on) and ``none`` (serial anchor). Host placement:
``engines.choose_host_memory`` (``pinned_host`` mirror on accelerators that list it,
detected; CPU-backend master otherwise).

``resident_step`` is the all-resident reference (one jitted step over the monolithic
model with the same optax transformation); ``staged_resident_step`` runs the same
sub-model functions with everything already on the device (the overlap-efficiency anchor).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import numpy as np
import optax

from jaxlm.core.config import ModelConfig
from jaxlm.offload import engines as eng
from jaxlm.offload import stages as stg

OPT_MODES = ("host-eager", "host-at-sync", "device-per-submodel")


def default_devices() -> tuple[jax.Device, jax.Device]:
    """(host_device, compute_device) as described in the module docstring."""
    cpus = jax.local_devices(backend="cpu")
    host = cpus[0]
    acc = jax.local_devices()[0]
    if acc.platform != "cpu":
        return host, acc
    return host, (cpus[1] if len(cpus) > 1 else cpus[0])


@dataclasses.dataclass
class StepStats:
    """Telemetry of one swap step (seconds; wall clock, host side).

    ``phases`` (thread mode, or ``telemetry=True``) has the per-lane totals of
    ``engines.Timeline.summary`` (h2d, compute, d2h, update, stall) and ``events`` the raw
    ``(lane, k, t0, t1)`` list for a timeline plot.
    """

    loss: float
    step_time: float
    h2d_bytes: int
    d2h_bytes: int
    phases: dict[str, Any] | None = None
    events: list[tuple[str, int, float, float]] | None = None


def tree_bytes(tree: Any) -> int:
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


PREFETCH = ("dispatch", "thread", "none")


class SwapTrainer:
    """Trains a model whose master copy lives on the host, swapping sub-models in.

    Args:
        cfg: model config (untied embeddings).
        params: full parameter tree (any placement; copied to the host device).
        tx: the optax transformation.
        cuts: sub-model boundaries over ``stages.layer_names(cfg)`` (e.g. a planner result).
        opt_mode: "host-eager", "host-at-sync" or "device-per-submodel" (spec 1.4: the
            optimizer state of sub-model k is loaded with its parameters for the backward,
            the update runs on the compute device right after k's backward, and the new
            parameters and state go back to host memory; no host compute and no host-side
            hop; with ``pinned_host`` the master copy itself lives in pinned host memory.
            Exact like host-eager for per-leaf transformations; moves the optimizer state
            over the link twice per step, nothing extra for SGD).
        host_device, compute_device: override ``default_devices()``.
        prefetch: how the copy of the next sub-model overlaps the current compute:
            "dispatch" (or True): ``jax.device_put`` dispatched before the compute (overlaps
            on backends with copy streams; not on CPU); "thread": copy engines (an H2D, a D2H
            and a host-update worker thread; gradients offloaded and the host update applied
            while backward goes on; real overlap on CPU); "none" (or False): load
            each sub-model right before it runs (the serial anchor).
        host_memory: "auto", "pinned_host" or "cpu" (see ``engines.choose_host_memory``).
        telemetry: record per-phase events in dispatch/none modes too (adds a block after
            each phase, so it perturbs dispatch-mode overlap; thread mode always records).
        copy_cores: CPU cores the copy-engine and host-update threads are pinned to (thread
            mode; ``engines.CorePartition.copy``). None: not pinned.
    """

    def __init__(self, cfg: ModelConfig, params: Any, tx: optax.GradientTransformation,
                 cuts: Sequence[int], *, opt_mode: str = "host-eager",
                 host_device: jax.Device | None = None, compute_device: jax.Device | None = None,
                 prefetch: bool | str = True, host_memory: str = "auto",
                 telemetry: bool = False, copy_cores: Sequence[int] | None = None):
        if opt_mode not in OPT_MODES:
            raise ValueError(f"opt_mode must be one of {OPT_MODES}, got {opt_mode!r}")
        if isinstance(prefetch, bool):
            prefetch = "dispatch" if prefetch else "none"
        if prefetch not in PREFETCH:
            raise ValueError(f"prefetch must be a bool or one of {PREFETCH}, got {prefetch!r}")
        h, c = default_devices()
        self.host = host_device or h
        self.dev = compute_device or c
        self.cfg = cfg
        self.tx = tx
        self.opt_mode = opt_mode
        self.prefetch = prefetch
        self.telemetry = telemetry or prefetch == "thread"
        self.hostmem = eng.choose_host_memory(self.dev, host_memory)
        self.subs = stg.make_submodels(cfg, cuts)
        self.cuts = list(cuts)
        groups = stg.group(stg.split_params(params, cfg), cuts)
        # every host-side array (master params, optimizer state, offloaded gradients) is put
        # with this explicit sharding, so the host update never mixes memory spaces
        self._host_sh = eng.home_sharding(self.host)
        self.master = [jax.device_put(g, self._host_sh) for g in groups]
        if opt_mode != "host-at-sync":  # one optax state per sub-model
            self.opt_state = [jax.device_put(tx.init(g), self._host_sh) for g in self.master]
        else:
            self.opt_state = jax.device_put(tx.init(self.master), self._host_sh)

        def update(p, s, g):
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        self._update_jit = jax.jit(update, out_shardings=self._host_sh)
        self.host_space = eng.check_one_space((self.master, self.opt_state),
                                              "SwapTrainer host state")
        self._hook = None
        self.sub_bytes = [tree_bytes(g) for g in self.master]
        self._dev_sh = eng.home_sharding(self.dev)
        self.pinned: list[Any] | None = None
        self.notes: list[str] = []
        self._d2h_pinned = True
        if self.hostmem.kind == "pinned_host":
            self._pin_sh = eng.sharding(self.dev, "pinned_host")
            try:
                self.pinned = [self._to_pinned(g) for g in self.master]
            except Exception as e:  # listed but the runtime refuses the copy
                if host_memory == "pinned_host":
                    raise ValueError(f"host_memory='pinned_host': copying into pinned_host of "
                                     f"{self.dev} failed ({e!r:.200}); use 'cpu'") from e
                self.hostmem = eng.HostMemory("cpu", self.hostmem.kinds,
                                              f"pinned_host listed but unusable: {e!r:.120}")
        # CPU "device", thread/none modes: real memcpys into aligned staging slots, wrapped
        # zero-copy (the dispatch mode keeps the runtime's own asynchronous device_put)
        self._cpu_copy = (prefetch != "dispatch" and self.dev.platform == "cpu"
                          and self.host.platform == "cpu" and self.pinned is None)
        self._dev_update = opt_mode == "device-per-submodel"
        self._update_dev = jax.jit(update, out_shardings=self._dev_sh)
        self._master_sh = self._host_sh
        if self._dev_update and self.pinned is not None:  # master = the pinned copy itself
            self._master_sh = self._pin_sh
            self.master, self.pinned = self.pinned, None
            self.opt_state = [self._to_pinned(st) for st in self.opt_state]
            self._cpu_copy = False
        self.state_bytes = [tree_bytes(st) for st in self.opt_state] if self._dev_update else [
            0] * len(self.subs)
        self.zero_copy = self._cpu_copy and eng.zero_copy_supported(self.dev)
        self._arena = (eng.StagingArena(max(self.sub_bytes)) if self._cpu_copy else None)
        self.copy_cores = tuple(copy_cores) if copy_cores else None
        self._h2d_engine = self._d2h_engine = self._upd_engine = None
        self._tl: eng.Timeline | None = None

    @property
    def num_submodels(self) -> int:
        return len(self.subs)

    def params(self) -> Any:
        """The full master parameter tree (host arrays)."""
        return stg.merge_params([p for g in self.master for p in g])

    def close(self) -> None:
        """Stops the copy-engine threads (thread mode); the trainer stays usable."""
        for e in (self._h2d_engine, self._d2h_engine, self._upd_engine):
            if e is not None:
                e.close()
        self._h2d_engine = self._d2h_engine = self._upd_engine = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _update(self, p, s, g):
        """The host optimizer step: every operand must be in the host's default memory."""
        if self._hook is not None:  # a hook may hand back numpy or another placement
            g = jax.device_put(g, self._host_sh)
        got = eng.check_one_space((p, s, g), "host optimizer update")
        if got != self.host_space:
            raise ValueError(f"host optimizer update: operands live in {got}, the host state "
                             f"in {self.host_space}")
        return self._update_jit(p, s, g)

    # ---- device-per-submodel optimizer placement
    def _load_state(self, k: int):
        """H2D copy of sub-model k's optimizer state (device-per-submodel)."""
        if self._cpu_copy:
            return eng.cpu_copy(self.opt_state[k], self.dev)
        return jax.device_put(self.opt_state[k], self._dev_sh)

    def _load_state_sync(self, k: int):
        t0 = time.perf_counter()
        out = jax.block_until_ready(self._load_state(k))
        self._tl.add("h2d", k, t0, time.perf_counter())
        return out

    def _device_update(self, k: int, p, s, gp):
        """Optimizer step of sub-model k on the compute device (all operands there)."""
        got = eng.check_one_space((p, s, gp), "device optimizer update")
        if got[0] != str(self.dev):
            raise ValueError(f"device optimizer update: operands on {got}, expected {self.dev}")
        return self._update_dev(p, s, gp)

    def _to_master(self, tree):
        """D2H of new parameters / state into the master placement (async where it can)."""
        if self._cpu_copy:
            return eng.cpu_copy(tree, self.host)
        return jax.device_put(tree, self._master_sh)

    def _store_sync(self, k: int, p_new, s_new) -> None:
        """D2H thread (device-per-submodel): new params and state of k back to the host."""
        t0 = time.perf_counter()
        self.master[k], self.opt_state[k] = jax.block_until_ready(
            self._to_master((p_new, s_new)))
        self._tl.add("d2h", k, t0, time.perf_counter())

    # ---- copies
    def _to_host(self, tree):
        """D2H copy into the host's default memory (asynchronous where the backend is).

        In ``pinned_host`` mode the gradients go device -> pinned_host of the compute device
        (DMA) and then to the host device's default memory, both with explicit shardings.
        """
        if self.pinned is not None and self._d2h_pinned:
            try:
                return jax.device_put(jax.device_put(tree, self._pin_sh), self._host_sh)
            except Exception as e:  # runtime cannot do the hop: direct copy from now on
                self._d2h_pinned = False
                self.notes.append(f"pinned D2H hop failed ({e!r:.120}); direct device_put")
        return jax.device_put(tree, self._host_sh)

    def _to_pinned(self, g):
        return jax.block_until_ready(jax.device_put(g, self._pin_sh))

    def _load(self, k: int):
        """Dispatches the H2D copy of sub-model k (asynchronous where the backend is)."""
        src = self.pinned[k] if self.pinned is not None else self.master[k]
        return jax.device_put(src, self._dev_sh)

    def _load_sync(self, k: int):
        """H2D copy of sub-model k, complete on return (copy-engine thread)."""
        t0 = time.perf_counter()
        if self._cpu_copy:
            out = eng.cpu_copy(self.master[k], self.dev, self._arena, slot=k % 2)
        else:
            out = jax.block_until_ready(self._load(k))
        self._tl.add("h2d", k, t0, time.perf_counter())
        return out

    def _offload(self, k: int, gp):
        """D2H copy of sub-model k's gradients, complete on return."""
        t0 = time.perf_counter()
        if self._cpu_copy:
            out = eng.cpu_copy(gp, self.host)
        else:
            out = jax.block_until_ready(self._to_host(gp))
        self._tl.add("d2h", k, t0, time.perf_counter())
        return out

    def _offload_update(self, k: int, gp, grads: list[Any]):
        """D2H thread: offloads sub-model k's gradients, then queues its host update on the
        update thread (so the next offload overlaps this update); returns that future."""
        grads[k] = self._offload(k, gp)
        if self.opt_mode == "host-eager":
            return self._upd_engine.submit(self._update_sync, k, grads)
        return None

    def _update_sync(self, k: int, grads: list[Any]) -> None:
        """Update thread: host optimizer step of sub-model k (+ pinned mirror refresh)."""
        t0 = time.perf_counter()
        self._eager(k, grads)
        jax.block_until_ready(self.master[k])
        self._tl.add("update", k, t0, time.perf_counter())

    def _refresh_pinned(self, ks) -> None:
        if self.pinned is not None:
            for k in ks:
                self.pinned[k] = self._to_pinned(self.master[k])

    def step(self, batch: dict[str, Any], grad_hook=None) -> StepStats:
        """One training step (forward, backward, host update) on ``batch``.

        Args:
            batch: {"inputs", "targets"} int [B, T].
            grad_hook: optional ``hook(k, host_grads_k) -> host_grads_k`` applied to each
                sub-model's gradients on the host before its update (e.g. a cross-peer
                average); called for k = K-1 .. 0 in order on every peer (in thread mode on
                the update worker thread, still in that order).
        """
        if grad_hook is not None and self._dev_update:
            raise ValueError("grad_hook needs the gradients on the host: use opt_mode "
                             "'host-eager' or 'host-at-sync' with grad_hook")
        self._hook = grad_hook
        self._tl = eng.Timeline() if self.telemetry else None
        t0 = time.perf_counter()
        if self.prefetch == "thread":
            loss, h2d, d2h = self._step_thread(batch)
        else:
            loss, h2d, d2h = self._step_dispatch(batch)
        if self.opt_mode == "host-at-sync":
            if self._hook is not None:
                self._grads = [self._hook(k, self._grads[k]) for k in range(len(self.subs))]
                self._grads = jax.device_put(self._grads, self._host_sh)
            self.master, self.opt_state = self._update(self.master, self.opt_state,
                                                       self._grads)
            self._refresh_pinned(range(len(self.subs)))
        self._grads = None
        jax.block_until_ready(self.master)
        loss = float(loss)
        dt = time.perf_counter() - t0
        if self._tl is None:
            return StepStats(loss, dt, h2d, d2h)
        return StepStats(loss, dt, h2d, d2h, self._tl.summary(), list(self._tl.events))

    def _run(self, k: int, fn, *args):
        """Runs a sub-model function; with telemetry it blocks and records the compute."""
        if self._tl is None:
            return fn(*args)
        return self._tl.timed("compute", k, fn, *args)

    def _step_dispatch(self, b):
        kn = len(self.subs)
        tl = self._tl
        b = jax.device_put(b, self._dev_sh)
        xs: list[Any] = [None] * kn
        dev: list[Any] = [None] * kn
        h2d = 0

        def load(k):
            if self._cpu_copy:
                fn = lambda k: eng.cpu_copy(self.master[k], self.dev, self._arena, k % 2)  # noqa
            else:
                fn = self._load
            if tl is None:
                return fn(k)
            return tl.timed("h2d", k, fn, k)

        # ---- forward
        dev[0] = load(0)
        h2d += self.sub_bytes[0]
        x = None
        for k in range(kn - 1):
            if self.prefetch == "dispatch":
                dev[k + 1] = load(k + 1)  # dispatched before compute of k
            xs[k] = x
            x = self._run(k, self.subs[k].fwd, dev[k], x, b)
            dev[k] = None  # evict: the forward does not change weights
            if self.prefetch == "none":
                jax.block_until_ready(x)
                dev[k + 1] = load(k + 1)
            h2d += self.sub_bytes[k + 1]
        xs[kn - 1] = x
        # ---- backward (the last sub-model is still resident)
        grads: list[Any] = [None] * kn
        states: list[Any] = [None] * kn
        disp = self.prefetch == "dispatch"

        def load_state(k):  # device-per-submodel: optimizer state of k for its update
            if tl is None:
                return self._load_state(k)
            return tl.timed("h2d", k, self._load_state, k)

        if self._dev_update and disp:
            states[kn - 1] = load_state(kn - 1)
        if kn > 1 and disp:
            dev[kn - 2] = load(kn - 2)
            if self._dev_update:
                states[kn - 2] = load_state(kn - 2)
        loss, gp, g = self._run(kn - 1, self.subs[-1].loss_bwd, dev[kn - 1], xs[kn - 1], b)
        if self._dev_update and not disp:
            jax.block_until_ready(gp)
            states[kn - 1] = load_state(kn - 1)
        self._finish_dispatch(kn - 1, dev[kn - 1], states[kn - 1], gp, grads)
        dev[kn - 1] = states[kn - 1] = None
        for k in range(kn - 2, -1, -1):
            if not disp:
                jax.block_until_ready(g)
                dev[k] = load(k)
            h2d += self.sub_bytes[k]
            if k > 0 and disp:
                dev[k - 1] = load(k - 1)
                if self._dev_update:
                    states[k - 1] = load_state(k - 1)
            gp, g = self._run(k, self.subs[k].fwd_bwd, dev[k], xs[k], g, b)
            if self._dev_update and not disp:
                jax.block_until_ready(gp)
                states[k] = load_state(k)
            self._finish_dispatch(k, dev[k], states[k], gp, grads)
            dev[k] = states[k] = None
            xs[k] = None
        self._grads = grads
        n, ns = sum(self.sub_bytes), sum(self.state_bytes)
        return loss, h2d + ns, n + ns

    def _finish_dispatch(self, k, p_dev, s_dev, gp, grads):
        """After sub-model k's backward: its optimizer step (device or host) and offload."""
        if not self._dev_update:
            grads[k] = self._d2h_dispatch(k, gp)
            self._eager_timed(k, grads)
            return
        if self._tl is None:
            p_new, s_new = self._device_update(k, p_dev, s_dev, gp)
            self.master[k], self.opt_state[k] = self._to_master((p_new, s_new))
            return
        p_new, s_new = self._tl.timed("update", k, self._device_update, k, p_dev, s_dev, gp)
        self.master[k], self.opt_state[k] = self._tl.timed("d2h", k, self._to_master,
                                                           (p_new, s_new))

    def _d2h_dispatch(self, k, gp):
        if self._cpu_copy:
            fn = lambda g: eng.cpu_copy(g, self.host)  # noqa: E731
        else:
            fn = self._to_host
        if self._tl is None:
            return fn(gp)
        return self._tl.timed("d2h", k, fn, gp)

    def _eager_timed(self, k, grads):
        if self._tl is None or self.opt_mode != "host-eager":
            self._eager(k, grads)
            return
        t0 = time.perf_counter()
        self._eager(k, grads)
        jax.block_until_ready(self.master[k])
        self._tl.add("update", k, t0, time.perf_counter())

    def _step_thread(self, b):
        """Copy-engine schedule: H2D thread prefetches, D2H thread offloads, update thread
        applies the host optimizer."""
        if self._h2d_engine is None:
            self._h2d_engine = eng.CopyEngine("swap-h2d", self.copy_cores)
            self._d2h_engine = eng.CopyEngine("swap-d2h", self.copy_cores)
            self._upd_engine = eng.CopyEngine("swap-update", self.copy_cores)
        kn, tl = len(self.subs), self._tl
        b = jax.block_until_ready(jax.device_put(b, self._dev_sh))
        loads: dict[int, Any] = {}
        pending = []
        grads: list[Any] = [None] * kn
        xs: list[Any] = [None] * kn

        def start(k):
            loads[k] = self._h2d_engine.submit(self._load_sync, k)

        def wait(k):
            t0 = time.perf_counter()
            out = loads.pop(k).result()
            tl.add("stall", k, t0, time.perf_counter())
            return out

        start(0)
        x = None
        for k in range(kn - 1):
            start(k + 1)
            p = wait(k)
            xs[k] = x
            x = tl.timed("compute", k, self.subs[k].fwd, p, x, b)
            del p
        xs[kn - 1] = x
        p = wait(kn - 1)  # the last sub-model stays resident through backward
        states: dict[int, Any] = {}

        def start_bwd(k, params=True):
            if params:
                start(k)
            if self._dev_update:
                states[k] = self._h2d_engine.submit(self._load_state_sync, k)

        def finish(k, p, gp):
            if not self._dev_update:
                pending.append(self._d2h_engine.submit(self._offload_update, k, gp, grads))
                return
            t0 = time.perf_counter()
            s = states.pop(k).result()
            tl.add("stall", k, t0, time.perf_counter())
            p_new, s_new = tl.timed("update", k, self._device_update, k, p, s, gp)
            pending.append(self._d2h_engine.submit(self._store_sync, k, p_new, s_new))

        start_bwd(kn - 1, params=False)
        if kn > 1:
            start_bwd(kn - 2)
        loss, gp, g = tl.timed("compute", kn - 1, self.subs[-1].loss_bwd, p, x, b)
        finish(kn - 1, p, gp)
        del p
        for k in range(kn - 2, -1, -1):
            if k > 0:
                start_bwd(k - 1)
            p = wait(k)
            gp, g = tl.timed("compute", k, self.subs[k].fwd_bwd, p, xs[k], g, b)
            finish(k, p, gp)
            del p
            xs[k] = None
        for f in pending:
            upd = f.result()
            if upd is not None:
                upd.result()
        self._grads = grads
        n, ns = sum(self.sub_bytes), sum(self.state_bytes)
        return loss, 2 * n - self.sub_bytes[-1] + ns, n + ns

    def _eager(self, k: int, grads: list[Any]) -> None:
        if self.opt_mode == "host-eager":
            if self._hook is not None:
                grads[k] = self._hook(k, grads[k])
            self.master[k], self.opt_state[k] = self._update(
                self.master[k], self.opt_state[k], grads[k])
            grads[k] = None
            self._refresh_pinned([k])


def make_resident_step(cfg: ModelConfig, tx: optax.GradientTransformation):
    """All-resident reference: ``step(params, opt_state, batch) -> (params, opt_state, loss)``.

    A plain gradient step, so it is ``jaxlm.train.make_train_step`` over the offload loss
    (``stages.full_loss``, weight 1: the gradient is the mean-loss gradient unscaled).
    """
    import jax.numpy as jnp

    from jaxlm.train.state import TrainState
    from jaxlm.train.step import make_train_step

    def loss_fn(params, batch, rng):
        del rng
        return stg.full_loss(params, cfg, batch), jnp.ones((), jnp.float32)

    train_step = make_train_step(loss_fn, tx)
    rng = jax.random.key(0)  # unused by the loss; make_train_step folds in the step

    def step(params, opt_state, batch):
        state = TrainState(params, opt_state, jnp.zeros((), jnp.int32))
        state, metrics = train_step(state, batch, rng)
        return state.params, state.opt_state, metrics["loss"]

    return jax.jit(step)


def make_staged_resident_step(cfg: ModelConfig, cuts: Sequence[int]):
    """The swap schedule's compute with every sub-model already on the device (no copies).

    Returns ``step(groups, batch) -> (loss, grads)`` (forward, then backward with recompute);
    the timing anchor for the overlap efficiency of ``SwapTrainer``.
    """
    subs = stg.make_submodels(cfg, cuts)

    def step(groups, batch):
        xs, x = [], None
        for k in range(len(subs) - 1):
            xs.append(x)
            x = subs[k].fwd(groups[k], x, batch)
        loss, gp, g = subs[-1].loss_bwd(groups[-1], x, batch)
        grads = [None] * len(subs)
        grads[-1] = gp
        for k in range(len(subs) - 2, -1, -1):
            grads[k], g = subs[k].fwd_bwd(groups[k], xs[k], g, batch)
        return loss, grads

    return step


def run_steps(step: Callable[[dict], float], batches: Iterable[dict], *,
              target_loss: float | None = None) -> dict[str, Any]:
    """Runs ``step(batch) -> loss`` over ``batches`` (the swap and resident training loop).

    Returns:
        {"losses": [per step], "step_s": [wall seconds per step], "median_step_s": median
        over the steps after the first (compile), "time_to_target": {"step", "seconds"} of
        the first loss below ``target_loss`` or None, "final_loss"}.
    """
    losses: list[float] = []
    times: list[float] = []
    hit = None
    t0 = time.perf_counter()
    for i, batch in enumerate(batches):
        ts = time.perf_counter()
        losses.append(float(step(batch)))
        times.append(time.perf_counter() - ts)
        if hit is None and target_loss is not None and losses[-1] < target_loss:
            hit = {"step": i, "seconds": time.perf_counter() - t0}
    if not losses:
        raise ValueError("run_steps: no batches given; pass at least one batch")
    steady = float(np.median(times[1:])) if len(times) > 1 else times[0]
    return {"losses": losses, "step_s": times, "median_step_s": steady,
            "time_to_target": hit, "final_loss": losses[-1]}
