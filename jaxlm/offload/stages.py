"""The core Transformer as an ordered list of layers, cut into contiguous sub-models.

Layers (the planner's unit): ``embed`` (token + learned position embeddings),
``block_0 .. block_{L-1}``, ``head`` (final norm + LM head + mean cross-entropy).
A sub-model is a half-open range ``[start, end)`` of layer indices. Each sub-model
exposes pure jitted functions (section 1.8 of the spec):

* ``fwd(params_k, x, batch) -> x'`` (``x`` is ignored by the first sub-model, which
  reads ``batch["inputs"]``; the last one returns the scalar loss);
* ``fwd_bwd(params_k, x, g_out, batch) -> (g_params, g_x)`` for inner sub-models and
  ``loss_bwd(params_k, x, batch) -> (loss, g_params, g_x)`` for the last one. Both
  run ``jax.vjp`` inside jit, so the sub-model's internals are recomputed.

``batch`` is ``{"inputs": int [B, T], "targets": int [B, T]}``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxlm.core import transformer as tfm
from jaxlm.core.config import ModelConfig

Params = dict[str, Any]


def check_model(cfg: ModelConfig) -> None:
    """Raises ValueError for configs the stage split does not support."""
    if cfg.tie_embeddings:
        raise ValueError(
            "offload: the model ties embeddings (embed is used by the first and the "
            "last sub-model); pass --override=tie_embeddings=False (or a preset with an untied "
            "head such as gptj-tiny_test)")


def layer_names(cfg: ModelConfig) -> list[str]:
    """``["embed", "block_0", ..., "head"]``."""
    return ["embed"] + [f"block_{i}" for i in range(cfg.n_layers)] + ["head"]


def split_params(params: Params, cfg: ModelConfig) -> list[Params]:
    """Full param tree -> per-layer trees (in ``layer_names`` order)."""
    check_model(cfg)
    emb = {"embed": params["embed"]}
    if "pos_embed" in params:
        emb["pos_embed"] = params["pos_embed"]
    head = {"final_norm": params["final_norm"], "lm_head": params["lm_head"]}
    if "lm_head_bias" in params:
        head["lm_head_bias"] = params["lm_head_bias"]
    return [emb] + [{"block": lp} for lp in params["layers"]] + [head]


def merge_params(per_layer: Sequence[Params]) -> Params:
    """Inverse of ``split_params``."""
    out: Params = dict(per_layer[0])
    out["layers"] = [p["block"] for p in per_layer[1:-1]]
    out.update(per_layer[-1])
    return out


def group(per_layer: Sequence[Params], cuts: Sequence[int]) -> list[list[Params]]:
    """Per-layer trees -> per-sub-model lists, cut at ``cuts`` (boundaries, 0 < c < n)."""
    bounds = [0, *cuts, len(per_layer)]
    return [list(per_layer[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def ranges(cuts: Sequence[int], n_layers_total: int) -> list[tuple[int, int]]:
    """Cut points -> ``[(start, end), ...]``; validates them."""
    bounds = [0, *cuts, n_layers_total]
    if any(b <= a for a, b in zip(bounds[:-1], bounds[1:])):
        raise ValueError(f"cuts {list(cuts)} must be strictly increasing inside (0, "
                         f"{n_layers_total})")
    return list(zip(bounds[:-1], bounds[1:]))


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean token cross-entropy, logits [B, T, V] f32, targets [B, T]."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def _run_layers(sub: list[Params], cfg: ModelConfig, start: int, n_total: int, x, batch):
    """Runs layers ``start .. start + len(sub) - 1`` of ``layer_names``: the embedding if
    included, the blocks through ``core.run_blocks``, and the head (returning the loss)."""
    tokens = batch["inputs"]
    b, t = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32)[None], (b, t))
    if start == 0:
        x = tfm.embed(sub[0], cfg, tokens, positions)
    blocks = [p["block"] for j, p in enumerate(sub) if 0 < start + j < n_total - 1]
    if blocks:
        x = tfm.run_blocks({"layers": blocks}, cfg, x, positions=positions).x
    if start + len(sub) == n_total:
        return cross_entropy(tfm.unembed(sub[-1], cfg, x), batch["targets"])
    return x


@dataclasses.dataclass(frozen=True)
class SubModel:
    """A contiguous range of layers with its jitted functions.

    Attributes:
        cfg: model config.
        start, end: layer range ``[start, end)``.
        n_total: number of layers of the whole model (L + 2).
    """

    cfg: ModelConfig
    start: int
    end: int
    n_total: int

    @property
    def first(self) -> bool:
        return self.start == 0

    @property
    def last(self) -> bool:
        return self.end == self.n_total

    def apply(self, params: list[Params], x, batch):
        """Forward (un-jitted); returns the boundary activation or, for the last, the loss."""
        return _run_layers(params, self.cfg, self.start, self.n_total, x, batch)

    @property
    def fwd(self):
        return _jitted(self, "fwd")

    @property
    def fwd_bwd(self):
        return _jitted(self, "fwd_bwd")

    @property
    def loss_bwd(self):
        return _jitted(self, "loss_bwd")

    def _make_fwd(self):
        return self.apply

    def _make_fwd_bwd(self):
        """``(params, x, g_out, batch) -> (g_params, g_x)`` (recomputes the forward)."""

        def f(params, x, g_out, batch):
            if self.first:
                _, vjp = jax.vjp(lambda p: self.apply(p, None, batch), params)
                (gp,) = vjp(g_out)
                return gp, None
            _, vjp = jax.vjp(lambda p, h: self.apply(p, h, batch), params, x)
            return vjp(g_out)

        return f

    def _make_loss_bwd(self):
        """Last sub-model: ``(params, x, batch) -> (loss, g_params, g_x)``."""

        def f(params, x, batch):
            if self.first:  # a single sub-model holds everything
                loss, gp = jax.value_and_grad(lambda p: self.apply(p, None, batch))(params)
                return loss, gp, None
            loss, (gp, gx) = jax.value_and_grad(
                lambda p, h: self.apply(p, h, batch), argnums=(0, 1))(params, x)
            return loss, gp, gx

        return f


@functools.lru_cache(maxsize=256)
def _jitted(sub: SubModel, kind: str):
    """One jitted function per (sub-model, kind), shared by every trainer of the same model."""
    return jax.jit(getattr(sub, f"_make_{kind}")())


def make_submodels(cfg: ModelConfig, cuts: Sequence[int]) -> list[SubModel]:
    """Sub-models for the given cut points over ``layer_names(cfg)``."""
    check_model(cfg)
    n = cfg.n_layers + 2
    return [SubModel(cfg, a, b, n) for a, b in ranges(cuts, n)]


def full_loss(params: Params, cfg: ModelConfig, batch) -> jax.Array:
    """Reference loss through ``jaxlm.core.apply`` (the monolithic model)."""
    logits = tfm.apply(params, cfg, batch["inputs"]).logits
    return cross_entropy(logits, batch["targets"])
