"""Decode throughput: full cache vs each eviction policy at 50%, and the bandwidth model.

    python -m experiments.bench_kvcache --quick          # lengths 512/1024, batch 1/8
    python -m experiments.bench_kvcache                  # lengths 1k/2k/4k/8k, batch 1/16
    python -m experiments.bench_kvcache --gpu_sizes      # GPU: batch 1/16/64, 8 GB KV cap

For every (prompt length P, batch B): the core decode step at width P + T (the
full-cache baseline), the core step at width C = P/2 (anchor for the policy
overhead) and the evicting loop at width C for each policy; round-robin timing,
medians per step after warm-up; speedups are medians of per-round ratios (same-round
anchors), which stay meaningful when other jobs load the machine. Beside each measured
speedup the memory-bandwidth model's prediction (bytes read per step: weights + KV
[+ scores]). Then the fixed-memory point: the largest batch whose KV fits ``--kv_cap_gb``, full vs 50%.
Writes runs/bench/kvcache.json. Device is whatever JAX picks (CPU here, GPU there).
"""

from __future__ import annotations

from absl import flags

from jaxlm.utils import cli

_QUICK = flags.DEFINE_bool("quick", False, "Smaller lengths/batches; every target still checked.")
_LENGTHS = flags.DEFINE_list("lengths", None, "Prompt lengths (default 1024,2048,4096,8192; "
                             "quick 512,1024).")
_BATCHES = flags.DEFINE_list("batches", None, "Batch sizes (default 1,16; quick 1,8).")
_GPU = flags.DEFINE_bool("gpu_sizes", False, "GPU sizes: batches 1,16,64 and an 8 GB KV cap.")
_STEPS = flags.DEFINE_integer("steps", None, "Decode steps per timed call (default 16; quick 8).")
_REPEATS = flags.DEFINE_integer("repeats", None, "Timed rounds (default 5; quick 3).")
_KV_CAP = flags.DEFINE_float("kv_cap_gb", None, "KV memory cap for the fixed-memory point "
                             "(default 1.5; quick 0.4; gpu 8).")
_FIXED_LEN = flags.DEFINE_integer("fixed_len", None, "Prompt length of the fixed-memory point "
                                  "(default 2048; quick 1024).")
_MODEL = flags.DEFINE_string("model", "smollm2-135m", "Model preset (random weights).")
_BUDGET = flags.DEFINE_float("budget", 0.5, "Policy budget as a fraction of the prompt.")
_OUT = flags.DEFINE_string("out_dir", "runs/bench", "Where kvcache.json goes.")

POLICY_NAMES = ("window", "streaming", "h2o", "tova", "snapkv", "keyformer-paper",
                "keyformer-reference")


def _policies(budget):
    from jaxlm.kvcache import Policy

    return [Policy("window", budget), Policy("streaming", budget), Policy("h2o", budget),
            Policy("tova", budget), Policy("snapkv", budget), Policy("keyformer", budget),
            Policy("keyformer", budget, mode="reference")]


