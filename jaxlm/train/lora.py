"""LoRA adapters (Hu et al. 2021) as a param transform over core's linear weights.

Any model whose params follow ``jaxlm.core.param_spec`` gets low-rank adapters on chosen
weight matrices, trained with the base frozen, without touching the forward pass: the
adapted model is just another params tree, so ``jaxlm.core.apply``, the scorer, ``generate``
and ``LocalBackend`` consume it unchanged::

    from jaxlm.train import lora
    adapters = lora.init_lora(key, params, cfg, rank=8, alpha=16)        # a Lora pytree
    merged = lora.apply_lora(params, adapters)      # W + (alpha / rank) * A @ B per target
    logits = jaxlm.core.apply(merged, cfg, tokens).logits

    # training: only the adapter arrays are the train state's params; the frozen base is
    # an argument of the jitted step (make_train_step over lora_loss_fn inside)
    tx, lr_fn = make_optimizer(optim_cfg, steps)
    state = create_state(adapters.weights, tx)
    step = jax.jit(lora.lora_train_step(lm_loss_fn(cfg), tx, adapters, lr_fn=lr_fn),
                   donate_argnums=0)
    state, metrics = step(state, batch, rng, params)
    adapters = adapters.replace(weights=state.params)

    lora.save_lora(workdir, adapters)  /  adapters = lora.load_lora(workdir)
    backend = LocalBackend(cfg=cfg, params=lora.merge(params, adapters), tokenizer=tok)

For a weight ``W`` whose contracted (input) axes have ``K`` elements and whose output axes
have ``N`` elements, the adapter is ``a`` [K, r] (small random, std 1/sqrt(K)) and ``b``
[r, N] (zeros, so a fresh adapter leaves the model exactly as it was), and the adapted
weight is ``W + (alpha / r) * (a @ b).reshape(W.shape)``. Input axes follow the
declaration in ``jaxlm.core.params``: ``wq``/``wk``/``wv`` [d, heads, head_dim],
``w_up``/``w_gate`` [d, f], ``w_down`` [f, d], ``lm_head`` [d, vocab] contract their first
axis; ``wo`` [heads, head_dim, d] contracts its first two.

Targets are regexes searched in "/"-joined param paths ("layers/3/attn/wq"); the default
adapts attention q/k/v/o and the MLP projections of every layer. Restricting targets to
the top layers (e.g. ``r"layers/(2[0-9])/attn/w[qkvo]$"``) also cuts training cost: the
backward pass stops at the lowest adapted layer.

Quantized base weights (``jaxlm.quant.QuantWeight`` leaves) are refused with an error
naming the fix (load with ``dtype="float32"`` or ``jaxlm.quant.dequantize_params``): a
merged adapter would have to be re-quantized, losing the update's small values.
"""

from __future__ import annotations

import math
import pathlib
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct, traverse_util

from jaxlm.core.config import ModelConfig
from jaxlm.core.params import param_spec, path_str

DEFAULT_TARGETS = (r"attn/w[qkvo]$", r"mlp/w_(up|down|gate)$")
# weight name -> number of leading (input) axes contracted with the activations
LINEAR_WEIGHTS = {"wq": 1, "wk": 1, "wv": 1, "wo": 2, "w_up": 1, "w_gate": 1, "w_down": 1,
                  "lm_head": 1}
FORMAT = "jaxlm-lora-v1"


class LoraError(ValueError):
    """Bad adapter configuration, a mismatch between adapters and params, or a bad file."""


@struct.dataclass
class Lora:
    """Adapters for a params tree.

    Attributes:
        weights: ``{"layers": {"3": {"attn": {"wq": {"a": [K, r], "b": [r, N]}}}}}`` (nested
            dicts keyed by the param path; the only pytree leaves, i.e. what trains).
        rank, alpha: the low rank r and the scale numerator (scale = alpha / rank).
        targets: the regexes the adapted paths were chosen with (kept for the record).
    """

    weights: dict[str, Any]
    rank: int = struct.field(pytree_node=False, default=8)
    alpha: float = struct.field(pytree_node=False, default=16.0)
    targets: tuple[str, ...] = struct.field(pytree_node=False, default=DEFAULT_TARGETS)

    @property
    def scale(self) -> float:
        return float(self.alpha) / float(self.rank)

    def paths(self) -> list[str]:
        """The adapted param paths ("layers/3/attn/wq"), sorted."""
        flat = traverse_util.flatten_dict(self.weights, sep="/")
        return sorted({k.rsplit("/", 1)[0] for k in flat})

    def num_params(self) -> int:
        return int(sum(math.prod(x.shape) for x in jax.tree.leaves(self.weights)))


