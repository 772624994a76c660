"""Measured swap bandwidth and overlap efficiency (the harness behind ``bench_offload``).

Overlap efficiency ``eta = t(staged, all resident) / t(swap step)``: the same sub-model
functions and host optimizer, once with every sub-model already on the compute device and
once swapped in from the host with prefetch (``measure_overlap``, per prefetch mode).
``copy_compute_overlap`` is the two-operation micro-benchmark
``(T_compute + T_copy - T_both) / min(T_compute, T_copy)``; ``bandwidths`` the H2D/D2H
bandwidths (pageable numpy vs ``pinned_host``). ``eta_monolithic`` compares with one fused
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
from jaxlm.offload import engines as eng
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
                    tx: optax.GradientTransformation | None = None,
                    modes: Sequence[str] = ("dispatch", "thread", "none"),
                    host_memory: str = "auto", monolithic: bool = True,
                    copy_cores: Sequence[int] | None = None,
                    opt_mode: str = "host-eager") -> dict[str, Any]:
    """Times one swap step per prefetch mode against the all-resident anchors.

    Overlap efficiency (the spec's eta_swap) ``eta_swap_<mode> = t(staged compute, all
    resident) / t(swap step, mode)``; ``eta_vs_staged_update_<mode>`` uses the staged
    compute plus a serial host update as the anchor; ``hidden_<mode>`` is the fraction of
    the serial schedule's exposed time that the mode hides:
    ``(t_none - t_mode) / (t_none - t_compute)``.

    The precondition (compute per sub-model vs its load time) comes from one serial
    ("none" mode) step with telemetry, where every copy and compute runs alone:
    ``compute_over_load_fwd_*`` = forward compute of k / load of k+1 (min and median over
    k). The same serial phases feed the spec's section-4.3 schedule model
    (``predicted_schedule``): ``eta_pred_*`` is what perfect overlap of the measured phases
    would give, with the copy lanes in parallel or sharing one core. The thread-mode step's
    own phases (copies slowed down by the concurrent compute) are reported as
    ``phases`` / ``compute_over_load_fwd_concurrent_*``.

    Args:
        copy_cores: cores for the thread mode's copy/update workers (``CorePartition``).
        opt_mode: the trainers' optimizer placement (``swap.OPT_MODES``).

    Returns:
        dict with t_<mode>, eta_swap_<mode>, hidden_<mode>, t_staged_compute_only,
        t_staged_resident, t_monolithic, eta (best prefetching mode), phases (thread mode),
        serial_phases, compute_over_load_fwd_*, eta_pred_*, events.
    """
    tx = tx or optax.adam(1e-3)
    params = init(jax.random.key(seed), cfg)
    b = random_batch(cfg, batch, seq, seed)
    out: dict[str, Any] = {"cuts": list(cuts), "batch": batch, "seq": seq, "opt_mode": opt_mode}
    trainers = {m: swap.SwapTrainer(cfg, params, tx, cuts, prefetch=m, host_memory=host_memory,
                                    telemetry=(m == "none"), copy_cores=copy_cores,
                                    opt_mode=opt_mode)
                for m in modes}
    tr0 = next(iter(trainers.values()))
    for t in trainers.values():
        t.step(b)
    # staged, all resident: same sub-model functions and host update, no copies
    staged = swap.make_staged_resident_step(cfg, cuts)
    groups_dev = jax.device_put(stg.group(stg.split_params(params, cfg), cuts), tr0.dev)
    bd = jax.device_put(b, tr0.dev)
    upd, groups_host, opt = tr0._update, tr0.master, tr0.opt_state

    cpu_path = tr0.dev.platform == "cpu" and tr0.host.platform == "cpu"

    def to_host(g):  # the trainers' fastest D2H path (memcpy on CPU)
        return eng.cpu_copy(g, tr0.host) if cpu_path else tr0._to_host(g)

    def staged_step():
        loss, grads = staged(groups_dev, bd)
        if tr0.opt_mode != "host-eager":
            return loss, grads
        return loss, [upd(groups_host[k], opt[k], to_host(grads[k]))
                      for k in range(len(grads))]

    jax.block_until_ready(staged_step())
    jax.block_until_ready(staged(groups_dev, bd))

    def timed(fn):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {m: [] for m in (*modes, "staged", "compute_only")}
    for _ in range(repeats):  # interleaved, so that load drift hits every variant alike
        times["staged"].append(timed(staged_step))
        times["compute_only"].append(timed(lambda: staged(groups_dev, bd)))
        for m, t in trainers.items():
            times[m].append(t.step(b).step_time)
    t_staged = float(np.median(times["staged"]))
    out["t_staged_compute_only"] = float(np.median(times["compute_only"]))
    out.update({"num_submodels": tr0.num_submodels, "t_staged_resident": t_staged,
                "devices": f"{tr0.host} -> {tr0.dev}", "host_memory": tr0.hostmem.kind,
                "host_memory_note": tr0.hostmem.note, "h2d_bytes": tr0.step(b).h2d_bytes})
    t_c = out["t_staged_compute_only"]
    for m in modes:
        out[f"t_{m}"] = float(np.median(times[m]))
        # the spec's eta_swap (section 4.3): staged compute alone over the whole swap step
        out[f"eta_swap_{m}"] = t_c / out[f"t_{m}"]
        # vs the staged compute plus the serial host update (> 1 when the update is hidden)
        out[f"eta_vs_staged_update_{m}"] = t_staged / out[f"t_{m}"]
    if "none" in modes:
        serial = out["t_none"] - t_c  # copies (and update) exposed by the serial schedule
        for m in modes:
            if m != "none":
                out[f"hidden_{m}"] = ((out["t_none"] - out[f"t_{m}"]) / serial if serial > 0
                                      else float("nan"))
    pre = [m for m in modes if m != "none"]
    out["eta"] = max(out[f"eta_swap_{m}"] for m in pre) if pre else out["eta_swap_none"]
    out["eta_mode"] = max(pre, key=lambda m: out[f"eta_swap_{m}"]) if pre else "none"
    kn = tr0.num_submodels
    if "none" in trainers:  # serial phases: every copy and compute measured alone
        sers = [trainers["none"].step(b) for _ in range(max(1, min(repeats, 3)))]
        ph = [phase_table(st.events, kn) for st in sers]
        serial = {key: [float(np.median([p[key][k] for p in ph])) for k in range(kn)]
                  for key in ph[0]}
        out["serial_phases"] = serial
        r = _fwd_ratios(serial, kn)
        out["compute_over_load_fwd_min"] = min(r) if r else float("nan")
        out["compute_over_load_fwd_median"] = float(np.median(r)) if r else float("nan")
        out.update(predicted_schedule(serial))
    if "thread" in trainers:
        st = trainers["thread"].step(b)
        out["phases"] = {k: v for k, v in st.phases.items() if k != "per_submodel"}
        out["per_submodel"] = st.phases["per_submodel"]
        out["events"] = st.events
        r = _fwd_ratios(phase_table(st.events, kn), kn)
        out["compute_over_load_fwd_concurrent_min"] = min(r) if r else float("nan")
        if "none" not in trainers:
            out["compute_over_load_fwd_min"] = out["compute_over_load_fwd_concurrent_min"]
            out["compute_over_load_fwd_median"] = float(np.median(r)) if r else float("nan")
    for t in trainers.values():
        t.close()
    if monolithic:  # one fused jitted step (no remat: may not fit where the swap does)
        try:
            ref = swap.make_resident_step(cfg, tx)
            p_dev = jax.device_put(params, tr0.dev)
            s_dev = jax.device_put(tx.init(params), tr0.dev)
            jax.block_until_ready(ref(p_dev, s_dev, bd))
            out["t_monolithic"] = _median_time(lambda: ref(p_dev, s_dev, bd), repeats)
            out["eta_monolithic"] = out["t_monolithic"] / min(out[f"t_{m}"] for m in modes)
        except Exception as e:  # e.g. out of device memory: keep the swap numbers
            out["monolithic_error"] = repr(e)[:300]
    out["tokens_per_s"] = batch * seq / min(out[f"t_{m}"] for m in modes)
    return out


def phase_table(events: Sequence[tuple[str, int, float, float]], kn: int
                ) -> dict[str, list[float]]:
    """Per-sub-model phase times (s) from one step's telemetry events.

    Keys: ``fwd`` (first compute of k; for the last sub-model its loss+backward), ``bwd``
    (second compute of k; 0 for the last), ``load`` (first H2D of k), ``reload`` (second
    H2D of k, for the backward), ``d2h``, ``update``.
    """
    out = {key: [0.0] * kn for key in ("fwd", "bwd", "load", "reload", "d2h", "update")}
    seen: dict[tuple[str, int], int] = {}
    for lane, k, a, e in sorted(events, key=lambda ev: ev[2]):
        n = seen.get((lane, k), 0)
        seen[(lane, k)] = n + 1
        key = {("compute", 0): "fwd", ("compute", 1): "bwd", ("h2d", 0): "load",
               ("h2d", 1): "reload"}.get((lane, min(n, 1)), lane if n == 0 else None)
        if key in out and 0 <= k < kn:
            out[key][k] += e - a
    return out


def _fwd_ratios(ph: dict[str, list[float]], kn: int) -> list[float]:
    """Forward compute of k over the load of k+1 it must hide (k = 0 .. K-2)."""
    return [ph["fwd"][k] / ph["load"][k + 1] for k in range(kn - 1)
            if ph["load"][k + 1] > 0 and ph["fwd"][k] > 0]


def predicted_schedule(ph: dict[str, list[float]]) -> dict[str, float]:
    """Step time of the prefetching schedule from serially measured phases (spec 4.3).

    Forward: ``H_0 + sum_k max(Cf_k, H_{k+1})``, the last sub-model's loss+backward hiding
    the reload of K-2; backward: ``sum_k max(Cb_k, IO_k) + D_0 + U_0`` with
    ``IO_k = max(H_{k-1}, D_{k+1}, U_{k+1})`` when the copy lanes run in parallel
    (``parallel``: a GPU's copy engines plus host cores) or their sum when they share one
    core (``one_core``: a 2-core CPU with one copy core).

    Returns:
        t_compute_sum, t_pred_<lanes>, eta_pred_<lanes> (= compute / predicted step) and
        t_serial_sum (everything back to back: the "none" schedule).
    """
    kn = len(ph["fwd"])
    cf, cb, h, r, d, u = (ph[k] for k in ("fwd", "bwd", "load", "reload", "d2h", "update"))
    comp = sum(cf) + sum(cb)
    out = {"t_compute_sum": comp,
           "t_serial_sum": comp + sum(h) + sum(r) + sum(d) + sum(u)}
    for lanes, io in (("parallel", max), ("one_core", lambda *x: sum(x))):
        t = h[0]
        for k in range(kn - 1):
            t += max(cf[k], h[k + 1])
        t += max(cf[kn - 1], r[kn - 2] if kn > 1 else 0.0)
        for k in range(kn - 2, -1, -1):
            t += max(cb[k], io(r[k - 1] if k > 0 else 0.0, d[k + 1], u[k + 1]))
        t += d[0] + u[0]
        out[f"t_pred_{lanes}"] = t
        out[f"eta_pred_{lanes}"] = comp / t if t > 0 else float("nan")
    return out


def overlap_sweep(cfg: ModelConfig, shapes: Sequence[tuple[int, int]], cuts: Sequence[int],
                  **kw) -> list[dict[str, Any]]:
    """``measure_overlap`` (thread vs none) at several (batch, seq): eta vs compute/load.

    Returns one summary row per shape (batch, seq, compute_over_load_fwd_min/median,
    eta_swap_thread, eta_swap_none, eta_pred_*, t_*).
    """
    keys = ("batch", "seq", "compute_over_load_fwd_min", "compute_over_load_fwd_median",
            "eta_swap_thread", "eta_swap_none", "hidden_thread", "eta_pred_parallel",
            "eta_pred_one_core", "t_staged_compute_only", "t_thread", "t_none")
    rows = []
    for batch, seq in shapes:
        r = measure_overlap(cfg, batch, seq, cuts, modes=("thread", "none"), monolithic=False,
                            **kw)
        rows.append({k: r.get(k) for k in keys})
    return rows


def copy_compute_overlap(nbytes: int, host: jax.Device, dev: jax.Device, *,
                         compute_over_copy: float = 2.0, repeats: int = 5,
                         pinned: bool = False, copy_cores: Sequence[int] | None = None
                         ) -> dict[str, Any]:
    """Micro-benchmark: one copy of ``nbytes`` host->dev and one compute on dev, alone and
    together.

    The compute (a jitted chain of square matmuls on ``dev``) is sized by a short
    calibration so that ``T_compute ~ compute_over_copy * T_copy``. Overlap efficiency
    ``(T_compute + T_copy - T_both) / min(T_compute, T_copy)`` (1: the copy is completely
    hidden, 0: serial). Two ways to issue both: "thread" (the copy on a copy-engine thread,
    as the swap executor's thread mode) and "dispatch" (``jax.device_put`` then the compute,
    relying on the runtime's asynchronous copy).

    Returns:
        dict with t_compute, t_copy, t_both_<way>, overlap_eff_<way> and the sizes.
    """
    n = nbytes // 4
    src_np = eng.aligned_empty((n,), np.float32)
    src_np[:] = 1.0
    if pinned:
        src = jax.block_until_ready(jax.device_put(src_np, eng.sharding(dev, "pinned_host")))
    else:
        src = jax.block_until_ready(jax.device_put(src_np, host))
    arena = eng.StagingArena(nbytes, 1)
    cpu_path = dev.platform == "cpu" and host.platform == "cpu" and not pinned
    dev_sh = eng.sharding(dev, "device" if "device" in eng.memory_kinds(dev) else None)

    def copy():
        if cpu_path:
            return eng.cpu_copy(src, dev, arena, 0)
        return jax.block_until_ready(jax.device_put(src, dev_sh))

    def copy_dispatch():
        if cpu_path:
            return jax.device_put(src, dev)
        return jax.device_put(src, dev_sh)

    copy()
    t_copy = _median_time(copy, repeats)
    # calibrate the compute: reps of an [m, m] matmul chain
    m = 1024 if dev.platform != "cpu" else 512
    a = jax.device_put(np.full((m, m), 1.0 / m, np.float32), dev)

    def make(reps):
        def f(x):
            return jax.lax.fori_loop(0, reps, lambda i, y: jax.numpy.tanh(y @ y), x)
        return jax.jit(f)

    f = make(8)
    jax.block_until_ready(f(a))
    t8 = _median_time(lambda: f(a), 3)
    reps = int(min(max(1, round(8 * compute_over_copy * t_copy / max(t8, 1e-6))), 100_000))
    f = make(reps)
    jax.block_until_ready(f(a))
    eng_thread = eng.CopyEngine("bench-h2d", copy_cores)

    def both_thread():
        fut = eng_thread.submit(copy)
        r = jax.block_until_ready(f(a))
        return fut.result(), r

    def both_dispatch():
        y = copy_dispatch()
        r = f(a)
        return jax.block_until_ready((y, r))

    fns = {"compute": lambda: f(a), "copy": copy, "thread": both_thread,
           "dispatch": both_dispatch}
    for fn in fns.values():
        jax.block_until_ready(fn())
    ts: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):  # interleaved: load drift hits every variant alike
        for k, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            ts[k].append(time.perf_counter() - t0)
    t_comp = float(np.median(ts["compute"]))
    t_copy = float(np.median(ts["copy"]))
    res = {"nbytes": nbytes, "pinned_source": pinned, "matmul": m, "reps": reps,
           "t_compute": t_comp, "t_copy": t_copy, "copy_GBs": nbytes / t_copy / 1e9}
    for name in ("thread", "dispatch"):
        t = float(np.median(ts[name]))
        res[f"t_both_{name}"] = t
        res[f"overlap_eff_{name}"] = (t_comp + t_copy - t) / min(t_comp, t_copy)
        # per-repeat efficiencies (same repeat's compute/copy), median: robust to drift
        per = [(c + l - b) / min(c, l) for c, l, b in zip(ts["compute"], ts["copy"], ts[name])]
        res[f"overlap_eff_{name}_paired_median"] = float(np.median(per))
    eng_thread.close()
    return res


def contention(dev: jax.Device, copy_cores: Sequence[int] | None = None, *,
               compute_cores: Sequence[int] | None = None,
               nbytes: int = 64 * 2**20, repeats: int = 5) -> dict[str, Any]:
    """Does a concurrent copy slow the compute down? (CPU: do the cores share resources?)

    Times a jitted matmul chain on ``dev`` alone, while a background thread (pinned to
    ``copy_cores``) loops numpy memcpys of ``nbytes`` (memory traffic, as the copy engine
    makes), and while it loops a cache-resident elementwise kernel (pure compute, no memory
    traffic); and the memcpy bandwidth alone and during the compute. A slowdown under
    ``spin`` means the two "cores" share execution resources (e.g. one physical core's
    hyperthreads, or vCPU time on an oversubscribed host); a slowdown only under
    ``memcpy`` means shared cache / memory bandwidth. Either makes a copy that "overlaps"
    the compute still cost compute time, capping the overlap efficiency below 1.

    Calibration: ``compute_alone_cpu_per_wall`` (process CPU seconds per wall second of
    the compute alone: ~1 means XLA really computes on one thread) and, with
    ``compute_cores``, the spin pinned to the *compute* core (time-slicing one core: ~2x).

    Returns:
        dict with t_compute_alone, t_compute_with_memcpy, t_compute_with_spin
        (+ _same_core), the slowdowns (ratios), memcpy_GBs_alone and
        memcpy_GBs_during_compute.
    """
    import resource
    import threading

    n = nbytes // 4
    src = eng.aligned_empty((n,), np.float32)
    src[:] = 1.0
    dst = eng.aligned_empty((n,), np.float32)
    small = np.ones(4096, np.float32)
    m = 512
    a = jax.device_put(np.full((m, m), 1.0 / m, np.float32), dev)
    f = jax.jit(lambda x: jax.lax.fori_loop(0, 8, lambda i, y: jax.numpy.tanh(y @ y), x))
    jax.block_until_ready(f(a))
    stop = threading.Event()
    copied = [0, 0.0]

    def bg(kind, cores):
        eng.pin_thread(cores)
        t0 = time.perf_counter()
        while not stop.is_set():
            if kind == "memcpy":
                np.copyto(dst, src)
                copied[0] += nbytes
            else:
                for _ in range(50):
                    np.sin(small, out=small)
        copied[1] = time.perf_counter() - t0

    def with_bg(kind, cores=copy_cores):
        stop.clear()
        copied[:] = [0, 0.0]
        th = threading.Thread(target=bg, args=(kind, cores), daemon=True)
        th.start()
        time.sleep(0.002)
        t = _median_time(lambda: f(a), repeats)
        stop.set()
        th.join()
        return t, copied[0] / max(copied[1], 1e-9) / 1e9

    out: dict[str, Any] = {"nbytes": nbytes, "copy_cores": list(copy_cores or [])}
    r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    out["t_compute_alone"] = _median_time(lambda: f(a), repeats)
    r1, w1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    out["compute_alone_cpu_per_wall"] = ((r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
                                         / (w1 - w0))
    out["t_compute_with_memcpy"], out["memcpy_GBs_during_compute"] = with_bg("memcpy")
    out["t_compute_with_spin"], _ = with_bg("spin")
    out["t_compute_alone_after"] = _median_time(lambda: f(a), repeats)
    base = min(out["t_compute_alone"], out["t_compute_alone_after"])
    out["slowdown_memcpy"] = out["t_compute_with_memcpy"] / base
    out["slowdown_spin"] = out["t_compute_with_spin"] / base
    if compute_cores:
        out["t_compute_with_spin_same_core"], _ = with_bg("spin", compute_cores)
        out["slowdown_spin_same_core"] = out["t_compute_with_spin_same_core"] / base
    t_copy = _median_time(lambda: np.copyto(dst, src), repeats)
    out["memcpy_GBs_alone"] = nbytes / t_copy / 1e9
    return out


def bandwidths(nbytes: int, host: jax.Device, dev: jax.Device, repeats: int = 5
               ) -> dict[str, Any]:
    """Achieved copy bandwidths (GB/s) between host memory and ``dev``.

    * ``h2d_pageable``: ``jax.device_put(numpy array, dev)``;
    * ``d2h_pageable``: ``jax.device_put(device array, CPU backend device)``;
    * ``h2d_pinned`` / ``d2h_pinned``: ``pinned_host`` <-> ``device`` memory of ``dev`` where
      the device lists ``pinned_host`` (else the reason it was skipped);
    * ``hop_pinned_to_host`` / ``hop_host_to_pinned``: ``pinned_host`` of ``dev`` <-> the
      host device's default memory (the swap executor's gradient hop and mirror refresh);
    * ``memcpy``: a numpy memcpy of the same size (the CPU copy engine's path).
    """
    n = nbytes // 4
    x_np = eng.aligned_empty((n,), np.float32)
    x_np[:] = 1.0
    out: dict[str, Any] = {"nbytes": nbytes, "device": str(dev), "host": str(host)}
    kinds = eng.memory_kinds(dev)
    out["memory_kinds"] = list(kinds)
    dev_sh = eng.sharding(dev, "device" if "device" in kinds else None)

    def gbs(fn):
        jax.block_until_ready(fn())
        return nbytes / _median_time(fn, repeats) / 1e9

    # pageable numpy -> device (unaligned copy so that CPU cannot alias the buffer)
    x_unal = np.ones(n + 1, np.float32)[1:]
    out["h2d_pageable_GBs"] = gbs(lambda: jax.device_put(x_unal, dev_sh))
    x_dev = jax.block_until_ready(jax.device_put(x_np, dev_sh) + 0)
    out["d2h_pageable_GBs"] = gbs(lambda: jax.device_put(x_dev, host))
    dst = np.empty_like(x_np)
    out["memcpy_GBs"] = gbs(lambda: np.copyto(dst, x_np))
    if "pinned_host" in kinds:
        try:
            pin_sh = eng.sharding(dev, "pinned_host")
            x_pin = jax.block_until_ready(jax.device_put(x_np, pin_sh))
            out["h2d_pinned_GBs"] = gbs(lambda: jax.device_put(x_pin, dev_sh))
            out["d2h_pinned_GBs"] = gbs(lambda: jax.device_put(x_dev, pin_sh))
            # the swap executor's host-side hops: pinned_host of dev <-> host's default memory
            home = eng.home_sharding(host)
            x_home = jax.block_until_ready(jax.device_put(x_np, home))
            out["hop_pinned_to_host_GBs"] = gbs(lambda: jax.device_put(x_pin, home))
            out["hop_host_to_pinned_GBs"] = gbs(lambda: jax.device_put(x_home, pin_sh))
            out["pinned_note"] = ("pinned_host listed; on CPU it is the same RAM"
                                  if dev.platform == "cpu" else "pinned_host listed")
        except Exception as e:  # runtime lists the kind but the copy fails
            out["pinned_note"] = f"pinned_host listed but the copy failed: {e!r}"[:300]
    else:
        out["pinned_note"] = f"{dev.platform} lists {list(kinds)}: no pinned_host, skipped"
    return out
