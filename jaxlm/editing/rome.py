"""ROME (Meng et al., NeurIPS 2022): a rank-one update of one MLP output projection.

The MLP of block l is read as a linear associative memory: keys k in R^F (the
"mlp_hidden" activation, input of ``w_down``) map to values v = k @ W in R^D.

Orientation: jaxlm stores ``w_down`` as W [F, D] and computes ``out = k @ W``.
The paper's update  W_p + Lambda (C^-1 k*)^T  (W_p = W^T, [D, F]) is therefore
written here as

    W' = W + u (x) lam,   u = C^-1 k* [F],   lam = (v* - k* @ W) / (u . k*) [D],

so that k* @ W' = v* exactly, and every key orthogonal to u under C is unchanged.

Keys: k* is averaged over context prefixes. With ``consistent_keys=True`` (the
r-ROME fix, Gupta et al. 2024) the same k* is used for u, the residual and the
denominator, and v* = k* @ W + delta*. With ``consistent_keys=False`` (the
original code) the residual and denominator use the bare-prompt key k_p and
v* = k_p @ W + delta*, which is the asymmetry blamed for collapse in
sequential editing.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxlm.core import ModelConfig, layer_params
from jaxlm.editing.requests import EditRequest, TokenizerLike
from jaxlm.editing.value import DeltaResult, ValueConfig, optimize_delta

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class RomeConfig:
    """ROME hyper-parameters.

    Attributes:
        layer: the edited block (its ``w_down``).
        value: delta-optimisation settings.
        consistent_keys: r-ROME keys (True) or the original asymmetric keys (False).
        use_cov: C from a text sample (True; pass ``cov``) or C = I (False, as
            EasyEdit's Llama configs with ``mom2_adjustment: false``).
    """

    layer: int = 4
    value: ValueConfig = ValueConfig()
    consistent_keys: bool = True
    use_cov: bool = False


@dataclasses.dataclass
class RomeInfo:
    """What one ROME edit did (for reports and tests)."""

    layer: int
    k_star: np.ndarray  # [F] key used for the constraint
    v_star: np.ndarray  # [D] target value
    u: np.ndarray  # [F] C^-1 k*
    delta_w: np.ndarray  # [F, D] the update, float64
    nll: list[float]
    p_target: float
    seconds: float
    rel_norm: float  # ||dW||_F / ||W||_F
    value: DeltaResult | None = None  # the k*/v* optimisation (reusable, see rome_edit)


def check_layer(cfg: ModelConfig, layer: int) -> None:
    if not 0 <= int(layer) < cfg.n_layers:
        raise ValueError(
            f"edit layer {layer} is out of range: the model has {cfg.n_layers} blocks (0.."
            f"{cfg.n_layers - 1}); pick a layer from causal tracing."
        )


def rank_one_update(
    w: np.ndarray, k: np.ndarray, v: np.ndarray, cov: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The ROME update in jaxlm's [F, D] orientation, computed in float64.

    Args:
        w: w_down [F, D].
        k: key k* [F].
        v: target value v* [D].
        cov: C [F, F] (None: identity).

    Returns:
        (dW [F, D] with (W + dW)^T k = v, u = C^-1 k [F]).
    """
    w = np.asarray(w, np.float64)
    k = np.asarray(k, np.float64)
    v = np.asarray(v, np.float64)
    if w.ndim != 2 or k.shape != (w.shape[0],) or v.shape != (w.shape[1],):
        raise ValueError(f"rank_one_update: need w [F, D], k [F], v [D]; got {w.shape}, "
                         f"{k.shape}, {v.shape}")
    u = k if cov is None else np.linalg.solve(np.asarray(cov, np.float64), k)
    denom = float(u @ k)
    if not np.isfinite(denom) or abs(denom) < 1e-12:
        raise ValueError("rank_one_update: k^T C^-1 k is ~0 (zero key or singular C)")
    lam = (v - k @ w) / denom
    return np.outer(u, lam), u


def with_w_down(params: Params, layer: int, w_new) -> Params:
    """A new params tree with block ``layer``'s w_down replaced; every other leaf is shared.

    Stacked layers (``core.stack_layers``) stay stacked: only the w_down stack is renewed.
    """
    if isinstance(params["layers"], dict):
        lay = params["layers"]
        stack = lay["mlp"]["w_down"]
        new = stack.at[layer].set(jnp.asarray(w_new, stack.dtype))
        return {**params, "layers": {**lay, "mlp": {**lay["mlp"], "w_down": new}}}
    layers = list(params["layers"])
    lp = layers[layer]
    layers[layer] = {**lp, "mlp": {**lp["mlp"], "w_down": w_new}}
    return {**params, "layers": layers}


def rome_edit(
    params: Params,
    cfg: ModelConfig,
    tok: TokenizerLike,
    request: EditRequest,
    hp: RomeConfig,
    *,
    contexts: Sequence[str] = ("{}",),
    cov: np.ndarray | None = None,
    value: DeltaResult | None = None,
) -> tuple[Params, RomeInfo]:
    """Applies one ROME edit. Pure: returns new params; ``params`` is not modified.

    Args:
        params: model params (device arrays; see ``hooks.as_jax``). Layers stacked with
            ``core.stack_layers`` are read in place and come back stacked: a caller that
            edits many times keeps one stack (a listed ``layers`` is stacked per edit).
        cfg: model config.
        tok: tokenizer.
        request: the edit.
        hp: ROME settings; ``hp.use_cov`` requires ``cov``.
        contexts: context templates ("{}" first) for keys and the value loss.
        cov: C [F, F] of keys at ``hp.layer`` (see ``cov.key_second_moments``).
        value: a ``RomeInfo.value`` of an earlier edit of the same request, layer and
            contexts on the same ``params`` (k* and v* do not depend on C, so the C = I and
            estimated-C variants can share one optimisation); None computes it.

    Returns:
        (new params, RomeInfo).
    """
    t0 = time.perf_counter()
    check_layer(cfg, hp.layer)
    if hp.use_cov and cov is None:
        raise ValueError("RomeConfig.use_cov=True needs cov=C (cov.key_second_moments)")
    if cov is not None and cov.shape != (cfg.d_ff, cfg.d_ff):
        raise ValueError(f"cov must be [{cfg.d_ff}, {cfg.d_ff}], got {cov.shape}")
    if not contexts or contexts[0] != "{}":
        raise ValueError("contexts must start with the bare template '{}'")
    if value is not None and value.keys.shape != (len(contexts), cfg.d_ff):
        raise ValueError("rome_edit: `value` was computed with other contexts or another model")
    res = value if value is not None else optimize_delta(
        params, cfg, tok, request, contexts, layer=hp.layer, site="mlp_out", hp=hp.value)
    # keys read in the same (cached-prefix) forward pass: row 0 is the bare prompt "{}"
    k_star, k_prompt = res.keys.mean(0), res.keys[0]
    w_old = layer_params(params, hp.layer)["mlp"]["w_down"]
    w = np.asarray(w_old, np.float64)
    k_used = k_star if hp.consistent_keys else k_prompt
    v_star = k_used @ w + res.delta
    if hp.consistent_keys:
        dw, u = rank_one_update(w, k_star, v_star, cov if hp.use_cov else None)
    else:
        # Original ROME: u from the averaged key, residual/denominator from the prompt key.
        u = k_star if not hp.use_cov else np.linalg.solve(cov, k_star)
        dw = np.outer(u, (v_star - k_prompt @ w) / float(u @ k_prompt))
    w_new = jnp.asarray(np.asarray(w_old, np.float64) + dw, dtype=jnp.asarray(w_old).dtype)
    info = RomeInfo(
        layer=hp.layer, k_star=k_used, v_star=v_star, u=u, delta_w=dw, nll=res.nll,
        p_target=res.p_target, seconds=time.perf_counter() - t0,
        rel_norm=float(np.linalg.norm(dw) / max(np.linalg.norm(w), 1e-12)), value=res,
    )
    return with_w_down(params, hp.layer, w_new), info


def make_rome_editor(
    cfg: ModelConfig,
    tok: TokenizerLike,
    hp: RomeConfig,
    *,
    contexts: Sequence[str] = ("{}",),
    cov: np.ndarray | None = None,
) -> Callable[[Params, EditRequest], Params]:
    """``edit(params, request) -> new_params`` closed over the settings (composable)."""

    def edit(params: Params, request: EditRequest) -> Params:
        return rome_edit(params, cfg, tok, request, hp, contexts=contexts, cov=cov)[0]

    return edit
