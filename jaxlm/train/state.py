"""Train state: a ``flax.struct`` pytree ``{params, opt_state, step}``."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct


@struct.dataclass
class TrainState:
    """Everything a training step reads and writes.

    Attributes:
        params: model parameters (any pytree).
        opt_state: the optax state of ``tx.init(params)``.
        step: int32 scalar, the number of optimizer updates applied so far.
    """

    params: Any
    opt_state: Any
    step: jax.Array


def create_state(params: Any, tx: optax.GradientTransformation) -> TrainState:
    """A step-0 state from ``params`` (jit it with ``out_shardings`` to place it sharded)."""
    return TrainState(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32))


def init_state(
    key: jax.Array, init_fn: Callable[[jax.Array], Any], tx: optax.GradientTransformation
) -> TrainState:
    """``create_state(init_fn(key), tx)``; pure, so ``jax.eval_shape`` gives the abstract state."""
    return create_state(init_fn(key), tx)


def abstract_state(
    init_fn: Callable[[jax.Array], Any], tx: optax.GradientTransformation
) -> TrainState:
    """The state as a tree of ``jax.ShapeDtypeStruct`` (no allocation)."""
    return jax.eval_shape(lambda k: init_state(k, init_fn, tx), jax.random.key(0))


def num_params(tree: Any) -> int:
    """Number of scalars in a pytree of arrays or ShapeDtypeStructs."""
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))
