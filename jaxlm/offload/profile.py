"""Static analysis of a model split into ordered layers (embedding, blocks, head).

For every layer (``stages.layer_names``) at the training micro-batch shape:

* parameter / gradient / optimizer-state bytes from ``jax.eval_shape`` (nothing allocated);
* forward and forward+backward FLOPs and bytes accessed from
  ``jit(...).lower(...).compile().cost_analysis()``, and temporary (workspace) bytes
  from ``.memory_analysis()``;
* the boundary activation size leaving the layer;
* measured times (``measure=True``): forward, forward+backward (with recompute), and the
  host->device / device->host copy of the layer's parameters; otherwise the analytic
  fallback: FLOPs / ``hw.flops`` and bytes / ``hw.h2d`` from a hardware profile.

The result is a ``ModelProfile`` (JSON round-trip) that ``planner.plan`` consumes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlm.core.config import ModelConfig
from jaxlm.offload import stages as stg


class ProfileError(ValueError):
    """An inconsistent or incomplete profile."""


@dataclasses.dataclass(frozen=True)
class HardwareProfile:
    """Analytic fallback numbers (bytes/s, FLOP/s); load with ``HardwareProfile.from_json``."""

    name: str = "cpu-default"
    flops: float = 5e10
    h2d: float = 5e9
    d2h: float = 5e9
    copy_engines: int = 2

    @classmethod
    def from_json(cls, path: str | pathlib.Path) -> "HardwareProfile":
        d = json.loads(pathlib.Path(path).read_text())
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ProfileError(f"hardware profile {path}: unknown keys {sorted(unknown)}")
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class LayerProfile:
    """One layer's static and timed costs (bytes, FLOPs, seconds)."""

    name: str
    param_bytes: int
    grad_bytes: int
    opt_bytes: int
    act_out_bytes: int
    work_bytes: int
    fwd_flops: float
    bwd_flops: float
    t_fwd: float
    t_bwd: float
    t_h2d: float
    t_d2h: float