def _linear_paths(cfg: ModelConfig) -> dict[str, tuple[tuple[int, ...], int]]:
    """{path: (shape, n_in)} of every weight matrix LoRA can adapt, from ``param_spec``."""
    out = {}
    for p, info in jax.tree_util.tree_flatten_with_path(
            param_spec(cfg), is_leaf=lambda x: hasattr(x, "logical_axes"))[0]:
        path = path_str(p)
        name = path.rsplit("/", 1)[-1]
        if name in LINEAR_WEIGHTS:
            out[path] = (tuple(info.shape), LINEAR_WEIGHTS[name])
    return out


def select_targets(cfg: ModelConfig, targets: Sequence[str] = DEFAULT_TARGETS) -> list[str]:
    """The param paths the ``targets`` regexes choose, in declaration order.

    Raises:
        LoraError: an invalid regex, or a regex that matches no adaptable weight (naming
            the adaptable paths).
    """
    if isinstance(targets, str):
        raise LoraError(f"LoRA targets must be a sequence of regexes, got the string "
                        f"{targets!r}; wrap it in a tuple")
    if not targets:
        raise LoraError("LoRA targets are empty; give at least one path regex, e.g. "
                        f"{DEFAULT_TARGETS}")
    linear = _linear_paths(cfg)
    chosen: dict[str, None] = {}
    for t in targets:
        try:
            rx = re.compile(t)
        except re.error as e:
            raise LoraError(f"LoRA target {t!r} is not a valid regex ({e})") from None
        hits = [p for p in linear if rx.search(p)]
        if not hits:
            names = sorted({p.rsplit("/", 2)[-2] + "/" + p.rsplit("/", 1)[-1] for p in linear})
            raise LoraError(
                f"LoRA target {t!r} matches no weight matrix of this model; targets are regexes "
                f"searched in paths like 'layers/0/attn/wq' (adaptable: {', '.join(names)})")
        chosen.update(dict.fromkeys(hits))
    return [p for p in linear if p in chosen]


def _get(params: Any, path: str) -> Any:
    node = params
    for k in path.split("/"):
        node = node[int(k)] if isinstance(node, (list, tuple)) else node[k]
    return node


def _check_base(w: Any, path: str, shape: tuple[int, ...]) -> None:
    if not hasattr(w, "dtype") or not hasattr(w, "ndim") or type(w).__name__ == "QuantWeight":
        raise LoraError(
            f"LoRA: base weight {path!r} is {type(w).__name__}, not a float array; quantized "
            "weights are not adapted: load the model with dtype='float32' or pass "
            "jaxlm.quant.dequantize_params(params)")
    if tuple(w.shape) != shape:
        raise LoraError(f"LoRA: base weight {path!r} has shape {tuple(w.shape)}, the model "
                        f"config declares {shape}; pass the cfg the params were made for "
                        "(layers must be a list, not stacked)")
    if not jnp.issubdtype(w.dtype, jnp.floating):
        raise LoraError(f"LoRA: base weight {path!r} has dtype {w.dtype}; need a float weight")


