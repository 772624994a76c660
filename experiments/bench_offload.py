"""Swap benchmark: H2D/D2H bandwidth, copy/compute overlap and the swap executor's overlap.

    python -m experiments.bench_offload --quick        # CPU, ~1-2 min; every target evaluated
    python -m experiments.bench_offload                # CPU, ~2.5 min (+ sweep of 5 shapes)
    # the one-command GPU pass (H100/H200; GPU sizes are automatic on a GPU, ~4-6 min):
    python -m experiments.bench_offload --gpu_large --repeats=5 --out_dir=runs/bench
    python -m experiments.bench_offload --config=quick_test --out_dir=/tmp/off   # smoke test

Presets: ``experiments.atom.config.OFFLOAD_BENCH`` (default, quick, repro, gpu_large and a
``*_test`` twin each: a 2-layer d=64 swap model, one repeat, no sweep) of
``OffloadBenchConfig``, ``--override=field=value``; ``--quick``, ``--gpu_large``,
``--repeats`` and the other per-field flags are shorthands for the same overrides.

Writes <out_dir>/offload.json (+ offload_timeline.png, offload_sweep.png). Device choice is
automatic: on a GPU the compute device is the GPU and the host is the CPU backend; on CPU the
"device" is a second CPU device (jax_num_cpu_devices=2) and copies are real numpy memcpys
run by the copy-engine threads.

CPU settings: --cpu_compute_threads=1 (default) sets --xla_cpu_multi_thread_eigen=false;
--cpu_pin (default on) pins the copy-engine and host-update threads to the last core and the
main thread to the others; --cpu_pin_xla also pins XLA's worker threads to the compute core
(measured: without it XLA:CPU keeps ~1.85 cores busy during a "single-threaded" compute, so
the copy threads share a core with it). A contention probe measures how much a memcpy (or a
cache-resident spin) on the copy core slows the compute, and ``t_pred_contended`` adds that
slowdown over the copy core's busy time to the section-4.3 prediction.

GPU settings (--gpu_large): gptj-tiny_test with n_layers=8, d_model=2048, 16 heads x 128,
d_ff=8192, one block per sub-model (~200 MB fp32), batch 16 x 2048 tokens per swap (quick:
4 layers, 8 x 2048); sweep 2/8/16 x 2048. The main swap runs use opt_mode
device-per-submodel with pinned_host masters (no host-side hops: jax.device_put between
the GPU's pinned_host and the CPU backend allocates fresh pages, ~1.5 GB/s), then host-eager
and pageable for comparison; the fused monolithic anchor is skipped at full size (no remat,
would not fit).

Targets: the swap executor's overlap efficiency (the spec's eta_swap) eta = t(staged compute,
all resident, no copies) / t(swap step) >= 0.9 (best prefetching mode) in a configuration
where the forward compute of every sub-model exceeds the load time of the next (the
precondition, measured from a serial step where each copy and compute runs alone, is a
target of its own), and the copy/compute micro-benchmark's overlap efficiency
(T_c + T_l - T_both) / min(T_c, T_l) >= 0.9. The sweep (thread vs none over tokens per
sub-model) shows eta against compute/load with the section-4.3 prediction from the serial
phases. On a GPU the H2D bandwidth is compared with the card's PCIe figure. CPU timings need
a quiet machine: run under /work/helper_notes/timed and report the load it prints.

Measured (CPU, 2 vCPUs, jax 0.12, quiet window, load 1.1-1.3, --repeats=7): main point 4x64
(compute/load min 3.3): eta thread 0.876, dispatch 0.920, none 0.790 (predicted 0.970,
contention-adjusted 0.876); 8x64 (ratio 6.8): thread 0.914, none 0.893.
"""

from __future__ import annotations

import os

from absl import flags

from jaxlm.utils import cli

from experiments.atom.config import config_from_flags, define_preset_flags

define_preset_flags("bench_offload", "default")  # --config, --override, --list_configs
_OUT_DIR = flags.DEFINE_string("out_dir", "runs/bench", "Folder for offload.json.")
# shorthands for --override=<field>=<value> (applied after --override when given)
flags.DEFINE_bool("quick", False, "Small sizes (CPU ~1-2 min, GPU < 3 min).")
flags.DEFINE_bool(
    "gpu_large", False, "GPU sizes: d=2048 blocks (16 heads x 128), one block per sub-model, "
    "16x2048 tokens per swap (compute/load > 1 at pinned PCIe bandwidth), 256 MB-1 GB copies. "
    "Default: on when a GPU is the device.")