@dataclasses.dataclass(frozen=True)
class ModelProfile:
    """An ordered list of layer profiles plus where the times came from."""

    layers: tuple[LayerProfile, ...]
    batch_shape: tuple[int, int]
    source: str  # "measured" or "analytic:<hardware name>"
    copy_engines: int = 2

    def validate(self) -> None:
        """Raises ProfileError naming the first inconsistency."""
        if not self.layers:
            raise ProfileError("profile has no layers")
        names = [lp.name for lp in self.layers]
        if len(set(names)) != len(names):
            raise ProfileError(f"profile has duplicate layer names: {names}")
        for lp in self.layers:
            for f in dataclasses.fields(lp):
                v = getattr(lp, f.name)
                if f.name == "name":
                    continue
                if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                    raise ProfileError(f"layer {lp.name!r}: {f.name}={v!r} must be a finite "
                                       "non-negative number")
            if lp.param_bytes > 0 and lp.grad_bytes == 0:
                raise ProfileError(f"layer {lp.name!r} has parameters but grad_bytes=0")
            if lp.param_bytes > 0 and lp.t_h2d == 0:
                raise ProfileError(f"layer {lp.name!r} has parameters but t_h2d=0 (the load "
                                   "time is missing; re-profile or use the analytic fallback)")
            if lp.t_bwd < lp.t_fwd:
                raise ProfileError(f"layer {lp.name!r}: t_bwd={lp.t_bwd} < t_fwd={lp.t_fwd}; "
                                   "backward with recompute includes a forward")

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        return json.dumps(d, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "ModelProfile":
        try:
            d = json.loads(text)
            layers = tuple(LayerProfile(**lp) for lp in d["layers"])
            prof = cls(layers, tuple(d["batch_shape"]), d["source"], d.get("copy_engines", 2))
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise ProfileError(f"malformed profile JSON: {e}") from None
        prof.validate()
        return prof


def _nbytes(tree: Any) -> int:
    return int(sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def _cost(compiled) -> tuple[float, int]:
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else {}
    flops = float((ca or {}).get("flops", 0.0))
    try:
        temp = int(compiled.memory_analysis().temp_size_in_bytes)
    except Exception:  # noqa: BLE001 -- some backends do not report it
        temp = 0
    return max(flops, 0.0), temp


def _time(fn, *args, repeats: int = 3) -> float:
    jax.block_until_ready(fn(*args))
    ts = []
    import time

    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def profile_model(cfg: ModelConfig, batch: int, seq: int, *, tx: optax.GradientTransformation
                  | None = None, measure: bool = False, hw: HardwareProfile | None = None,
                  params: Any = None, host_device=None, compute_device=None) -> ModelProfile:
    """Profiles every layer of ``cfg`` at micro-batch ``[batch, seq]``.

    Args:
        cfg: model config (untied embeddings).
        batch, seq: micro-batch shape.
        tx: optimizer, for the optimizer-state bytes (default Adam: 2x params).
        measure: time forward / backward / copies on the compute device (needs ``params``
            or initialises random ones); otherwise use the analytic fallback ``hw``.
        hw: hardware profile for the analytic fallback (and the copy engines count).
        params: real parameters for measuring.
        host_device, compute_device: as in ``swap.default_devices``.

    Returns:
        A validated ``ModelProfile``.
    """
    stg.check_model(cfg)
    if batch < 1 or seq < 1:
        raise ValueError(f"profile: batch and seq must be >= 1, got {batch}, {seq}")
    hw = hw or HardwareProfile()
    tx = tx or optax.adam(1e-3)
    from jaxlm.core import init
    from jaxlm.offload.swap import default_devices

    h_dev, c_dev = default_devices()
    h_dev, c_dev = host_device or h_dev, compute_device or c_dev
    shapes = jax.eval_shape(lambda k: stg.split_params(init(k, cfg), cfg), jax.random.key(0))
    if measure:
        if params is None:
            params = init(jax.random.key(0), cfg)
        per_layer = jax.device_put(stg.split_params(params, cfg), h_dev)
    n = cfg.n_layers + 2
    tok = jax.ShapeDtypeStruct((batch, seq), jnp.int32)
    bshape = {"inputs": tok, "targets": tok}
    x_shape = jax.ShapeDtypeStruct((batch, seq, cfg.d_model), jnp.dtype(cfg.cdtype))
    rng = np.random.default_rng(0)
    real_batch = {k: jnp.asarray(rng.integers(0, cfg.vocab_size, (batch, seq)), jnp.int32)
                  for k in ("inputs", "targets")}
    out = []
    for i, name in enumerate(stg.layer_names(cfg)):
        sub = stg.SubModel(cfg, i, i + 1, n)
        p_shape = [shapes[i]]
        pb = _nbytes(p_shape)
        ob = _nbytes(jax.eval_shape(tx.init, p_shape))
        x_in = None if sub.first else x_shape
        f_c = jax.jit(sub.apply).lower(p_shape, x_in, bshape).compile()
        fwd_flops, _ = _cost(f_c)
        if sub.last:
            b_c = jax.jit(sub._make_loss_bwd()).lower(p_shape, x_in, bshape).compile()
            act = 4
        else:
            b_c = jax.jit(sub._make_fwd_bwd()).lower(p_shape, x_in, x_shape, bshape).compile()
            act = _nbytes(x_shape)
        bwd_flops, work = _cost(b_c)
        if measure:
            pl = [per_layer[i]]
            pd = jax.device_put(pl, c_dev)
            rb = jax.device_put(real_batch, c_dev)
            xr = None if sub.first else jnp.zeros(x_shape.shape, x_shape.dtype, device=c_dev)
            # the AOT executables are bound to the default device: time the jitted functions
            t_fwd = _time(sub.fwd, pd, xr, rb)
            if sub.last:
                t_bwd = _time(sub.loss_bwd, pd, xr, rb)
            else:
                g = jnp.ones(x_shape.shape, x_shape.dtype, device=c_dev)
                t_bwd = _time(sub.fwd_bwd, pd, xr, g, rb)
            t_h2d = _time(lambda: jax.device_put(pl, c_dev)) if pb else 0.0
            t_d2h = _time(lambda: jax.device_put(pd, h_dev)) if pb else 0.0
            t_bwd = max(t_bwd, t_fwd)
        else:
            t_fwd = fwd_flops / hw.flops
            t_bwd = max(bwd_flops / hw.flops, t_fwd)
            t_h2d, t_d2h = pb / hw.h2d, pb / hw.d2h
        out.append(LayerProfile(name, pb, pb, ob, act, work, fwd_flops, bwd_flops,
                                t_fwd, t_bwd, t_h2d, t_d2h))
    src = "measured" if measure else f"analytic:{hw.name}"
    prof = ModelProfile(tuple(out), (batch, seq), src, hw.copy_engines)
    prof.validate()
    return prof


def synthetic_profile(n_blocks: int, *, block_params: int = 1_000_000, embed_params: int = 0,
                      head_params: int = 0, t_fwd_block: float = 1e-3, bytes_per_s: float = 1e9,
                      act_bytes: int = 1000, work_bytes: int = 0,
                      head_fwd: float | None = None) -> ModelProfile:
    """A hand-made profile (fp32 params, Adam) for planner tests and what-if studies."""
    def lp(name, p, tf):
        pb = 4 * p
        return LayerProfile(name, pb, pb, 2 * pb, act_bytes, work_bytes, tf, 3 * tf, tf, 3 * tf,
                            pb / bytes_per_s, pb / bytes_per_s)

    layers = [lp("embed", embed_params, 0.0)]
    layers += [lp(f"block_{i}", block_params, t_fwd_block) for i in range(n_blocks)]
    layers.append(lp("head", head_params, t_fwd_block if head_fwd is None else head_fwd))
    return ModelProfile(tuple(layers), (1, 1), "synthetic", 2)