def init_lora(key: jax.Array, params: Any, cfg: ModelConfig, rank: int = 8,
              alpha: float = 16.0, targets: Sequence[str] = DEFAULT_TARGETS,
              dtype: Any = jnp.float32) -> Lora:
    """Fresh adapters: ``a`` ~ N(0, 1/K), ``b`` = 0 (the adapted model equals the base).

    Args:
        key: PRNG key (one fold per adapted weight).
        params: the base params (checked: float arrays of the declared shapes).
        cfg: the model config the params follow.
        rank: r >= 1, at most min(K, N) of every adapted weight.
        alpha: scale numerator (the update is scaled by alpha / rank).
        targets: path regexes (see ``select_targets``).
        dtype: adapter dtype (float32 keeps training stable whatever the base dtype).
    """
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise LoraError(f"LoRA rank must be a positive int, got {rank!r}")
    if not alpha > 0:
        raise LoraError(f"LoRA alpha must be > 0, got {alpha!r}")
    linear = _linear_paths(cfg)
    flat = {}
    for i, path in enumerate(select_targets(cfg, targets)):
        shape, n_in = linear[path]
        _check_base(_get(params, path), path, shape)
        k_in, n_out = math.prod(shape[:n_in]), math.prod(shape[n_in:])
        if rank > min(k_in, n_out):
            raise LoraError(f"LoRA rank {rank} exceeds min(in, out) = {min(k_in, n_out)} of "
                            f"{path!r} {shape}; use rank <= {min(k_in, n_out)}")
        a = jax.random.normal(jax.random.fold_in(key, i), (k_in, rank), jnp.float32)
        flat[path + "/a"] = (a / math.sqrt(k_in)).astype(dtype)
        flat[path + "/b"] = jnp.zeros((rank, n_out), dtype)
    return Lora(weights=traverse_util.unflatten_dict(flat, sep="/"), rank=rank,
                alpha=float(alpha), targets=tuple(targets))


def delta(lora: Lora, path: str, shape: Sequence[int]) -> jax.Array:
    """``(alpha / r) * a @ b`` of one adapted weight, reshaped to the weight's ``shape``."""
    ab = _get(lora.weights, path)
    return (lora.scale * (ab["a"] @ ab["b"])).reshape(tuple(shape))


