"""Quantized parameter trees: ``quantize_params`` (any float model) and
``load_gguf_quantized`` (a GGUF file with its blocks kept as stored).

The tree keeps core's layout (``param_spec``); every matmul weight becomes a
:class:`QuantWeight` with the float weight's logical shape:

============  =================  =====  ===============================================
leaf          logical shape      n_in   note
============  =================  =====  ===============================================
attn.wq       (d, h, hd)         1
attn.wk/wv    (d, kv, hd)        1
attn.wo       (h, hd, d)         2
mlp.w_gate    (d, f)             1
mlp.w_up      (d, f)             1
mlp.w_down    (f, d)             1
lm_head       (d, vocab)         1
embed         (vocab, d)         1      ``rows_first=True``: contracted on its last axis
============  =================  =====  ===============================================

A quantized ``embed`` is used by core as ``take_rows(embed, tokens)`` for the lookup and
``matmul(h, embed)`` for a tied head. Norms and biases stay float32.

Every QuantWeight also has ``astype(dtype)`` (the dequantized float leaf), so code written
for float leaves (``dense``'s ``w.astype(ct)``, ``params["embed"].astype(ct)[tokens]``) runs
a quantized tree unchanged through the pure-XLA path; ``jaxlm.quant.matmul`` /
``take_rows`` are the fast paths (kernel at decode, no full-table dequantization).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np

from jaxlm.quant.formats import (
    FORMATS,
    GGUF_FORMATS,
    QuantError,
    QuantWeight,
    dequantize_np,
    from_gguf_blocks,
    quantize_weight,
)

# weight name -> n_in (leading axes contracted with x)
MATMUL_WEIGHTS = {"wq": 1, "wk": 1, "wv": 1, "wo": 2, "w_gate": 1, "w_up": 1, "w_down": 1, "lm_head": 1}


def abstract_weight(shape: tuple[int, ...], fmt: str, n_in: int = 1, rows_first: bool = False) -> QuantWeight:
    """The ``jax.ShapeDtypeStruct`` pytree a quantized leaf of ``shape`` must match
    (what a ``ParamInfo`` subclass for quantized weights returns from ``abstract()``)."""
    meta = {"fmt": fmt, "shape": tuple(shape), "n_in": n_in, "rows_first": rows_first}
    probe = QuantWeight(qs=None, d=None, **meta)
    k, n = probe.K, probe.N
    sds = jax.ShapeDtypeStruct
    if fmt == "int8":
        return QuantWeight(qs=sds((n, k), np.int8), d=sds((n,), np.float32), **meta)
    if fmt not in GGUF_FORMATS:
        raise QuantError(f"unknown quantized format {fmt!r}; use one of {FORMATS}.")
    nb = k // 32
    qs = sds((n, k), np.int8) if fmt == "q8_0" else sds((n, k // 2), np.uint8)
    m = sds((n, nb), np.float16) if fmt == "q4_1" else None
    return QuantWeight(qs=qs, d=sds((n, nb), np.float16), m=m, **meta)


def quantize_params(params: dict[str, Any], cfg: Any = None, fmt: str = "int8", *, embed: bool = True) -> dict[str, Any]:
    """Quantizes every matmul weight of a float params tree to ``fmt`` (numpy, on the host).

    ``cfg`` is accepted for symmetry with core's functions (the layout does not depend on it).
    q formats need each contracted size to be a multiple of 32; otherwise use "int8".
    ``embed=False`` leaves the token embedding in float.
    """
    del cfg
    if fmt not in FORMATS:
        raise QuantError(f"unknown quantized format {fmt!r}; use one of {FORMATS}.")

    def walk(tree, name=None):
        if isinstance(tree, dict):
            return {k: walk(v, k) for k, v in tree.items()}
        if isinstance(tree, list):
            return [walk(v, name) for v in tree]
        if isinstance(tree, QuantWeight):
            return tree
        if name in MATMUL_WEIGHTS:
            return quantize_weight(np.asarray(tree, np.float32), fmt, n_in=MATMUL_WEIGHTS[name])
        if name == "embed" and embed:
            return quantize_weight(np.asarray(tree, np.float32), fmt, n_in=1, rows_first=True)
        return tree

    return walk(params)


def dequantize_params(params: dict[str, Any]) -> dict[str, Any]:
    """The float32 tree a quantized tree stands for (exact; numpy)."""

    def walk(tree, name=None):
        if isinstance(tree, dict):
            return {k: walk(v, k) for k, v in tree.items()}
        if isinstance(tree, list):
            return [walk(v, name) for v in tree]
        if isinstance(tree, QuantWeight):
            return dequantize_np(tree)
        return tree

    return walk(params)


def resident_bytes(params: Any) -> int:
    """Bytes of every array in a (possibly quantized) params tree."""
    return int(sum(np.prod(a.shape) * np.dtype(a.dtype).itemsize for a in jax.tree.leaves(params)))


def load_gguf_quantized(
    path: str | os.PathLike, fmt: str = "keep", *, embed_fmt: str = "keep"
) -> tuple[Any, dict[str, Any]]:
    """Loads a llama-architecture GGUF file with quantized matmul weights.

    Args:
        path: the .gguf file.
        fmt: "keep" keeps every tensor stored in a GGUF block format (Q8_0/Q4_0/Q4_1) exactly as
            stored (F32/F16 matrices become int8); a format in ``FORMATS`` keeps tensors already
            stored in that format and re-quantizes the others from their dequantized values.
        embed_fmt: the token embedding's format ("keep" = as stored when it is a block format,
            else like ``fmt``); the embedding also serves as the tied output head.

    Returns:
        (cfg, params) in core's layout (``param_dtype`` float32 for norms), QuantWeight leaves
        holding numpy arrays (``jax.device_put`` them, or pass directly to jitted functions).
    """
    from jaxlm.weights import gguf_io
    from jaxlm.weights.errors import WeightsError

    if fmt != "keep" and fmt not in FORMATS:
        raise QuantError(f"fmt must be 'keep' or one of {FORMATS}, got {fmt!r}.")
    r = gguf_io._reader(path)
    cfg = gguf_io.config_from_gguf(r, path)
    cfg = dataclasses.replace(cfg, param_dtype="float32", compute_dtype="float32")
    tensors = {t.name: t for t in r.tensors}

    def tensor(name):
        if name not in tensors:
            raise WeightsError(f"{path}: tensor {name} is missing; the file is incomplete.")
        return tensors[name]

    def quant(name, shape, n_in, want, rows_first=False):
        t = tensor(name)
        stored = t.tensor_type.name.lower()
        if stored in GGUF_FORMATS and (want == "keep" or want == stored):
            raw = np.asarray(t.data)
            return from_gguf_blocks(raw, stored, shape=shape, n_in=n_in, rows_first=rows_first)
        rows = gguf_io._dequant(t, path)  # [out, in] float32
        target = "int8" if want == "keep" else want
        leaf = rows.reshape(shape) if rows_first else np.ascontiguousarray(rows.T).reshape(shape)
        return quantize_weight(leaf, target, n_in=n_in, rows_first=rows_first)

    def vec(name):
        return gguf_io._dequant(tensor(name), path)

    d, h, kv, hd, f, v = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff, cfg.vocab_size
    if embed_fmt != "keep" and embed_fmt not in FORMATS:
        raise QuantError(f"embed_fmt must be 'keep' or one of {FORMATS}, got {embed_fmt!r}.")
    e_stored = tensor("token_embd.weight").tensor_type.name.lower()
    efmt = embed_fmt if embed_fmt != "keep" else ("keep" if e_stored in GGUF_FORMATS else fmt)
    params: dict[str, Any] = {"embed": quant("token_embd.weight", (v, d), 1, efmt, rows_first=True)}
    layers = []
    for i in range(cfg.n_layers):
        b = f"blk.{i}."
        layers.append(
            {
                "attn_norm": {"scale": vec(b + "attn_norm.weight")},
                "mlp_norm": {"scale": vec(b + "ffn_norm.weight")},
                "attn": {
                    "wq": quant(b + "attn_q.weight", (d, h, hd), 1, fmt),
                    "wk": quant(b + "attn_k.weight", (d, kv, hd), 1, fmt),
                    "wv": quant(b + "attn_v.weight", (d, kv, hd), 1, fmt),
                    "wo": quant(b + "attn_output.weight", (h, hd, d), 2, fmt),
                },
                "mlp": {
                    "w_gate": quant(b + "ffn_gate.weight", (d, f), 1, fmt),
                    "w_up": quant(b + "ffn_up.weight", (d, f), 1, fmt),
                    "w_down": quant(b + "ffn_down.weight", (f, d), 1, fmt),
                },
            }
        )
    params["layers"] = layers
    params["final_norm"] = {"scale": vec("output_norm.weight")}
    if not cfg.tie_embeddings:
        params["lm_head"] = quant("output.weight", (d, v), 1, fmt)
    return cfg, params
