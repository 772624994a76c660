"""Decoder-only Transformer family as pure functions (config, layers, model, cache, generate)."""

from jaxlm.core.cache import KVCache, cache_bytes, init_cache
from jaxlm.core.config import MODELS, ModelConfig
from jaxlm.core.transformer import (
    ModelOutput,
    apply,
    init,
    positions_from_mask,
)

__all__ = [
    "KVCache",
    "MODELS",
    "ModelConfig",
    "ModelOutput",
    "apply",
    "cache_bytes",
    "init",
    "init_cache",
    "positions_from_mask",
]
