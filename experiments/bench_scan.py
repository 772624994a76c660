"""Selective-scan benchmark: three jaxlm scans vs mambapy / PyTorch / naive JAX anchors.

    python -m experiments.bench_scan --quick          # L in {256, 1024}; every target
    python -m experiments.bench_scan                  # L in {256, 1024, 4096}
    python -m experiments.bench_scan --large          # + GPU sizes B=8, D=1024, L in {1024, 4096}

On CPU the entry point creates one JAX host device per core (``--cpu_devices``, via
XLA_FLAGS before JAX starts) so the ``*_alldev`` variants (``selective_scan_sharded``:
channels split over the devices) use every core, as torch does with its intra-op threads
(set to one per core). Single-device results are reported next to them ("[1 device]").

Writes runs/bench/scan.json. Device: JAX's default backend; torch uses CUDA
when available. Targets are evaluated at (B=2, L=1024, D=256, N=16) fp32.

Each target names what it compares against. "The floor" is the bandwidth/compute model
of one fused forward (max(bytes / bandwidth, flops / peak)); "within 5x of the floor" is
evaluated against it only, and is not met on CPU. The other ratios compare against
anchors measured in this run: "vs plain lax.scan on materialised a,b" (the fastest of the
issue's anchors, which all start from materialised (B, L, D, N) tensors), "vs fused
exp-sum" (the measured exp work of one pass) and "vs mambapy pscan". The measurement
logic lives in ``experiments/mamba_nd/scan_bench.py``.
"""

from __future__ import annotations

import os

from absl import app, flags

from jaxlm.utils import cli

_QUICK = flags.DEFINE_bool("quick", False,
                           "Small sweep (L in {256, 1024}); evaluates every target.")
_LENGTHS = flags.DEFINE_list("lengths", None, "Sequence lengths (default 256,1024,4096).")
_BATCH = flags.DEFINE_integer("batch", 2, "Batch size B.")
_DIM = flags.DEFINE_integer("dim", 256, "Channels D (= d_inner of the scan).")
_STATE = flags.DEFINE_integer("state", 16, "State size N.")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Timed repeats (median) after warm-up.")
_LARGE = flags.DEFINE_bool("large", False,
                           "Also run GPU-sized shapes (B=8, D=1024, L in {1024, 4096}).")
_NO_TORCH = flags.DEFINE_bool("no_torch", False, "Skip the PyTorch anchors.")
_OUT_DIR = flags.DEFINE_string("out_dir", "runs/bench", "Folder for scan.json.")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", 0, "Host CPU devices for the *_alldev variants (0 = one per core; 1 = off). "
    "Must be set before JAX starts, so it is applied here via XLA_FLAGS.")

TARGET_SHAPE = (2, 1024, 256, 16)


def main(argv):
    del argv
    import sys

    sys.stdout.reconfigure(line_buffering=True)  # progress lines appear as they are measured
    n_cpu = _CPU_DEVICES.value or os.cpu_count() or 1
    if n_cpu > 1 and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS",
                                                                                  ""):
        # one host device per core: selective_scan_sharded puts each core on D / n channels
        # (single-device variants still run on device 0 only)
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={n_cpu}").strip()
    import jax

    from experiments.mamba_nd import scan_bench as sb
    from jaxlm.utils.bench import matmul_peak_gflops, memory_bandwidth_gbs, write_bench

    lengths = [int(v) for v in (_LENGTHS.value or ([256, 1024] if _QUICK.value
                                                   else [256, 1024, 4096]))]
    if any(v < 1 for v in lengths) or min(_BATCH.value, _DIM.value, _STATE.value) < 1:
        raise app.UsageError("--lengths, --batch, --dim and --state must be positive")
    shapes = [(_BATCH.value, L, _DIM.value, _STATE.value) for L in lengths]
    if TARGET_SHAPE not in shapes:
        shapes.append(TARGET_SHAPE)  # targets are always evaluated
    if _LARGE.value:
        shapes += [(8, L, 1024, 16) for L in (1024, 4096)]
    backend = jax.default_backend()
    print(f"backend={backend} devices={jax.devices()} cpu_count={os.cpu_count()}")
    try:
        import torch

        print(f"torch {torch.__version__}, threads set to {os.cpu_count()} on CPU")
    except ImportError:
        pass
    bw = sb.device_bandwidth_gbs() if backend != "cpu" else memory_bandwidth_gbs()
    peak = matmul_peak_gflops(n=4096 if backend != "cpu" else 1024)
    print(f"bandwidth {bw:.1f} GB/s, matmul peak {peak:.1f} GFLOP/s")
    results = {"backend": backend, "bandwidth_gbs": bw, "matmul_peak_gflops": peak,
               "memory_measure": "XLA compiled memory_analysis(): temp + output bytes",
               "shapes": {}}
    for shape in shapes:
        bsz, length, dch, n = shape
        print(f"shape B={bsz} L={length} D={dch} N={n}")
        inp = sb.make_inputs(*shape)
        res = sb.bench_jax(inp, _REPEATS.value, log=print)
        if not _NO_TORCH.value:
            res.update(sb.bench_torch(inp, _REPEATS.value, log=print))
        floor = sb.floor_model(*shape, bw, peak)
        summ = sb.summarize(*shape, res, floor)
        results["shapes"][f"B{bsz}_L{length}_D{dch}_N{n}"] = {"measured": res, "floor": floor,
                                                             "summary": summ}
        an = summ["anchors_s"]
        print(f"  best fwd {summ['best_fwd_s']['variant']} "
              f"{summ['best_fwd_s']['seconds'] * 1e3:.2f} ms; the floor (bandwidth/compute "
              f"model) {summ['floor_s'] * 1e3:.3f} ms [x{summ['best_fwd_over_floor']:.1f}]; "
              f"vs plain lax.scan on materialised a,b "
              f"{an['plain_lax_scan_materialised_ab_fwd'] * 1e3:.2f} ms "
              f"[x{summ['best_fwd_over_plain_lax_scan']:.2f}]; vs fused exp-sum "
              f"{an['exp_sum_fused_BLDN'] * 1e3:.2f} ms [x{summ['best_fwd_over_exp_sum']:.2f}]")
        print(f"  best fwd+bwd {summ['best_fwdbwd_s']['variant']} "
              f"{summ['best_fwdbwd_s']['seconds'] * 1e3:.2f} ms; 1 device "
              f"{summ['best_1dev_fwdbwd_s']['variant']} "
              f"{summ['best_1dev_fwdbwd_s']['seconds'] * 1e3:.2f} ms"
              + (f"; vs mambapy fwd x{summ['speedup_vs_mambapy_fwd_s']:.1f} "
                 f"f+b x{summ['speedup_vs_mambapy_fwdbwd_s']:.1f}"
                 if "speedup_vs_mambapy_fwd_s" in summ else ""))
    t = results["shapes"]["B{}_L{}_D{}_N{}".format(*TARGET_SHAPE)]
    summ, meas = t["summary"], t["measured"]
    targets = sb.targets(summ, meas)
    write_bench("scan", results, targets, out_dir=_OUT_DIR.value)


if __name__ == "__main__":
    cli.run(main)