flags.DEFINE_integer("repeats", 5, "Timed repeats (median) after warm-up.")
flags.DEFINE_bool("single", False, "Only the thread/none swap modes, no sweep (repro entry).")
flags.DEFINE_bool("sweep", True, "eta vs compute/load over tokens per sub-model.")
flags.DEFINE_integer("cpu_compute_threads", 1, "XLA:CPU compute threads (1: "
                     "--xla_cpu_multi_thread_eigen=false; 0: XLA default). Set before JAX "
                     "starts; ignored when a GPU plugin is installed.")
flags.DEFINE_bool("cpu_pin", True, "CPU only: copy/update threads on the last core, the main "
                  "(dispatching) thread on the others.")
flags.DEFINE_bool("cpu_pin_xla", False, "CPU only, with --cpu_pin: also pin XLA's existing "
                  "worker threads to the compute cores (a strict one-core-compute / "
                  "one-core-copy split; the anchors then run on one core too).")
flags.DEFINE_enum("host_opt", "sgd", ["sgd", "adam"], "Host optimizer of the overlap runs "
                  "(sgd: the update does not mask the copy/compute overlap).")
flags.DEFINE_multi_string("swap_override", [], "Extra model overrides for the swap runs "
                          "(field=value; appended to swap_overrides).")
flags.DEFINE_integer("swap_batch", 0, "Batch of the main swap point (0: preset).")
flags.DEFINE_integer("swap_seq", 0, "Sequence length of the main point (0: preset).")
flags.DEFINE_enum("swap_opt_mode", "auto", ["auto", "host-eager", "device-per-submodel"],
                  "Optimizer placement of the main swap runs (auto: device-per-submodel on a "
                  "GPU, whose host hops are slow; host-eager on CPU).")

# PCIe x16 per-direction theoretical bandwidth (GB/s) by card name fragment
PCIE_GBS = {"H200": 64.0, "H100": 64.0, "GH200": 450.0, "A100": 32.0, "L40": 32.0,
            "4090": 32.0, "3090": 32.0, "V100": 16.0, "T4": 16.0}

# (model overrides, main (batch, seq), sweep shapes) per size class
CPU_MODEL = ["n_layers=6", "d_model=512", "n_heads=8", "n_kv_heads=8", "head_dim=64",
             "d_ff=2048", "max_seq_len=256"]
CPU_MAIN, CPU_SWEEP = (4, 64), [(1, 8), (1, 32), (2, 64), (4, 64), (8, 64)]
GPU_MODEL = ["n_layers=8", "d_model=2048", "n_heads=16", "n_kv_heads=16", "head_dim=128",
             "d_ff=8192", "max_seq_len=2048"]
GPU_MAIN, GPU_SWEEP = (16, 2048), [(2, 2048), (8, 2048), (16, 2048)]


def _fmt(d: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()
            if k not in ("per_submodel", "serial_phases", "events")}


def _config():
    import dataclasses

    cfg = config_from_flags("bench_offload")
    extra = tuple(flags.FLAGS["swap_override"].value)
    return dataclasses.replace(cfg, swap_overrides=cfg.swap_overrides + extra)


