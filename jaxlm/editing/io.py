"""Saving edited params with Orbax and diffing them against the original."""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import numpy as np

from jaxlm.core.params import path_str

Params = dict[str, Any]




def diff_params(a: Params, b: Params, *, atol: float = 0.0) -> list[dict[str, Any]]:
    """Leaves that differ between two params trees of the same structure.

    Returns:
        One dict per changed leaf: path, shape, max_abs change, relative Frobenius
        change ||b - a|| / ||a||, and the numerical rank of the change (2-D leaves).
    """
    la = jax.tree_util.tree_flatten_with_path(a)[0]
    lb = jax.tree_util.tree_flatten_with_path(b)[0]
    if [p for p, _ in la] != [p for p, _ in lb]:
        raise ValueError("diff_params: the two params trees have different structures")
    out = []
    for (path, x), (_, y) in zip(la, lb, strict=True):
        if x is y:
            continue
        x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if x64.shape != y64.shape:
            raise ValueError(f"diff_params: {path_str(path)} changed shape {x64.shape} -> "
                             f"{y64.shape}")
        d = y64 - x64
        m = float(np.abs(d).max()) if d.size else 0.0
        if m <= atol:
            continue
        row = {"path": path_str(path), "shape": tuple(x64.shape), "max_abs": m,
               "rel_fro": float(np.linalg.norm(d) / max(np.linalg.norm(x64), 1e-30))}
        if d.ndim == 2:
            s = np.linalg.svd(d, compute_uv=False)
            row["rank"] = int((s > s[0] * 1e-6).sum()) if s.size and s[0] > 0 else 0
        out.append(row)
    return out


def save_params(path: str | pathlib.Path, params: Params) -> pathlib.Path:
    """Writes params with Orbax (a standard PyTree checkpoint). ``path`` must not exist."""
    import orbax.checkpoint as ocp

    path = pathlib.Path(path).absolute()
    if path.exists():
        raise ValueError(f"save_params: {path} exists; pick a new folder")
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(path, jax.tree.map(np.asarray, params))
    return path


def load_params(path: str | pathlib.Path, like: Params) -> Params:
    """Restores params saved by ``save_params`` into the structure of ``like``."""
    import orbax.checkpoint as ocp

    path = pathlib.Path(path).absolute()
    if not path.exists():
        raise ValueError(f"load_params: {path} does not exist")
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), like)
    with ocp.StandardCheckpointer() as ckpt:
        return ckpt.restore(path, abstract)
