"""Throughput measurements of prefill and decode, shared by the benchmark and the report.

Each function compiles first (timed separately), then reports the median over repeats.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.core.cache import init_cache
from jaxlm.core.config import ModelConfig
from jaxlm.core.generate import decode_step, prefill

_prefill = jax.jit(prefill, static_argnames=("cfg",), donate_argnames=("cache",))


@functools.partial(jax.jit, static_argnames=("cfg", "n"), donate_argnames=("cache",))
def _decode_n(params, cache, tok, *, cfg, n):
    """n greedy decode steps in one compiled loop (the body of ``generate``)."""

    def body(_, carry):
        cache, tok = carry
        logits, cache = decode_step(params, cfg, tok, cache)
        return cache, jnp.argmax(logits, -1).astype(jnp.int32)

    return jax.lax.fori_loop(0, n, body, (cache, tok))


def measure_prefill(params, cfg: ModelConfig, prompt_len: int, *, batch: int = 1, repeats: int = 5,
                    seed: int = 0) -> dict[str, float]:
    """Prefill throughput (tokens/s) of a random prompt of ``prompt_len`` tokens."""
    rng = np.random.default_rng(seed)
    toks = jnp.asarray(rng.integers(0, cfg.vocab_size, (batch, prompt_len)), jnp.int32)
    mask = jnp.ones((batch, prompt_len), bool)

    def run():
        return jax.block_until_ready(
            _prefill(params, cfg, toks, mask, init_cache(cfg, batch, prompt_len)))

    t0 = time.perf_counter()
    run()
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    return {"tok_s": batch * prompt_len / med, "seconds": med, "compile_s": compile_s}


def measure_decode(params, cfg: ModelConfig, *, batch: int, prompt_len: int = 128,
                   new_tokens: int = 128, repeats: int = 5, seed: int = 0) -> dict[str, float]:
    """Decode throughput: ``new_tokens`` greedy steps after a ``prompt_len`` prefill.

    Only the decode loop is timed (the prefill that fills the cache is not).
    Returns total tokens/s over the batch, ms per step and the compile time.
    """
    rng = np.random.default_rng(seed)
    toks = jnp.asarray(rng.integers(0, cfg.vocab_size, (batch, prompt_len)), jnp.int32)
    mask = jnp.ones((batch, prompt_len), bool)

    def fresh():
        logits, cache = _prefill(params, cfg, toks, mask, init_cache(cfg, batch, prompt_len + new_tokens))
        return jax.block_until_ready((cache, jnp.argmax(logits, -1).astype(jnp.int32)))

    cache, tok = fresh()
    t0 = time.perf_counter()
    jax.block_until_ready(_decode_n(params, cache, tok, cfg=cfg, n=new_tokens))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        cache, tok = fresh()
        t0 = time.perf_counter()
        jax.block_until_ready(_decode_n(params, cache, tok, cfg=cfg, n=new_tokens))
        times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    return {"tok_s": batch * new_tokens / med, "ms_per_step": 1000 * med / new_tokens,
            "compile_s": compile_s}


def weight_bytes(params) -> int:
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params)))


def device_bandwidth_gbs() -> float:
    """Copy bandwidth of the default device (numpy memcpy on CPU, an XLA copy elsewhere)."""
    from jaxlm.utils.bench import memory_bandwidth_gbs, time_fn

    if jax.default_backend() == "cpu":
        return memory_bandwidth_gbs()
    x = jnp.ones((256 * 2**20 // 4,), jnp.float32)
    cp = jax.jit(lambda a: a + 1)
    t = time_fn(lambda: cp(x).block_until_ready(), repeats=10, warmup=2)["median"]
    return 2 * x.nbytes / t / 1e9


def hf_decode_tok_s(gguf_path, n_new: int = 33, prompt_len: int = 128) -> float:
    """HF transformers greedy decode rate of the same GGUF on CPU (needs the reference extra).

    Rate = (n_new - 1) / (t(n_new) - t(1)), i.e. decode only, prefill excluded.
    """
    import pathlib

    import torch
    from transformers import AutoModelForCausalLM

    path = pathlib.Path(gguf_path)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                 dtype=torch.float32)
    model.eval()
    ids = torch.tensor(np.random.default_rng(0).integers(100, 40000, (1, prompt_len)))

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
