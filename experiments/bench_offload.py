"""Swap benchmark: host<->device copy bandwidth and overlap efficiency of the swap executor.

    python -m experiments.bench_offload --quick     # small CPU sizes; every target evaluated
    python -m experiments.bench_offload --large     # GPU sizes (bigger model, 256 MB-1 GB copies)

Writes runs/bench/offload.json. Device choice is automatic: on a GPU the compute device is
the GPU and the host is the CPU backend; on CPU the "device" is a second CPU device (set
here with jax_num_cpu_devices=2) so that host->device copies are real memcpys.
Overlap efficiency eta = t(staged, all resident) / t(swap step with prefetch); the target
(>= 0.9) applies where compute per sub-model exceeds its load time (checked and reported).
Timings on a shared, loaded CPU are noisy.
"""

from __future__ import annotations

from absl import app, flags

_QUICK = flags.DEFINE_bool("quick", False, "Small sizes.")
_LARGE = flags.DEFINE_bool("large", False, "GPU sizes (d_model 1024, 8 layers, 1 GB copies).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repeats (median) after warm-up.")
_SINGLE = flags.DEFINE_bool("single", False, "Only the 2-sub-model point (for the repro entry).")
_OUT_DIR = flags.DEFINE_string("out_dir", "runs/bench", "Folder for offload.json.")


def main(argv):
    del argv
    import jax

    jax.config.update("jax_num_cpu_devices", 2)
    from jaxlm.core import MODELS
    from jaxlm.offload import measure, swap
    from jaxlm.utils.bench import Target, write_bench
    from jaxlm.utils.config import apply_overrides

    host, dev = swap.default_devices()
    if _LARGE.value:
        sizes = ["n_layers=8", "d_model=1024", "n_heads=8", "n_kv_heads=8", "d_ff=4096"]
        shape, mb = (8, 512), 1024
    elif _QUICK.value:
        sizes, shape, mb = ["n_layers=4", "d_model=128"], (8, 128), 64
    else:
        sizes, shape, mb = ["n_layers=6", "d_model=256"], (8, 256), 256
    results = {"host": str(host), "device": str(dev)}
    bw = {}
    for m in ([256, 1024] if _LARGE.value else [mb]):
        bw[f"h2d_{m}MB_GBs"] = measure.copy_bandwidth(m * 2**20, host, dev, _REPEATS.value) / 1e9
        bw[f"d2h_{m}MB_GBs"] = measure.copy_bandwidth(m * 2**20, dev, host, _REPEATS.value) / 1e9
    results["bandwidth"] = bw
    print(bw)
    cfg = apply_overrides(MODELS.get("gptj-tiny_test"), sizes)
    n = cfg.n_layers + 2
    points = []
    splits = [[1 + cfg.n_layers // 2], list(range(2, n - 1))]
    for cuts in splits[:1] if _SINGLE.value else splits:
        r = measure.measure_overlap(cfg, shape[0], shape[1], cuts, repeats=_REPEATS.value)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
        points.append(r)
    results["overlap"] = points
    best = max(p["eta"] for p in points)
    targets = [Target("overlap_efficiency_eta(staged_resident/swap)", best, 0.9, ">=")]
    write_bench("offload", results, targets, out_dir=_OUT_DIR.value)


if __name__ == "__main__":
    app.run(main)
