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

``resident_step`` is the all-resident reference (one jitted step over the monolithic
model with the same optax transformation); ``staged_resident_step`` runs the same
sub-model functions with everything already on the device (the overlap-efficiency anchor).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import jax
import optax

from jaxlm.core.config import ModelConfig
from jaxlm.offload import stages as stg

OPT_MODES = ("host-eager", "host-at-sync")


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
    """Telemetry of one swap step (seconds; wall clock, host side)."""

    loss: float
    step_time: float
    h2d_bytes: int
    d2h_bytes: int


def tree_bytes(tree: Any) -> int:
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


class SwapTrainer:
    """Trains a model whose master copy lives on the host, swapping sub-models in.

    Args:
        cfg: model config (untied embeddings).
        params: full parameter tree (any placement; copied to the host device).
        tx: the optax transformation.
        cuts: sub-model boundaries over ``stages.layer_names(cfg)`` (e.g. a planner result).
        opt_mode: "host-eager" or "host-at-sync".
        host_device, compute_device: override ``default_devices()``.
        prefetch: dispatch the copy of the next sub-model before the current compute
            (False: load each sub-model right before it runs; for measuring overlap).
    """

    def __init__(self, cfg: ModelConfig, params: Any, tx: optax.GradientTransformation,
                 cuts: Sequence[int], *, opt_mode: str = "host-eager",
                 host_device: jax.Device | None = None, compute_device: jax.Device | None = None,
                 prefetch: bool = True):
        if opt_mode not in OPT_MODES:
            raise ValueError(f"opt_mode must be one of {OPT_MODES}, got {opt_mode!r}")
        h, c = default_devices()
        self.host = host_device or h
        self.dev = compute_device or c
        self.cfg = cfg
        self.tx = tx
        self.opt_mode = opt_mode
        self.prefetch = prefetch
        self.subs = stg.make_submodels(cfg, cuts)
        self.cuts = list(cuts)
        groups = stg.group(stg.split_params(params, cfg), cuts)
        self.master = [jax.device_put(g, self.host) for g in groups]
        if opt_mode == "host-eager":
            self.opt_state = [jax.device_put(tx.init(g), self.host) for g in self.master]
        else:
            self.opt_state = jax.device_put(tx.init(self.master), self.host)

        def update(p, s, g):
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        self._update = jax.jit(update)
        self._hook = None
        self.sub_bytes = [tree_bytes(g) for g in self.master]

    @property
    def num_submodels(self) -> int:
        return len(self.subs)

    def params(self) -> Any:
        """The full master parameter tree (host arrays)."""
        return stg.merge_params([p for g in self.master for p in g])

    def _load(self, k: int):
        return jax.device_put(self.master[k], self.dev)

    def step(self, batch: dict[str, Any], grad_hook=None) -> StepStats:
        """One training step (forward, backward, host update) on ``batch``.

        Args:
            batch: {"inputs", "targets"} int [B, T].
            grad_hook: optional ``hook(k, host_grads_k) -> host_grads_k`` applied to each
                sub-model's gradients on the host before its update (e.g. a cross-peer
                average); called for k = K-1 .. 0 in order on every peer.
        """
        self._hook = grad_hook
        t0 = time.perf_counter()
        kn = len(self.subs)
        b = jax.device_put(batch, self.dev)
        xs: list[Any] = [None] * kn
        dev: list[Any] = [None] * kn
        h2d = d2h = 0
        # ---- forward
        dev[0] = self._load(0)
        h2d += self.sub_bytes[0]
        x = None
        for k in range(kn - 1):
            if self.prefetch:
                dev[k + 1] = self._load(k + 1)  # dispatched before compute of k
            xs[k] = x
            x = self.subs[k].fwd(dev[k], x, b)
            dev[k] = None  # evict: the forward does not change weights
            if not self.prefetch:
                jax.block_until_ready(x)
                dev[k + 1] = self._load(k + 1)
            h2d += self.sub_bytes[k + 1]
        xs[kn - 1] = x
        # ---- backward (the last sub-model is still resident)
        grads: list[Any] = [None] * kn
        if kn > 1 and self.prefetch:
            dev[kn - 2] = self._load(kn - 2)
        loss, gp, g = self.subs[-1].loss_bwd(dev[kn - 1], xs[kn - 1], b)
        dev[kn - 1] = None
        grads[kn - 1] = jax.device_put(gp, self.host)
        d2h += self.sub_bytes[kn - 1]
        self._eager(kn - 1, grads)
        for k in range(kn - 2, -1, -1):
            if not self.prefetch:
                jax.block_until_ready(g)
                dev[k] = self._load(k)
            h2d += self.sub_bytes[k]
            if k > 0 and self.prefetch:
                dev[k - 1] = self._load(k - 1)
            gp, g = self.subs[k].fwd_bwd(dev[k], xs[k], g, b)
            dev[k] = None
            xs[k] = None
            grads[k] = jax.device_put(gp, self.host)
            d2h += self.sub_bytes[k]
            self._eager(k, grads)
        if self.opt_mode == "host-at-sync":
            if self._hook is not None:
                grads = [self._hook(k, grads[k]) for k in range(kn)]
            self.master, self.opt_state = self._update(self.master, self.opt_state, grads)
        jax.block_until_ready(self.master)
        loss = float(loss)
        return StepStats(loss, time.perf_counter() - t0, h2d, d2h)

    def _eager(self, k: int, grads: list[Any]) -> None:
        if self.opt_mode == "host-eager":
            if self._hook is not None:
                grads[k] = self._hook(k, grads[k])
            self.master[k], self.opt_state[k] = self._update(
                self.master[k], self.opt_state[k], grads[k])
            grads[k] = None


def make_resident_step(cfg: ModelConfig, tx: optax.GradientTransformation):
    """All-resident reference: ``step(params, opt_state, batch) -> (params, opt_state, loss)``."""

    def step(params, opt_state, batch):
        loss, g = jax.value_and_grad(stg.full_loss)(params, cfg, batch)
        u, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, u), opt_state, loss

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