def main(argv):
    del argv
    import jax
    from tqdm.auto import tqdm

    from jaxlm.core import MODELS
    from experiments.keyformer import bench as B
    from jaxlm.utils.bench import Target, write_bench

    quick, gpu = _QUICK.value, _GPU.value
    lengths = [int(x) for x in (_LENGTHS.value or (["512", "1024"] if quick else
                                                   ["1024", "2048", "4096", "8192"]))]
    batches = [int(x) for x in (_BATCHES.value or (["1", "16", "64"] if gpu else
                                                   (["1", "8"] if quick else ["1", "16"])))]
    steps = _STEPS.value or (8 if quick else 16)
    repeats = _REPEATS.value or (3 if quick else 5)
    kv_cap = _KV_CAP.value or (8.0 if gpu else (0.4 if quick else 1.5))
    fixed_len = _FIXED_LEN.value or (1024 if quick else 2048)
    cfg = MODELS.get(_MODEL.value)
    params = B.random_params(cfg)
    wbytes = B.param_bytes(params)
    pols = _policies(_BUDGET.value)
    print(f"device {jax.devices()[0].device_kind}; {cfg.n_layers} layers, weights "
          f"{wbytes / 1e6:.0f} MB; lengths {lengths}, batches {batches}, {steps} steps x "
          f"{repeats} rounds")

    results = {"config": {"model": _MODEL.value, "lengths": lengths, "batches": batches,
                          "steps": steps, "repeats": repeats, "budget": _BUDGET.value,
                          "weight_bytes": wbytes, "kv_cap_gb": kv_cap, "fixed_len": fixed_len,
                          "quick": quick, "cache_contents": "synthetic (decode cost does not "
                          "depend on which tokens are kept)",
                          "core_baseline": "core.generate's jitted decode step + greedy sampler "
                          "dispatched once per step (stream's pieces; generate cannot start from "
                          "a synthetic cache); the policy rows are one compiled eviction loop, so "
                          "per-step dispatch counts in the core rows only"},
               "points": []}
    targets = []
    n_calls = len(lengths) * len(batches) * (2 + len(pols)) * (repeats + 1) + 2 * (repeats + 1)
    bar = tqdm(total=n_calls, desc="bench_kvcache")
    compiles_before = B.decode_compiles()
    for plen in lengths:
        for b in batches:
            full_slots = plen + steps + 1
            runners = {"core_full": B.core_runner(params, cfg, b, full_slots, plen, steps=steps)}
            caps = {}
            for pol in pols:
                runners[pol.label], caps[pol.label] = B.policy_runner(params, cfg, pol, plen,
                                                                      batch=b, steps=steps)
            cap = next(iter(caps.values()))
            runners["core_C"] = B.core_runner(params, cfg, b, cap, cap - 1, steps=steps)
            t = B.time_interleaved(runners, steps=steps, repeats=repeats,
                                   progress=lambda: bar.update(1))
            full = t["core_full"]["median_s"]
            anchor = t["core_C"]["median_s"]
            bytes_full = B.step_bytes(cfg, wbytes, b, full_slots, policy=False)
            point = {"prompt_len": plen, "batch": b, "full_slots": full_slots, "capacity": cap,
                     "core_full": t["core_full"], "core_C": t["core_C"], "policies": {}}
            for pol in pols:
                m = t[pol.label]
                pred = bytes_full / B.step_bytes(cfg, wbytes, b, caps[pol.label], policy=True)
                meas = B.paired_ratio(t["core_full"], m)
                point["policies"][pol.label] = {
                    **m, "tpot_ms": 1e3 * m["median_s"], "tok_s": b / m["median_s"],
                    "speedup": meas, "predicted": pred, "ratio": meas / pred,
                    "overhead": B.paired_ratio(m, t["core_C"]) - 1.0}
            results["points"].append(point)
            kf = point["policies"][pols[5].label]
            print(f"P={plen:5d} B={b:3d}  full {1e3 * full:7.1f} ms  C-anchor "
                  f"{1e3 * anchor:7.1f} ms  " + "  ".join(
                      f"{k.split('@')[0]} {v['speedup']:.2f}x/{v['predicted']:.2f}x"
                      for k, v in point["policies"].items()))
            targets.append(Target(f"speedup/model P={plen} B={b} keyformer", kf["ratio"], 0.9,
                                  ">="))
            targets.append(Target(f"overhead P={plen} B={b} keyformer", kf["overhead"], 0.05,
                                  "<="))
            worst = max(v["overhead"] for v in point["policies"].values())
            point["max_overhead"] = worst

    # fixed-memory throughput point: the largest batch whose KV fits the cap
    cap_bytes = kv_cap * 1e9
    full_slots = fixed_len + steps + 1
    kfp = pols[5]
    c_fixed = kfp.capacity(fixed_len, steps + 1)
    b_full = max(1, int(cap_bytes // (full_slots * B.kv_bytes_per_slot(cfg, False))))
    b_pol = max(1, int(cap_bytes // (c_fixed * B.kv_bytes_per_slot(cfg, True))))
    run_pol, _ = B.policy_runner(params, cfg, kfp, fixed_len, batch=b_pol, steps=steps)
    t = B.time_interleaved(
        {"full": B.core_runner(params, cfg, b_full, full_slots, fixed_len, steps=steps),
         "keyformer": run_pol}, steps=steps, repeats=repeats, progress=lambda: bar.update(1))
    bar.close()
    tput_full = b_full / t["full"]["median_s"]
    tput_pol = b_pol / t["keyformer"]["median_s"]
    gain = (b_pol / b_full) * B.paired_ratio(t["full"], t["keyformer"])
    pred = (b_pol / b_full) * (B.step_bytes(cfg, wbytes, b_full, full_slots, False)
                               / B.step_bytes(cfg, wbytes, b_pol, c_fixed, True))
    results["fixed_memory"] = {
        "kv_cap_gb": kv_cap, "prompt_len": fixed_len, "batch_full": b_full, "batch_policy": b_pol,
        "tok_s_full": tput_full, "tok_s_policy": tput_pol, "gain": gain,
        "predicted_gain": pred, "full": t["full"], "policy": t["keyformer"]}
    print(f"fixed memory {kv_cap} GB, P={fixed_len}: full B={b_full} {tput_full:.1f} tok/s, "
          f"keyformer@50% B={b_pol} {tput_pol:.1f} tok/s: {gain:.2f}x "
          f"(model {pred:.2f}x)")
    targets.append(Target("fixed-memory throughput gain / model", gain / pred,
                          0.9, ">="))
    n_shapes = len(lengths) * len(batches) + 1
    compiles = B.decode_compiles() - compiles_before
    results["decode_compiles"] = compiles
    targets.append(Target("evicting-loop compiles per cache shape (all policies)",
                          compiles / n_shapes, 1.0, "<="))
    write_bench("kvcache", results, targets, out_dir=_OUT.value)


if __name__ == "__main__":
    cli.run(main)