def apply_lora(params: Any, lora: Lora) -> Any:
    """The params with every adapted weight replaced by ``W + (alpha / r) * a @ b``.

    Pure and differentiable in both arguments (use it inside a loss: ``lora_loss_fn``);
    other leaves are shared, not copied. The result has the base tree's structure and
    dtypes, so every core consumer takes it unchanged.
    """
    flat = traverse_util.flatten_dict(lora.weights, sep="/")
    paths = sorted({k.rsplit("/", 1)[0] for k in flat})
    bad = [k for k in flat if k.rsplit("/", 1)[1] not in ("a", "b")]
    if bad:
        raise LoraError(f"LoRA weights: unexpected leaf {bad[0]!r}; each adapted path holds "
                        "exactly 'a' and 'b'")
    by_path = {}
    for path in paths:
        try:
            w = _get(params, path)
        except (KeyError, IndexError, TypeError, ValueError):
            raise LoraError(f"LoRA adapter for {path!r} has no weight in these params; were "
                            "the adapters made for another model?") from None
        a, b = _get(lora.weights, path)["a"], _get(lora.weights, path)["b"]
        if type(w).__name__ == "QuantWeight" or not hasattr(w, "shape"):
            _check_base(w, path, ())
        if a.shape[0] * b.shape[1] != math.prod(w.shape) or a.shape[1] != b.shape[0]:
            raise LoraError(f"LoRA adapter for {path!r} (a {tuple(a.shape)}, b "
                            f"{tuple(b.shape)}) does not fit the weight {tuple(w.shape)}")
        by_path[path] = (w + delta(lora, path, w.shape).astype(w.dtype)).astype(w.dtype)

    def rebuild(node, prefix):
        if prefix in by_path:
            return by_path[prefix]
        if isinstance(node, dict):
            return {k: rebuild(v, f"{prefix}/{k}" if prefix else k) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            out = [rebuild(v, f"{prefix}/{i}" if prefix else str(i)) for i, v in enumerate(node)]
            return out if isinstance(node, list) else tuple(out)
        return node

    return rebuild(params, "")


def merge(params: Any, lora: Lora) -> Any:
    """``apply_lora`` computed once, outside any trace (jitted), for inference: the merged
    tree costs the same to run as the base model."""
    return jax.jit(apply_lora)(params, lora)


def lora_loss_fn(base_loss_fn, base_params: Any, lora: Lora):
    """A ``loss_fn(adapter_weights, batch, rng)`` for ``make_train_step`` with the base frozen.

    ``base_loss_fn(params, batch, rng) -> (loss, weight)`` is any full-model loss (e.g.
    ``jaxlm.train.lm_loss_fn(cfg)``); the returned closure merges ``base_params`` (held as
    constants, so gradients exist only for the adapters) with the adapter weights it is
    given, whose tree must match ``lora.weights`` (the train state's params).
    """
    frozen = jax.tree.map(jax.lax.stop_gradient, base_params)

    def loss_fn(weights, batch, rng):
        return base_loss_fn(apply_lora(frozen, lora.replace(weights=weights)), batch, rng)

    return loss_fn


def lora_train_step(base_loss_fn, tx, lora: Lora, **step_kw):
    """``step(state, batch, rng, base_params) -> (state, metrics)``: ``make_train_step``
    over ``lora_loss_fn`` with the frozen base passed as an argument.

    Jit it with ``jax.jit(step, donate_argnums=0)``; ``state.params`` are the adapter
    weights (``create_state(lora.weights, tx)``). Passing the base as an argument (rather
    than jitting a closure over it) keeps hundreds of MB of weights out of the compiled
    program as constants (slow constant folding, a second copy in memory). ``step_kw`` go
    to ``make_train_step`` (``lr_fn``, ``grad_accum``, ``axis_name``).
    """
    from jaxlm.train.step import make_train_step

    def step(state, batch, rng, base_params):
        loss_fn = lora_loss_fn(base_loss_fn, base_params, lora)
        return make_train_step(loss_fn, tx, **step_kw)(state, batch, rng)

    return step


# --------------------------------------------------------------------------- checkpoints
def _meta(lora: Lora) -> dict[str, Any]:
    flat = traverse_util.flatten_dict(lora.weights, sep="/")
    return {"format": FORMAT, "rank": lora.rank, "alpha": lora.alpha,
            "targets": list(lora.targets),
            "shapes": {k: list(v.shape) for k, v in flat.items()},
            "dtypes": {k: str(v.dtype) for k, v in flat.items()}}


def save_lora(directory: str | pathlib.Path, lora: Lora, *, step: int = 0,
              extra: dict[str, Any] | None = None) -> pathlib.Path:
    """Writes the adapters with orbax (``jaxlm.train.checkpoint.Checkpointer``: atomic, with
    per-array SHA-256 checksums) under ``directory``; ``extra`` (JSON) goes into the meta.
    Returns the checkpoints folder."""
    from jaxlm.train.checkpoint import Checkpointer

    d = pathlib.Path(directory).absolute()
    with Checkpointer(d, keep=1, async_save=False) as ck:
        ck.save(step, lora.weights, {**_meta(lora), "extra": extra or {}}, force=True)
    return d


def load_lora(directory: str | pathlib.Path, step: int | None = None) -> Lora:
    """Reads adapters written by ``save_lora`` (checksums verified).

    Raises:
        LoraError: no adapter checkpoint at ``directory`` or a meta that is not one.
        jaxlm.train.checkpoint.CheckpointError: unreadable/corrupt files.
    """
    from jaxlm.train.checkpoint import Checkpointer

    d = pathlib.Path(directory).absolute()
    if not d.is_dir():
        raise LoraError(f"no LoRA adapter folder at {d}; train one (python -m "
                        "experiments.tips.finetune) or fix the path")
    with Checkpointer(d, read_only=True, async_save=False) as ck:
        step = ck.latest_step() if step is None else step
        if step is None:
            raise LoraError(f"{d} holds no adapter checkpoint; train one or fix the path")
        meta = ck.read_meta(step)
        if meta.get("format") != FORMAT:
            raise LoraError(f"{d}/{step} is not a LoRA adapter checkpoint (format "
                            f"{meta.get('format')!r}, want {FORMAT!r})")
        abstract = traverse_util.unflatten_dict(
            {k: jax.ShapeDtypeStruct(tuple(s), jnp.dtype(meta["dtypes"][k]))
             for k, s in meta["shapes"].items()}, sep="/")
        weights, _ = ck.restore(abstract, step)
    return Lora(weights=weights, rank=int(meta["rank"]), alpha=float(meta["alpha"]),
                targets=tuple(meta["targets"]))


def read_lora_meta(directory: str | pathlib.Path) -> dict[str, Any]:
    """The JSON meta of the newest adapter checkpoint (rank, alpha, targets, extra)."""
    from jaxlm.train.checkpoint import Checkpointer

    with Checkpointer(pathlib.Path(directory).absolute(), read_only=True,
                      async_save=False) as ck:
        return ck.read_meta()


__all__ = ["DEFAULT_TARGETS", "Lora", "LoraError", "apply_lora", "delta", "init_lora",
           "load_lora", "lora_loss_fn", "lora_train_step", "merge", "read_lora_meta", "save_lora",
           "select_targets"]
