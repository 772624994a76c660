"""One function builds the optimizer (an ``optax.chain``) from a frozen ``OptimConfig``.

Order of the chain: clip by global norm -> AdamW / Adafactor / SGD direction ->
decoupled weight decay (masked by parameter path) -> scale by the scheduled
learning rate (so decay is ``lr * wd * p`` as in ``optax.adamw``). The schedule
is returned separately so the host can log it and the step can report it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from jaxlm.train.presets import OptimConfig

Schedule = Callable[[jax.Array | int], jax.Array]


def make_schedule(cfg: OptimConfig, total_steps: int) -> Schedule:
    """Linear warm-up to ``cfg.lr`` then cosine decay to ``cfg.lr * cfg.min_lr_ratio``.

    Args:
        cfg: optimizer config.
        total_steps: run length; the cosine spans ``decay_steps`` or the steps after warm-up.

    Returns:
        ``schedule(step) -> lr`` (jit-friendly).
    """
    warm = max(int(cfg.warmup_steps), 0)
    decay = cfg.decay_steps if cfg.decay_steps is not None else max(total_steps - warm, 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.lr, warmup_steps=warm,
        decay_steps=warm + max(int(decay), 1), end_value=cfg.lr * cfg.min_lr_ratio,
    )


def _lists_to_dicts(tree: Any) -> Any:
    """Lists/tuples of sub-trees -> dicts keyed "0", "1", ... (flatten_dict needs dicts)."""
    if isinstance(tree, dict):
        return {k: _lists_to_dicts(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return {str(i): _lists_to_dicts(v) for i, v in enumerate(tree)}
    return tree


def _like(template: Any, values: Any) -> Any:
    """Rebuilds ``values`` (dicts from ``_lists_to_dicts``) with ``template``'s containers."""
    if isinstance(template, dict):
        return {k: _like(v, values[k]) for k, v in template.items()}
    if isinstance(template, (list, tuple)):
        out = [_like(v, values[str(i)]) for i, v in enumerate(template)]
        return out if isinstance(template, list) else tuple(out)
    return values


def path_mask(params: Any, patterns: tuple[str, ...], *, match: bool = True) -> Any:
    """A bool pytree like ``params``: True where the "/"-joined path matches any regex.

    Args:
        params: parameter pytree (nested dicts, lists of per-layer dicts).
        patterns: regexes searched in paths like "layers/0/attn/wq".
        match: return True on a match (False: return True where nothing matches).

    Returns:
        Pytree of Python bools with the structure of ``params``.
    """
    flat = traverse_util.flatten_dict(_lists_to_dicts(params), sep="/")
    regs = [re.compile(p) for p in patterns]
    out = {k: (any(r.search(k) for r in regs) == match) for k in flat}
    return _like(params, traverse_util.unflatten_dict(out, sep="/"))


def decay_mask(cfg: OptimConfig) -> Callable[[Any], Any]:
    """``params -> bool tree``: True for the parameters that get weight decay."""
    return lambda params: path_mask(params, cfg.no_decay, match=False)


def make_optimizer(
    cfg: OptimConfig, total_steps: int
) -> tuple[optax.GradientTransformation, Schedule]:
    """Builds the ``optax.chain`` and its learning-rate schedule.

    Args:
        cfg: optimizer config (name, lr, schedule, decay mask, clipping).
        total_steps: steps of the whole run (sets the cosine length).

    Returns:
        (tx, lr_fn): the gradient transformation and ``lr_fn(step) -> lr``.
    """
    if cfg.name not in ("adamw", "adafactor", "sgd"):
        raise ValueError(
            f"optim.name={cfg.name!r} is unknown; use adamw, adafactor or sgd"
        )
    lr_fn = make_schedule(cfg, total_steps)
    parts: list[optax.GradientTransformation] = []
    if cfg.clip_norm and cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    if cfg.name == "adamw":
        parts.append(optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps))
    elif cfg.name == "adafactor":
        parts.append(optax.scale_by_factored_rms(decay_rate=cfg.b2, epsilon=cfg.eps))
    elif cfg.b1 > 0:  # sgd with momentum
        parts.append(optax.trace(decay=cfg.b1))
    if cfg.weight_decay and cfg.weight_decay > 0:
        parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask(cfg)))
    parts.append(optax.scale_by_learning_rate(lr_fn))
    return optax.chain(*parts), lr_fn


def global_norm(tree: Any) -> jax.Array:
    """L2 norm over all leaves of a pytree, in float32."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros((), jnp.float32)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))
