"""Throughput measurements of prefill and decode, shared by ``bench_generate`` and the
``smollm2`` reproduction entry.

Each function compiles first (timed separately), then reports the median over repeats.
Decode is timed through the library's one generation loop, ``jaxlm.core.generate.generate``
(no stop ids, fixed ``max_new_tokens``): the decode rate is
``new_tokens / (t(new_tokens + 1) - t(1))``, the same prefill-excluding difference the HF
anchor (``experiments/smollm2/hf_anchor.py``) uses.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.core import generate as gen
from jaxlm.core.cache import init_cache
from jaxlm.core.config import ModelConfig
from jaxlm.core.generate import prefill

_prefill = jax.jit(prefill, static_argnames=("cfg",), donate_argnames=("cache",))


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

    Runs ``core.generate.generate`` with ``max_new_tokens = new_tokens + 1`` (prefill, the
    first token, then ``new_tokens`` decode steps) and with ``max_new_tokens = 1`` (prefill
    and the first token only), alternating; the decode time is the median over repeats of
    the paired difference, so the prefill is not counted. (The longer run's cache is
    ``new_tokens`` slots wider, which its prefill also pays: a slight under-estimate of
    the rate.) Returns total tokens/s over the batch, ms per step and the compile time.
    """
    if new_tokens < 1:
        raise ValueError(f"measure_decode: new_tokens must be >= 1, got {new_tokens}")
    rng = np.random.default_rng(seed)
    prompts = rng.integers(0, cfg.vocab_size, (batch, prompt_len)).tolist()

    def run(n: int) -> float:
        t0 = time.perf_counter()
        jax.block_until_ready(gen.generate(params, cfg, prompts, max_new_tokens=n))
        return time.perf_counter() - t0

    run(1)
    compile_s = run(new_tokens + 1)
    diffs = [run(new_tokens + 1) - run(1) for _ in range(repeats)]
    med = float(np.median(diffs))
    if med <= 0:
        raise RuntimeError(f"measure_decode: decode time {med:.3g} s <= 0 (prefill noise "
                           f"larger than {new_tokens} decode steps); raise new_tokens or repeats")
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


# bench_generate's flag-free pieces: its format/anchor lists and the held-out text
ALL_FORMATS = ("float32", "bfloat16", "int8", "q8_0", "q4_1", "q4_1-a8")
ACT8 = "-a8"  # suffix: the kernel rounds activations to int8 (ModelConfig.quant_act_bits=8)


def split_format(fmt: str) -> tuple[str, int]:
    """A benchmark format name -> (weight dtype for ``weights.load``, kernel activation bits);
    "q4_1-a8" is Q4_1 with llama.cpp's int8 activations (q8_1), the others use 16 bits."""
    return (fmt[: -len(ACT8)], 8) if fmt.endswith(ACT8) else (fmt, 16)
ALL_ANCHORS = ("llamacpp", "hf")


def parse_list(value: str, allowed: tuple[str, ...], flag: str,
               default: tuple[str, ...]) -> tuple[str, ...]:
    """A comma-list flag value: '' -> default, 'all', 'none', or names from ``allowed``."""
    from absl.app import UsageError

    if value in ("", None):
        return default
    if value == "all":
        return allowed
    if value == "none":
        return ()
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [v for v in items if v not in allowed]
    if bad:
        raise UsageError(f"--{flag}: unknown {bad}; use a comma list of {', '.join(allowed)}, 'all' or 'none'.")
    return items


def heldout_tokens(tokenizer, n_tokens: int) -> list[int]:
    """``n_tokens`` token ids of Python's documentation topics (pydoc_data, in key order)."""
    import pydoc_data.topics as topics

    ids: list[int] = []
    for key in sorted(topics.topics):
        ids.extend(tokenizer.encode(topics.topics[key], add_bos=False))
        if len(ids) >= n_tokens:
            return ids[:n_tokens]
    raise RuntimeError(f"pydoc_data holds fewer than {n_tokens} tokens")


def quality_logits(params, cfg, windows):
    """Full-sequence logits [n_windows, W - 1, V] (float32 numpy) of each token window."""
    import jax
    import numpy as np

    from jaxlm.core import apply

    fwd = jax.jit(lambda p, t: apply(p, cfg, t).logits[:, :-1])
    return np.stack([np.asarray(fwd(params, np.asarray(w, np.int32)[None]))[0] for w in windows])
