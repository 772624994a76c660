"""Measured swap bandwidth and overlap efficiency (shared by the benchmark and the repro entry).

Overlap efficiency ``eta = t(staged, all resident) / t(swap step)``: the same sub-model
functions and host optimizer, once with every sub-model already on the compute device and
once swapped in from the host with prefetch. ``eta_monolithic`` compares with one fused
jitted step of the whole model instead. Timings are medians of a few repeats after
warm-up; on a shared, loaded CPU they are noisy (report them with that caveat).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import optax

from jaxlm.core import init
from jaxlm.core.config import ModelConfig
from jaxlm.offload import stages as stg
from jaxlm.offload import swap


def _median_time(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def copy_bandwidth(nbytes: int, src: jax.Device, dst: jax.Device, repeats: int = 5) -> float:
    """Achieved ``jax.device_put`` bandwidth src -> dst in bytes/s (float32 buffer)."""
    x = jax.device_put(np.ones(nbytes // 4, np.float32), src)
    jax.block_until_ready(jax.device_put(x, dst))
    t = _median_time(lambda: jax.device_put(x, dst), repeats)
    return nbytes / t


def random_batch(cfg: ModelConfig, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.integers(0, cfg.vocab_size, (batch, seq)).astype(np.int32)
            for k in ("inputs", "targets")}


def measure_overlap(cfg: ModelConfig, batch: int, seq: int, cuts: Sequence[int], *,
                    repeats: int = 3, seed: int = 0,
                    tx: optax.GradientTransformation | None = None) -> dict[str, Any]:
    """Times one swap step against the all-resident anchors.

    Returns:
        dict with t_swap, t_swap_noprefetch, t_staged_resident, t_monolithic (s), eta,
        eta_noprefetch, eta_monolithic, h2d_bytes per step, tokens_per_s (swap).
    """
    tx = tx or optax.adam(1e-3)
    params = init(jax.random.key(seed), cfg)
    b = random_batch(cfg, batch, seq, seed)
    tr = swap.SwapTrainer(cfg, params, tx, cuts, prefetch=True)
    tr_np = swap.SwapTrainer(cfg, params, tx, cuts, prefetch=False)
    for t in (tr, tr_np):
        t.step(b)
    t_swap = float(np.median([tr.step(b).step_time for _ in range(repeats)]))
    t_np = float(np.median([tr_np.step(b).step_time for _ in range(repeats)]))
    # staged, all resident: same sub-model functions and host update, no copies
    staged = swap.make_staged_resident_step(cfg, cuts)
    groups_dev = jax.device_put(stg.group(stg.split_params(params, cfg), cuts), tr.dev)
    bd = jax.device_put(b, tr.dev)
    upd = tr._update
    groups_host = tr.master
    opt = tr.opt_state

    def staged_step():
        loss, grads = staged(groups_dev, bd)
        out = [upd(groups_host[k], opt[k], jax.device_put(grads[k], tr.host))
               for k in range(len(grads))]
        return loss, out

    t_staged = _median_time(staged_step, repeats)
    ref = swap.make_resident_step(cfg, tx)
    p_dev = jax.device_put(params, tr.dev)
    s_dev = jax.device_put(tx.init(params), tr.dev)
    jax.block_until_ready(ref(p_dev, s_dev, bd))
    t_mono = _median_time(lambda: ref(p_dev, s_dev, bd), repeats)
    stats = tr.step(b)
    return {
        "cuts": list(cuts), "num_submodels": tr.num_submodels, "batch": batch, "seq": seq,
        "t_swap": t_swap, "t_swap_noprefetch": t_np, "t_staged_resident": t_staged,
        "t_monolithic": t_mono, "eta": t_staged / t_swap, "eta_noprefetch": t_staged / t_np,
        "eta_monolithic": t_mono / t_swap, "h2d_bytes": stats.h2d_bytes,
        "tokens_per_s": batch * seq / t_swap, "devices": f"{tr.host} -> {tr.dev}",
    }
