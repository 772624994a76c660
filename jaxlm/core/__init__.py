"""Decoder-only Transformer family as pure functions.

weights (``param_spec`` / loaders) -> ``embed`` -> ``run_blocks`` -> ``unembed``; ``apply``
composes them, ``generate`` (one decode loop, logits processors, key masks) and
``score_packed`` (one packed scorer, optional shared-prefix cache) run on top.
"""

from jaxlm.core.cache import KVCache, cache_bytes, init_cache
from jaxlm.core.config import MODELS, ModelConfig
from jaxlm.core.params import ParamInfo, check_params, param_spec
from jaxlm.core.transformer import (
    BlocksOutput,
    ModelOutput,
    apply,
    cast_params,
    dense,
    embed,
    init,
    layer_params,
    positions_from_mask,
    run_blocks,
    segment_positions,
    stack_layers,
    unembed,
    unstack_layers,
)

__all__ = [
    "BlocksOutput",
    "KVCache",
    "MODELS",
    "ModelConfig",
    "ModelOutput",
    "ParamInfo",
    "apply",
    "cache_bytes",
    "cast_params",
    "check_params",
    "dense",
    "embed",
    "init",
    "init_cache",
    "layer_params",
    "param_spec",
    "positions_from_mask",
    "run_blocks",
    "segment_positions",
    "stack_layers",
    "unembed",
    "unstack_layers",
]
