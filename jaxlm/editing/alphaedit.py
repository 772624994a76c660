"""AlphaEdit (Fang et al., ICLR 2025): MEMIT's update projected onto the null space of
the preserved knowledge's keys.

With K0 the preserved keys (here: C = E[k k^T] of the "mlp_hidden" activations over a
text sample, ``cov.key_second_moments``), C = U diag(s) U^T, and U_0 the eigenvectors
with eigenvalues below a threshold, the projector is P = U_0 U_0^T. Every update is
dW = P X, so k0 @ dW = 0 for every key k0 in the span of the kept (large-eigenvalue)
directions: the outputs for preserved knowledge do not move.

For a batch of n edits at one layer with keys K [n, F] and residuals R [n, D]
(MEMIT's spread over layers, ``memit.spread_edits``), and K_p [m, F] the keys of the
edits made before (sequential editing), the paper's objective

    min ||(W + dW P) K - V||^2 + ||dW P||^2 + ||dW P K_p||^2     (paper orientation)

has, in jaxlm's orientation (w_down W [F, D], out = k @ W),

    dW = P (M P + l2 I)^-1 K^T R,    M = K^T K + K_p^T K_p,

which equals (P M + l2 I)^-1 P K^T R (the form in the paper's code) by the push-through
identity; the left factor P makes the projection exact in floating point.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxlm.core import ModelConfig
from jaxlm.editing.memit import MemitInfo, spread_edits
from jaxlm.editing.requests import EditRequest, TokenizerLike
from jaxlm.editing.rome import check_layer
from jaxlm.editing.value import ValueConfig

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class AlphaEditConfig:
    """AlphaEdit hyper-parameters.

    Attributes:
        layers: critical layers (ascending, distinct), as MEMIT.
        value: delta-optimisation settings (delta on the residual at max(layers)).
        null_rtol: eigenvalues of C below ``null_rtol * max eigenvalue`` span the null
            space (the paper thresholds the raw eigenvalues at 1e-2 on GPT-J/Llama3 keys;
            a relative threshold carries over between models with different key scales).
        l2: weight of ||dW P||^2 (the paper's L2; 10 in its Llama3 settings).
        use_prev: add the keys of earlier edits (``AlphaState``) to M (sequential editing).
    """

    layers: tuple[int, ...] = (3, 4, 5, 6, 7)
    value: ValueConfig = ValueConfig()
    null_rtol: float = 1e-2
    l2: float = 10.0
    use_prev: bool = True


def null_space_projector(cov: np.ndarray, rtol: float) -> tuple[np.ndarray, int]:
    """P [F, F] onto the eigenvectors of ``cov`` with eigenvalue < rtol * max eigenvalue,
    and the dimension of that null space (float64)."""
    c = np.asarray(cov, np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"null_space_projector: cov must be square [F, F], got {c.shape}")
    if not 0.0 < rtol < 1.0:
        raise ValueError(f"null_space_projector: rtol must be in (0, 1), got {rtol}")
    s, u = np.linalg.eigh((c + c.T) / 2)
    keep = s < rtol * s.max()
    u0 = u[:, keep]
    return u0 @ u0.T, int(keep.sum())


def alphaedit_update(
    keys: np.ndarray, resid: np.ndarray, proj: np.ndarray, prev_kk: np.ndarray | None,
    l2: float,
) -> np.ndarray:
    """dW [F, D] = P (M P + l2 I)^-1 K^T R with M = K^T K (+ K_p^T K_p), float64.

    Args:
        keys: K [n, F]; resid: R [n, D]; proj: P [F, F]; prev_kk: K_p^T K_p [F, F] of the
            earlier edits or None; l2: > 0.
    """
    k = np.asarray(keys, np.float64)
    r = np.asarray(resid, np.float64)
    if k.ndim != 2 or r.ndim != 2 or k.shape[0] != r.shape[0]:
        raise ValueError(f"alphaedit_update: need K [n, F] and R [n, D]; got {k.shape}, {r.shape}")
    f = k.shape[1]
    if proj.shape != (f, f):
        raise ValueError(f"alphaedit_update: P must be [{f}, {f}], got {proj.shape}")
    if l2 <= 0:
        raise ValueError(f"alphaedit_update: l2 must be > 0, got {l2}")
    m = k.T @ k
    if prev_kk is not None:
        m = m + prev_kk
    return proj @ np.linalg.solve(m @ proj + l2 * np.eye(f), k.T @ r)


@dataclasses.dataclass
class AlphaState:
    """What sequential AlphaEdit carries from edit to edit.

    Attributes:
        proj: layer -> (P [F, F], null-space dimension), fixed (from the unedited model).
        prev_kk: layer -> K_p^T K_p [F, F] of every key edited so far (starts at zero).
        n_edits: edits made so far.
    """

    proj: dict[int, tuple[np.ndarray, int]]
    prev_kk: dict[int, np.ndarray]
    n_edits: int = 0


def init_state(covs: dict[int, np.ndarray], hp: AlphaEditConfig) -> AlphaState:
    """Projectors from the preserved-key second moments C (un-shrunk) for ``hp.layers``."""
    missing = [lay for lay in hp.layers if lay not in covs]
    if missing:
        raise ValueError(f"AlphaEdit needs C for layers {missing}: pass "
                         "cov.key_second_moments(params, cfg, tok, hp.layers)")
    proj = {lay: null_space_projector(covs[lay], hp.null_rtol) for lay in hp.layers}
    return AlphaState(proj=proj, prev_kk={lay: np.zeros_like(p) for lay, (p, _) in proj.items()})


def alphaedit_edit(
    params: Params,
    cfg: ModelConfig,
    tok: TokenizerLike,
    requests: Sequence[EditRequest],
    hp: AlphaEditConfig,
    state: AlphaState,
    *,
    contexts: Sequence[str] = ("{}",),
    value_cache: dict | None = None,
) -> tuple[Params, AlphaState, MemitInfo]:
    """Applies a batch of edits with AlphaEdit. Pure: returns (new params, the state with
    this batch's keys added, info); neither ``params`` nor ``state`` is changed.

    Args:
        params, cfg, tok: the model (already carrying the earlier edits, if any).
        requests: the edits.
        hp: settings; state: from ``init_state`` (or the previous call).
        contexts: context templates ("{}" first).
        value_cache: as in ``memit.memit_edit`` (only valid for unchanged ``params``).
    """
    t0 = time.perf_counter()
    lays = tuple(int(x) for x in hp.layers)
    if not lays or list(lays) != sorted(set(lays)):
        raise ValueError(f"AlphaEditConfig.layers must be distinct and ascending, got {hp.layers}")
    for lay in lays:
        check_layer(cfg, lay)
        if lay not in state.proj:
            raise ValueError(f"AlphaState has no projector for layer {lay}: build it with "
                             "init_state(covs, hp) for the same layers")
    if not requests:
        raise ValueError("alphaedit_edit: no requests")
    if not contexts or contexts[0] != "{}":
        raise ValueError("contexts must start with the bare template '{}'")

    def update(lay, keys, resid):
        prev = state.prev_kk[lay] if hp.use_prev else None
        return alphaedit_update(keys, resid, state.proj[lay][0], prev, hp.l2)

    new, info = spread_edits(params, cfg, tok, requests, lays, hp.value, contexts=contexts,
                             update=update, value_cache=value_cache)
    prev = {lay: state.prev_kk[lay] + info.keys[lay].T @ info.keys[lay] for lay in lays}
    info.seconds = time.perf_counter() - t0
    return new, AlphaState(state.proj, prev, state.n_edits + len(requests)), info
