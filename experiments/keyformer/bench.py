"""Decode-throughput measurement for fixed-budget caches, and the memory-bandwidth model.

Decode time does not depend on *which* tokens a cache holds, only on its
width, so the benchmark builds caches directly (random keys/values, original
positions of a P-token prompt) instead of prefilling 8k-token prompts on a
CPU. Three compiled loops per (prompt length, batch):

* ``core``: the substrate's own decode step (append at the cursor, no scores)
  at width P + T: the full-cache baseline a user would run. It goes through
  ``jaxlm.core.generate``'s per-step pieces (the jitted, cache-donating decode step
  and sampler that ``stream`` uses), called ``steps`` times with asynchronous
  dispatch: core's one loop, ``generate``, prefills its own cache and cannot start
  from a synthetic one, and prefilling 8k-token prompts per timed call is what this
  benchmark avoids.
* ``core@C``: the same at width C: what a policy costs without its bookkeeping.
* ``policy@C``: the evicting loop (write into the evicted slot, attention
  probabilities, score update, argmin) at width C; every policy shares it.

The bandwidth model: a decode step reads all weights once plus every cache slot
(keys, values; and for a policy the per-slot score and position), so
t_step ~ bytes / bandwidth and the predicted speedup is a ratio of bytes.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.core import generate as gen
from jaxlm.core.cache import KVCache
from jaxlm.core.config import ModelConfig
from jaxlm.core.transformer import Params, init
from jaxlm.kvcache import policy as P
from jaxlm.kvcache.cache import PolicyState
from jaxlm.kvcache.engine import _decode


def random_params(cfg: ModelConfig, seed: int = 0) -> Params:
    """Params of the right shapes filled from numpy (fast; values do not affect timing)."""
    shapes = jax.eval_shape(lambda k: init(k, cfg), jax.random.PRNGKey(0))
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: jnp.asarray((0.02 * rng.standard_normal(s.shape)).astype(s.dtype)), shapes)


def param_bytes(params: Params) -> int:
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params)))


def kv_bytes_per_slot(cfg: ModelConfig, policy: bool) -> int:
    """Bytes one cache slot costs per sequence across all layers (K, V; + score, pos)."""
    b = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * jnp.dtype(cfg.cdtype).itemsize
    b += cfg.n_layers * cfg.n_kv_heads * 4  # pos (the core cache keeps it too)
    if policy:
        b += cfg.n_layers * cfg.n_kv_heads * 4  # score
    return b


def step_bytes(cfg: ModelConfig, wbytes: int, batch: int, slots: int, policy: bool) -> int:
    """Bandwidth model: bytes read per decode step."""
    return wbytes + batch * slots * kv_bytes_per_slot(cfg, policy)


@functools.partial(jax.jit, static_argnames=("batch", "slots", "filled", "cfg"))
def _random_cache(key, *, batch, slots, filled, cfg):
    shape = (cfg.n_layers, batch, cfg.n_kv_heads, slots, cfg.head_dim)  # KVCache layout
    k1, k2 = jax.random.split(key)
    pos = jnp.where(jnp.arange(slots) < filled, jnp.arange(slots), -1).astype(jnp.int32)
    return KVCache(
        k=jax.random.normal(k1, shape, cfg.cdtype), v=jax.random.normal(k2, shape, cfg.cdtype),
        pos=jnp.broadcast_to(pos, (cfg.n_layers, batch, cfg.n_kv_heads, slots)),
        next_pos=jnp.full((batch,), filled, jnp.int32), cursor=jnp.int32(filled),
    )


def core_cache(cfg: ModelConfig, batch: int, slots: int, filled: int, seed: int = 0) -> KVCache:
    """A core cache with ``filled`` slots holding positions 0..filled-1."""
    return _random_cache(jax.random.PRNGKey(seed), batch=batch, slots=slots,
                         filled=filled, cfg=cfg)


def policy_state(cfg: ModelConfig, batch: int, capacity: int, prompt_len: int,
                 seed: int = 0) -> PolicyState:
    """A compressed-cache state: C - 1 prompt tokens kept, the last slot free.

    Kept positions are the newest C/2 prompt tokens plus an even spread of the
    older ones; scores are random (their values do not change the step's cost).
    """
    c = _random_cache(jax.random.PRNGKey(seed), batch=batch, slots=capacity,
                      filled=capacity - 1, cfg=cfg)
    n_old = (capacity - 1) // 2
    old = np.linspace(0, prompt_len - capacity, n_old).astype(np.int32)
    new = np.arange(prompt_len - (capacity - 1 - n_old), prompt_len, dtype=np.int32)
    pos = np.concatenate([old, new, [-1]]).astype(np.int32)
    shape = (cfg.n_layers, batch, cfg.n_kv_heads, capacity)
    cache = c.replace(pos=jnp.broadcast_to(jnp.asarray(pos), shape),
                      next_pos=jnp.full((batch,), prompt_len, jnp.int32))
    score = jax.random.uniform(jax.random.PRNGKey(seed + 1), shape) * (pos >= 0)
    return PolicyState(cache=cache, score=score,
                       free_slot=jnp.full(shape[:3], capacity - 1, jnp.int32),
                       prompt_len=jnp.full((batch,), prompt_len, jnp.int32),
                       step=jnp.zeros((), jnp.int32))


def _stats(times: Sequence[float], steps: int) -> dict[str, float]:
    per = [t / steps for t in times]
    return {"median_s": statistics.median(per), "min_s": min(per), "max_s": max(per),
            "p90_s": float(np.percentile(per, 90))}


def core_runner(params, cfg, batch, slots, filled, *, steps):
    """A callable running ``steps`` greedy core decode steps (append, no scoring), blocking.

    Each step is ``core.generate``'s jitted decode step (cache donated) followed by its
    greedy sampler, the pieces ``core.generate.stream`` runs; dispatch is asynchronous, so
    the host only waits at the end.
    """
    box = {"cache": core_cache(cfg, batch, slots, filled)}
    tok0 = jnp.zeros((batch,), jnp.int32)
    key = jax.random.PRNGKey(0)
    greedy = gen.SamplingConfig()

    def run():
        cache, tok = box["cache"], tok0
        for _ in range(steps):
            logits, cache = gen._decode_jit(params, cfg, tok, cache)
            tok = gen._sample_jit(logits, key, greedy)
        # keep the cursor inside the buffer so every repeat does the same work
        box["cache"] = jax.block_until_ready(cache.replace(
            cursor=jnp.int32(filled), next_pos=jnp.full((batch,), filled, jnp.int32)))

    return run


def policy_runner(params, cfg, pol: P.Policy, prompt_len, *, batch, steps, variants=()):
    """A callable running ``steps`` evicting decode steps for ``pol`` (all rows), blocking.

    Returns:
        (run, capacity C).
    """
    variants = variants or P.keyformer_variants([pol])
    pp = P.resolve_rows([pol] * batch, [prompt_len] * batch, steps + 1, variants)
    cap = int(pp.cap[0])
    box = {"state": policy_state(cfg, batch, cap, prompt_len)}
    logits = jnp.zeros((batch, cfg.vocab_size), jnp.float32)
    forced = jnp.zeros((batch, steps + 1), jnp.int32)
    use = jnp.zeros((batch,), bool)

    def run():
        o = _decode(params, box["state"], logits, pp, forced, use, None, cfg=cfg,
                    return_logits=False)
        box["state"] = jax.block_until_ready(o.state)

    return run, cap


def time_interleaved(runners: dict, *, steps: int, repeats: int, warmup: int = 1,
                     progress=None) -> dict[str, dict[str, float]]:
    """Times every runner round-robin (one call each per round), so load changes on a
    shared machine hit all of them alike; medians per decode step after warm-up.

    Returns:
        {name: {"median_s", "min_s", "max_s", "p90_s", "compile_s"}} (per step;
        compile_s is the first warm-up call, compile plus one run).
    """
    compile_s = {}
    for name, run in runners.items():
        for i in range(warmup):
            t0 = time.perf_counter()
            run()
            if i == 0:
                compile_s[name] = time.perf_counter() - t0
            if progress is not None:
                progress()
    times: dict[str, list[float]] = {n: [] for n in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
            if progress is not None:
                progress()
    return {n: {**_stats(t, steps), "compile_s": compile_s.get(n, 0.0),
                "rounds_s": [x / steps for x in t]} for n, t in times.items()}


def paired_ratio(num: dict, den: dict) -> float:
    """Median over rounds of num/den step times measured in the same round (robust to
    load drifting on a shared machine)."""
    return float(np.median(np.asarray(num["rounds_s"]) / np.asarray(den["rounds_s"])))


def decode_compiles() -> int:
    """How many times the evicting loop has been compiled in this process."""
    return _decode._cache_size()