def main(argv):
    del argv
    bc = _config()
    cpu_only = not _gpu_plugin_installed()
    if bc.cpu_compute_threads == 1 and cpu_only:  # single-threaded XLA compute on CPU
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + " --xla_cpu_multi_thread_eigen=false").strip()
    import dataclasses

    import jax

    jax.config.update("jax_num_cpu_devices", 2)
    import numpy as np
    import optax

    from experiments.atom import measure, plots
    from jaxlm.core import MODELS
    from jaxlm.offload import engines, scan_offload, swap
    from jaxlm.utils.bench import Target, write_bench
    from jaxlm.utils.config import apply_overrides

    host, dev = swap.default_devices()
    gpu = dev.platform != "cpu"
    part = None
    if not gpu and bc.cpu_pin:
        jax.devices()  # XLA's thread pools exist before the main thread is pinned
        part = engines.partition_cores(1)
    if part and bc.cpu_pin_xla:
        engines.pin_process_threads(part.compute)
    copy_cores = part.copy if part else None
    big = bc.gpu_large or gpu
    quick = bc.quick
    reps = bc.repeats
    results: dict = {"config": flags.FLAGS.config, "run": dataclasses.asdict(bc),
                     "host": str(host), "device": str(dev), "platform": dev.platform,
                     "device_kind": dev.device_kind, "jax": jax.__version__,
                     "xla_flags": os.environ.get("XLA_FLAGS", ""),
                     "core_partition": (part.describe() + (" (XLA threads pinned too)" if
                                                            bc.cpu_pin_xla else ""))
                     if part else None,
                     "host_memory": engines.choose_host_memory(dev).__dict__,
                     "zero_copy_cpu_device": engines.zero_copy_supported(dev),
                     "loadavg_start": os.getloadavg()}
    # ---- 1. bandwidth: pageable numpy vs pinned_host
    sizes_mb = ([256] if quick else [256, 1024]) if big else [64]
    bw = []
    for mb in sizes_mb:
        r = measure.bandwidths(mb * 2**20, host, dev, reps)
        print(_fmt(r))
        bw.append(r)
    results["bandwidth"] = bw
    pcie = next((v for k, v in PCIE_GBS.items() if k in dev.device_kind), None)
    results["pcie_theoretical_GBs"] = pcie
    # ---- 2. copy/compute micro-benchmark
    micro = []
    for pinned in ([False, True] if "pinned_host" in engines.memory_kinds(dev) and gpu
                   else [False]):
        try:
            r = measure.copy_compute_overlap((256 if big else 64) * 2**20, host, dev,
                                             compute_over_copy=2.0, repeats=max(reps, 5),
                                             pinned=pinned, copy_cores=copy_cores)
        except Exception as e:
            r = {"pinned_source": pinned, "error": repr(e)[:400],
                 "overlap_eff_thread": float("nan")}
        print(_fmt(r))
        micro.append(r)
    results["copy_compute_overlap"] = micro
    if not gpu:  # do copies slow the compute down? (the 2-core CPU's limit, measured)
        results["contention"] = measure.contention(
            dev, copy_cores, compute_cores=part.compute if part else None,
            repeats=max(reps, 5))
        print("contention", _fmt(results["contention"]))
    # ---- 3. the swap executor at the main point (compute per sub-model > its load)
    sizes = list(GPU_MODEL if big else CPU_MODEL)
    if big and quick:
        sizes[0] = "n_layers=4"
    sizes += list(bc.swap_overrides)
    main_shape = GPU_MAIN if big else CPU_MAIN
    if big and quick:
        main_shape = (8, 2048)
    batch = bc.swap_batch or main_shape[0]
    seq = bc.swap_seq or main_shape[1]
    cfg = apply_overrides(MODELS.get("gptj-tiny_test"), sizes)
    if seq > cfg.max_seq_len:
        raise ValueError(f"--swap_seq={seq} exceeds max_seq_len={cfg.max_seq_len}; add "
                         f"--swap_override=max_seq_len={seq}")
    n = cfg.n_layers + 2
    tx = optax.sgd(1e-3) if bc.host_opt == "sgd" else optax.adam(1e-3)
    modes = ("thread", "none") if bc.single else ("dispatch", "thread", "none")
    # one block per sub-model; embed joins block_0 and head the last block, so every
    # sub-model's compute is one block's (the embed alone cannot hide block_1's load)
    cuts = list(range(2, n - 1))
    hm = engines.choose_host_memory(dev).kind
    opt_mode = bc.swap_opt_mode
    if opt_mode == "auto":
        opt_mode = "device-per-submodel" if gpu else "host-eager"
    kw = dict(repeats=reps, tx=tx, copy_cores=copy_cores, opt_mode=opt_mode)
    try:
        r = measure.measure_overlap(cfg, batch, seq, cuts, modes=modes, host_memory=hm,
                                    monolithic=not (bc.single or (big and not quick)),
                                    **kw)
    except Exception as e:  # keep the other numbers; say what failed
        import traceback

        traceback.print_exc()
        r = {"error": repr(e)[:400], "eta": float("nan")}
    events = r.pop("events", None)
    ct = results.get("contention")
    if ct and "phases" in r and "t_pred_parallel" in r:
        # the copy core's busy time slows the compute by the measured factor while it runs
        busy = r["phases"]["h2d_s"] + r["phases"]["d2h_s"] + r["phases"]["update_s"]
        r["copy_core_busy_s"] = busy
        r["t_pred_contended"] = r["t_pred_parallel"] + busy * (1 - 1 / ct["slowdown_memcpy"])
        r["eta_pred_contended"] = r["t_staged_compute_only"] / r["t_pred_contended"]
    print(_fmt(r))
    results["swap"] = r
    if gpu and not bc.single:  # the alternatives: host optimizer, pageable host copy
        other = "host-eager" if opt_mode == "device-per-submodel" else "device-per-submodel"
        for name, hmem, om in ((f"swap_{other}", hm, other), ("swap_pageable", "cpu", opt_mode)):
            try:
                r2 = measure.measure_overlap(cfg, batch, seq, cuts, modes=("thread", "none"),
                                             monolithic=False, host_memory=hmem,
                                             **dict(kw, opt_mode=om))
                r2.pop("events", None)
                results[name] = r2
                print(name, _fmt(r2))
            except Exception as e:
                results[name] = {"error": repr(e)[:400]}
    results["swap_model"] = {"overrides": sizes, "batch": batch, "seq": seq,
                             "host_opt": bc.host_opt, "opt_mode": opt_mode, "cuts": cuts}
    os.makedirs(_OUT_DIR.value, exist_ok=True)
    if events:
        path = os.path.join(_OUT_DIR.value, "offload_timeline.png")
        plots.plot_timeline(events, path, f"one swap step, thread mode, {dev.platform}, "
                              f"{r.get('num_submodels', '?')} sub-models, batch {batch}x{seq}")
        results["timeline_png"] = path
    # ---- 4. sweep: eta (thread vs none) against compute/load
    if bc.sweep and not bc.single:
        shapes = GPU_SWEEP if big else CPU_SWEEP
        if quick:
            shapes = [shapes[0], shapes[-1]]
        try:
            rows = measure.overlap_sweep(cfg, shapes, cuts, host_memory=hm, **kw)
            for row in rows:
                print("sweep", _fmt(row))
            results["sweep"] = rows
            results["sweep_png"] = plots.plot_sweep(rows, os.path.join(_OUT_DIR.value,
                                                                  "offload_sweep.png"),
                                               f"{dev.platform} {dev.device_kind}")
        except Exception as e:
            import traceback

            traceback.print_exc()
            results["sweep"] = {"error": repr(e)[:400]}
    # ---- 5. in-graph scan offload (where the backend lists pinned_host)
    ok, why = scan_offload.scan_offload_support(dev)
    results["scan_offload"] = {"supported": ok, "note": why}
    if ok and not bc.single:
        try:
            results["scan_offload"].update(_time_scan(cfg, batch, seq, dev, reps, measure))
        except Exception as e:  # report, do not lose the other numbers
            results["scan_offload"]["error"] = repr(e)[:400]
    print(results["scan_offload"])
    eff = [m["overlap_eff_thread"] for m in micro if m["overlap_eff_thread"] == m[
        "overlap_eff_thread"]]
    nan = float("nan")
    targets = [
        Target("swap_eta_swap(staged_compute/swap_step,best)", r.get("eta", nan), 0.9, ">="),
        Target("swap_compute_over_load_fwd(min, serial, precondition)",
               r.get("compute_over_load_fwd_min", nan), 1.0, ">="),
        Target("copy_compute_overlap_eff(thread)", max(eff, default=nan), 0.9, ">="),
    ]
    if gpu and pcie:
        h2d = max(max(b.get("h2d_pinned_GBs", 0.0), b["h2d_pageable_GBs"]) for b in bw)
        targets.append(Target("h2d_GBs_vs_pcie_fraction", h2d / pcie, 0.5, ">="))
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    results["loadavg_end"] = os.getloadavg()
    results["cpu_time_s"] = ru.ru_utime + ru.ru_stime
    del np
    print("loadavg start/end", results["loadavg_start"], results["loadavg_end"],
          "cpu_time_s", round(results["cpu_time_s"], 1))
    write_bench("offload", results, targets, out_dir=_OUT_DIR.value)


