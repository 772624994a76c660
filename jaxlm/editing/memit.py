"""MEMIT (Meng et al., ICLR 2023): many edits spread over a range of MLP layers.

For a batch of n requests and critical layers R = (l_1 < ... < l_m):

1. z_i = h_i^L + delta_i at the last critical layer L = l_m (delta optimised on the
   residual stream, "resid_post" of block L, as in ROME's value step);
2. for each l in R in ascending order, with the current (partly edited) model:
   keys K [n, F] (context-averaged "mlp_hidden" at the subject's last token),
   residuals R_l = (z - h^L_current) / (m - idx(l))  [n, D],
   and the least-squares update

       paper orientation  Delta_p = R^T K (lam C + K^T K)^-1          [D, F]
       jaxlm (w_down [F, D])  dW = (lam C + K^T K)^-1 K^T R            [F, D]

   which minimises sum_old ||k W - m||^2 (weighted by lam C) + sum_new ||k W - r||^2.

With one request and one layer, Sherman-Morrison gives
dW = C^-1 k r^T / (lam + k^T C^-1 k), i.e. the consistent-key ROME update scaled by
k^T C^-1 k / (lam + k^T C^-1 k) (equal as lam -> 0).
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
from jaxlm.editing.rome import check_layer, with_w_down
from jaxlm.editing.value import ValueConfig, optimize_delta, subject_activations

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class MemitConfig:
    """MEMIT hyper-parameters.

    Attributes:
        layers: critical layers (ascending, distinct).
        value: delta-optimisation settings (delta on the residual at max(layers)).
        mom2_weight: lam, the weight of the preserved-keys term lam * C.
        use_cov: C from a text sample (True; pass ``covs``) or C = I (False).
    """

    layers: tuple[int, ...] = (3, 4, 5, 6, 7)
    value: ValueConfig = ValueConfig()
    mom2_weight: float = 1.0e4
    use_cov: bool = True


def memit_update(keys: np.ndarray, resid: np.ndarray, cov: np.ndarray | None, lam: float) -> np.ndarray:
    """dW [F, D] = (lam C + K^T K)^-1 K^T R in float64 (C = I when ``cov`` is None).

    Args:
        keys: K [n, F]; resid: R [n, D]; cov: C [F, F] or None; lam: weight of C.
    """
    k = np.asarray(keys, np.float64)
    r = np.asarray(resid, np.float64)
    if k.ndim != 2 or r.ndim != 2 or k.shape[0] != r.shape[0]:
        raise ValueError(f"memit_update: need K [n, F] and R [n, D]; got {k.shape}, {r.shape}")
    f = k.shape[1]
    c = np.eye(f) if cov is None else np.asarray(cov, np.float64)
    a = lam * c + k.T @ k
    return np.linalg.solve(a, k.T @ r)


@dataclasses.dataclass
class MemitInfo:
    """What a MEMIT batch did."""

    layers: tuple[int, ...]
    deltas: np.ndarray  # [n, D] optimised residual shifts at layer L
    p_target: list[float]  # per request, at the end of its delta optimisation
    delta_w: dict[int, np.ndarray]  # per layer, [F, D]
    rel_norm: dict[int, float]
    seconds: float
    keys: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)  # per layer, [n, F]


def memit_edit(
    params: Params,
    cfg: ModelConfig,
    tok: TokenizerLike,
    requests: Sequence[EditRequest],
    hp: MemitConfig,
    *,
    contexts: Sequence[str] = ("{}",),
    covs: dict[int, np.ndarray] | None = None,
    value_cache: dict | None = None,
) -> tuple[Params, MemitInfo]:
    """Applies a batch of edits with MEMIT. Pure: returns new params.

    Args:
        params, cfg, tok: the model.
        requests: the edits (distinct subjects are best).
        hp: MEMIT settings; ``hp.use_cov`` requires ``covs`` for every layer.
        contexts: context templates ("{}" first).
        covs: layer -> C [F, F] (``cov.key_second_moments``).
        value_cache: optional dict reused across calls on the same ``params`` and contexts:
            each request's delta optimisation (independent of the batch) is stored there
            and not recomputed (batches of 1, 10, 39 edits share their deltas).
    """
    t0 = time.perf_counter()
    lays = tuple(int(x) for x in hp.layers)
    if not lays or list(lays) != sorted(set(lays)):
        raise ValueError(f"MemitConfig.layers must be distinct and ascending, got {hp.layers}")
    for lay in lays:
        check_layer(cfg, lay)
    if not requests:
        raise ValueError("memit_edit: no requests")
    if hp.use_cov and (covs is None or any(lay not in covs for lay in lays)):
        raise ValueError(f"MemitConfig.use_cov=True needs covs for layers {lays}")
    if not contexts or contexts[0] != "{}":
        raise ValueError("contexts must start with the bare template '{}'")
    new, info = spread_edits(
        params, cfg, tok, requests, lays, hp.value, contexts=contexts, value_cache=value_cache,
        update=lambda lay, keys, resid: memit_update(
            keys, resid, covs[lay] if hp.use_cov else None, hp.mom2_weight))
    info.seconds = time.perf_counter() - t0
    return new, info


def spread_edits(
    params: Params,
    cfg: ModelConfig,
    tok: TokenizerLike,
    requests: Sequence[EditRequest],
    lays: tuple[int, ...],
    value_hp: ValueConfig,
    *,
    contexts: Sequence[str],
    update: Callable[[int, np.ndarray, np.ndarray], np.ndarray],
    value_cache: dict | None = None,
) -> tuple[Params, MemitInfo]:
    """MEMIT's steps 1-2 with the per-layer solve given as ``update(layer, K [n, F], R [n, D])
    -> dW [F, D]`` (MEMIT's least squares, AlphaEdit's null-space-projected one)."""
    t0 = time.perf_counter()
    top = lays[-1]
    deltas, z, ps = [], [], []
    for req in requests:
        ck = (req, top, tuple(contexts), value_hp)
        res = None if value_cache is None else value_cache.get(ck)
        if res is None:
            res = optimize_delta(params, cfg, tok, req, contexts, layer=top, site="resid_post",
                                 hp=value_hp)
            if value_cache is not None:
                value_cache[ck] = res
        deltas.append(res.delta)
        z.append(res.v0 + res.delta)
        ps.append(res.p_target)
    z = np.stack(z)  # [n, D]
    new = params
    dws, rels, all_keys = {}, {}, {}
    for i, lay in enumerate(lays):
        acts = subject_activations(new, cfg, tok, requests, contexts,
                                   (("mlp_hidden", lay), ("resid_post", top)))
        keys = acts[("mlp_hidden", lay)].mean(1)  # [n, F], averaged over contexts
        cur = acts[("resid_post", top)].mean(1)  # [n, D]
        resid = (z - cur) / (len(lays) - i)
        dw = update(lay, keys, resid)
        w_old = layer_params(new, lay)["mlp"]["w_down"]
        w = np.asarray(w_old, np.float64)
        new = with_w_down(new, lay, jnp.asarray(w + dw, dtype=jnp.asarray(w_old).dtype))
        dws[lay] = dw
        all_keys[lay] = keys
        rels[lay] = float(np.linalg.norm(dw) / max(np.linalg.norm(w), 1e-12))
    info = MemitInfo(layers=lays, deltas=np.stack(deltas), p_target=ps, delta_w=dws,
                     rel_norm=rels, seconds=time.perf_counter() - t0, keys=all_keys)
    return new, info


def make_memit_editor(
    cfg: ModelConfig,
    tok: TokenizerLike,
    hp: MemitConfig,
    *,
    contexts: Sequence[str] = ("{}",),
    covs: dict[int, np.ndarray] | None = None,
) -> Callable[[Params, Sequence[EditRequest]], Params]:
    """``edit(params, requests) -> new_params`` closed over the settings (composable)."""

    def edit(params: Params, requests: Sequence[EditRequest]) -> Params:
        return memit_edit(params, cfg, tok, requests, hp, contexts=contexts, covs=covs)[0]

    return edit
