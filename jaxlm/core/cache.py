"""The KV cache: preallocated static-shape buffers with per-slot positions.

Slots are addressed explicitly, so a cache policy (``jaxlm.kvcache``) can evict
a token and overwrite its slot without changing any shape, i.e. without
recompiling. Keys are stored *after* RoPE, at their original positions, so an
evicted-and-compacted cache still attends with the right relative positions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jaxlm.core.config import ModelConfig

Array = jax.Array


@struct.dataclass
class KVCache:
    """Per-layer key/value buffers.

    Attributes:
        k: [L, B, K, S, Dh] keys (RoPE applied at their original positions). Per
            layer and KV head the slots are contiguous rows of Dh, the order the
            attention contractions read them in (no transpose per step).
        v: [L, B, K, S, Dh] values.
        pos: [L, B, K, S] int32 original position of each slot, -1 when empty.
            Per layer and KV head so policies may keep different tokens per head.
        next_pos: [B] int32 position the next token of each sequence gets.
        cursor: [] int32 next free slot in append mode (shared by the batch;
            left-padded prompts keep slot alignment across the batch).
    """

    k: Array
    v: Array
    pos: Array
    next_pos: Array
    cursor: Array

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    @property
    def batch(self) -> int:
        return self.k.shape[1]


def init_cache(cfg: ModelConfig, batch: int, capacity: int, dtype=None) -> KVCache:
    """An empty cache of ``capacity`` slots for ``batch`` sequences."""
    if capacity <= 0 or batch <= 0:
        raise ValueError(f"init_cache: batch ({batch}) and capacity ({capacity}) must be > 0")
    dtype = dtype or cfg.cdtype
    shape = (cfg.n_layers, batch, cfg.n_kv_heads, capacity, cfg.head_dim)
    return KVCache(
        k=jnp.zeros(shape, dtype),
        v=jnp.zeros(shape, dtype),
        pos=jnp.full((cfg.n_layers, batch, cfg.n_kv_heads, capacity), -1, jnp.int32),
        next_pos=jnp.zeros((batch,), jnp.int32),
        cursor=jnp.zeros((), jnp.int32),
    )


def cache_bytes(cfg: ModelConfig, batch: int, capacity: int, dtype=None) -> int:
    """Bytes of the K and V buffers (what decode reads every step)."""
    dtype = jnp.dtype(dtype or cfg.cdtype)
    return 2 * cfg.n_layers * batch * capacity * cfg.n_kv_heads * cfg.head_dim * dtype.itemsize