def _gpu_plugin_installed() -> bool:
    """Whether a CUDA/ROCm PJRT plugin is importable (checked before JAX starts)."""
    import importlib.util

    return any(importlib.util.find_spec(m) is not None for m in
               ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                "jax_rocm7_plugin"))


def _time_scan(cfg, batch, seq, dev, reps, measure):
    """In-graph scan offload step vs the same step with the blocks in device memory."""
    import jax

    from jaxlm.core import init
    from jaxlm.offload import engines, scan_offload

    params = init(jax.random.key(0), cfg)
    b = jax.device_put(measure.random_batch(cfg, batch, seq), dev)
    rest, stacked = scan_offload.split_stacked(params, cfg)
    r_dev, s_host = scan_offload.place(rest, stacked, dev)
    step = scan_offload.make_scan_offload_step(cfg, dev)
    jax.block_until_ready(step(r_dev, s_host, b))
    t_off = measure._median_time(lambda: step(r_dev, s_host, b), reps)
    s_dev = jax.device_put(stacked, engines.sharding(dev, "device"))
    jax.block_until_ready(step(r_dev, s_dev, b))
    t_res = measure._median_time(lambda: step(r_dev, s_dev, b), reps)
    return {"t_scan_offload": t_off, "t_scan_resident": t_res, "eta_scan": t_res / t_off}


if __name__ == "__main__":
    cli.run(main)
