"""Small shared pieces for jaxlm.ssm: initialisers, norms, activations.

Self-contained on purpose (jaxlm.core is developed in parallel); pure
functions over dict pytrees.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


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
    """LayerNorm over the last axis, computed in fp32, cast back."""
    xf = x.astype(jnp.float32)
    mu = xf.mean(-1, keepdims=True)
    var = ((xf - mu) ** 2).mean(-1, keepdims=True)
    y = (xf - mu) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"]
    return y.astype(x.dtype)


def rmsnorm_init(dim: int) -> dict:
    return {"scale": jnp.ones((dim,), jnp.float32)}


def rmsnorm(p: dict, x: jax.Array, eps: float = 1e-5) -> jax.Array:
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt((xf * xf).mean(-1, keepdims=True) + eps) * p["scale"]
    return y.astype(x.dtype)


def silu(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(x)


def count_params(params) -> int:
    """Number of scalars in a parameter pytree."""
    return int(sum(int(x.size) for x in jax.tree.leaves(params)))
