"""Small shared pieces for jaxlm.ssm: initialisers, norms, activations.

Pure functions over dict pytrees; the norms are ``jaxlm.core.layers.norm``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jaxlm.core import layers as core_layers
from jaxlm.core.config import ModelConfig


def torch_linear_init(key: jax.Array, fan_in: int, shape: tuple[int, ...]) -> jax.Array:
    """PyTorch ``nn.Linear`` / ``nn.Conv`` default: U(+-1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def trunc_normal(key: jax.Array, shape: tuple[int, ...], std: float) -> jax.Array:
    """Truncated normal at +-2 std (timm ``trunc_normal_``)."""
    return std * jax.random.truncated_normal(key, -2.0, 2.0, shape, jnp.float32)


def layernorm_init(dim: int) -> dict:
    return {"scale": jnp.ones((dim,), jnp.float32), "bias": jnp.zeros((dim,), jnp.float32)}


def layernorm(p: dict, x: jax.Array, eps: float = 1e-5) -> jax.Array:
    """LayerNorm over the last axis, computed in fp32, cast back (``core.layers.norm``)."""
    return core_layers.norm(p, _norm_cfg("layer", float(eps)), x)


def rmsnorm_init(dim: int) -> dict:
    return {"scale": jnp.ones((dim,), jnp.float32)}


def rmsnorm(p: dict, x: jax.Array, eps: float = 1e-5) -> jax.Array:
    """RMSNorm over the last axis, computed in fp32, cast back (``core.layers.norm``)."""
    return core_layers.norm(p, _norm_cfg("rms", float(eps)), x)


@functools.lru_cache(maxsize=16)
def _norm_cfg(kind: str, eps: float) -> ModelConfig:
    """The two fields of a ModelConfig that ``core.layers.norm`` reads (configs only)."""
    return ModelConfig(norm=kind, norm_eps=eps)


def silu(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(x)


def count_params(params) -> int:
    """Number of scalars in a parameter pytree."""
    return int(sum(int(x.size) for x in jax.tree.leaves(params)))
