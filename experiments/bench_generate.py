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

import time

from absl import app, flags, logging

_QUICK = flags.DEFINE_bool("quick", False, "Fewer repeats and a shorter HF run.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Param/compute dtype.")
_BATCH = flags.DEFINE_integer("big_batch", 16, "The large decode batch.")
_NO_HF = flags.DEFINE_bool("no_hf", False, "Skip the transformers anchor.")
_OUT = flags.DEFINE_string("out_dir", "runs/bench", "Where generate.json goes.")


def main(argv):
    del argv
    import functools

    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxlm.core import init_cache
    from jaxlm.core.generate import decode_step, prefill
    from jaxlm.utils.bench import Target, memory_bandwidth_gbs, time_fn, write_bench
    from jaxlm.weights import load

    quick = _QUICK.value
    reps = 3 if quick else 5
    m = load("smollm2-135m-instruct", dtype=_DTYPE.value)
    cfg = m.cfg
    params = jax.device_put(m.params)
    weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    backend = jax.default_backend()
    logging.info("backend %s, weights %.1f MB", backend, weight_bytes / 1e6)

    # --- memory bandwidth (host numpy copy on CPU; device copy on accelerators)
    if backend == "cpu":
        bw = memory_bandwidth_gbs()
    else:
        x = jnp.ones((256 * 2**20 // 4,), jnp.float32)
        cp = jax.jit(lambda a: a + 0)
        t = time_fn(lambda: cp(x).block_until_ready(), repeats=10, warmup=2)["median"]
        bw = 2 * x.nbytes / t / 1e9
    floor_tok_s = bw * 1e9 / weight_bytes

    pf = jax.jit(prefill, static_argnames=("cfg",), donate_argnames=("cache",))

    @functools.partial(jax.jit, static_argnames=("n",), donate_argnames=("cache",))
    def decode_n(params, cache, tok, n):
        def body(_, carry):
            cache, tok = carry
            logits, cache = decode_step(params, cfg, tok, cache)
            return cache, jnp.argmax(logits, -1).astype(jnp.int32)

        return jax.lax.fori_loop(0, n, body, (cache, tok))

    rng = np.random.default_rng(0)
    results: dict = {"backend": backend, "dtype": _DTYPE.value, "weight_bytes": weight_bytes,
                     "copy_bandwidth_gbs": bw, "floor_batch1_tok_s": floor_tok_s}

    # --- prefill at 1024 tokens
    toks = jnp.asarray(rng.integers(100, 40000, (1, 1024)), jnp.int32)
    mask = jnp.ones((1, 1024), bool)
    t0 = time.perf_counter()
    jax.block_until_ready(pf(params, cfg, toks, mask, init_cache(cfg, 1, 1024)))
    results["prefill_compile_s"] = time.perf_counter() - t0
    tp = time_fn(lambda: jax.block_until_ready(pf(params, cfg, toks, mask, init_cache(cfg, 1, 1024))),
                 repeats=reps, warmup=1)
    results["prefill_1024_tok_s"] = 1024 / tp["median"]

    # --- decode at batch 1 and the big batch: 128 prompt + 128 new
    new = 128
    for b in (1, _BATCH.value):
        toks = jnp.asarray(rng.integers(100, 40000, (b, 128)), jnp.int32)
        mask = jnp.ones((b, 128), bool)

        def fresh():
            logits, cache = pf(params, cfg, toks, mask, init_cache(cfg, b, 128 + new))
            return cache, jnp.argmax(logits, -1).astype(jnp.int32)

        cache, tok = fresh()
        t0 = time.perf_counter()
        jax.block_until_ready(decode_n(params, cache, tok, new))
        results[f"decode_b{b}_compile_s"] = time.perf_counter() - t0
        times = []
        for _ in range(reps + 1):
            cache, tok = jax.block_until_ready(fresh())
            t0 = time.perf_counter()
            jax.block_until_ready(decode_n(params, cache, tok, new))
            times.append(time.perf_counter() - t0)
        med = float(np.median(times[1:]))
        results[f"decode_b{b}_tok_s"] = b * new / med
        results[f"decode_b{b}_ms_per_step"] = 1000 * med / new
        logging.info("decode batch %d: %.1f tok/s", b, b * new / med)

    # --- HF transformers anchor, same GGUF, same run
    hf_tok_s = None
    if not _NO_HF.value and backend == "cpu":
        try:
            hf_tok_s = _hf_decode_tok_s(m.path, 17 if quick else 33)
        except ImportError as e:
            logging.warning("transformers anchor skipped: %s", e)
    results["hf_decode_b1_tok_s"] = hf_tok_s

    b1 = results["decode_b1_tok_s"]
    targets = [
        Target("decode_b1_fraction_of_bandwidth_floor", b1 / floor_tok_s, 0.6, ">="),
        Target(f"decode_b{_BATCH.value}_total_tok_s", results[f"decode_b{_BATCH.value}_tok_s"], 100.0, ">="),
    ]
    if hf_tok_s:
        targets.insert(0, Target("decode_b1_speedup_vs_hf_transformers", b1 / hf_tok_s, 3.0, ">="))
    print(_table(results))
    write_bench("generate", results, targets, out_dir=_OUT.value)


def _hf_decode_tok_s(path, n_new: int) -> float:
    """HF greedy decode rate: (n_new - 1) tokens over t(n_new) - t(1), 128-token prompt."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    model.eval()
    ids = torch.tensor(np.random.default_rng(0).integers(100, 40000, (1, 128)))

    def run(n):
        with torch.no_grad():
            t0 = time.perf_counter()
            model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                           attention_mask=torch.ones_like(ids), pad_token_id=2)
            return time.perf_counter() - t0

    run(2)
    t1 = float(np.median([run(1) for _ in range(3)]))
    tn = float(np.median([run(n_new) for _ in range(2)]))
    return (n_new - 1) / (tn - t1)


def _table(r: dict) -> str:
    rows = [(k, v) for k, v in r.items() if isinstance(v, (int, float)) and v is not None]
    return "\n".join(f"{k:<32} {v:>12.4g}" for k, v in rows)


if __name__ == "__main__":
    app.run(main)
