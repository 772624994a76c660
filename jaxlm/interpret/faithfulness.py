"""Faithfulness and plausibility of token attributions (ERASER-style, hard erasure).

Rationale r_k = the k highest-scoring tokens (positions in ``keep_mask``, e.g. template
tokens, are never erased nor counted). Erasure replaces tokens with a filler id so
positions stay fixed. With p = p(y | x) (or another readout):

* comprehensiveness@k = p(x) - p(x with r_k erased)        (higher = more faithful)
* sufficiency@k       = p(x) - p(x with everything but r_k erased)  (lower = better)
* AOPC_comp / AOPC_suff = mean of the above over k in ks
* decision flip (DFMIT) = argmax changes when the top-1 token is erased

Always compare with a random ranking and the reverse ranking (``-scores``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax.numpy as jnp
import numpy as np

from jaxlm.core import ModelConfig
from jaxlm.interpret.attribution import readout_batch

Predict = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # [N, T] -> (f [N], argmax [N])


def ranking(scores, keep_mask=None) -> np.ndarray:
    """Positions sorted by descending score, skipping ``keep_mask`` positions (stable)."""
    s = np.asarray(scores, np.float64)
    order = np.argsort(-s, kind="stable")
    if keep_mask is not None:
        keep = np.asarray(keep_mask, bool)
        order = order[~keep[order]]
    return order


def erasure_batch(tokens, scores, ks: Sequence[int], filler_id: int,
                  keep_mask=None) -> np.ndarray:
    """Inputs [1 + 2 * len(ks), T]: the original, then top-k erased, then all-but-top-k erased."""
    toks = np.asarray(tokens)
    order = ranking(scores, keep_mask)
    n_free = len(order)
    rows = [toks.copy()]
    comp, suff = [], []
    for k in ks:
        if not 0 < k <= n_free:
            raise ValueError(f"k={k} must be in [1, {n_free}] (the number of erasable tokens)")
        c = toks.copy()
        c[order[:k]] = filler_id
        s = toks.copy()
        s[order[k:]] = filler_id
        comp.append(c)
        suff.append(s)
    return np.stack(rows + comp + suff)


def faithfulness_fn(predict: Predict, tokens, scores, *, ks: Sequence[int] = (1, 2, 3),
                    filler_id: int, keep_mask=None) -> dict[str, float]:
    """Faithfulness metrics for one input with a generic ``predict`` (see module doc)."""
    ks = tuple(int(k) for k in ks)
    batch = erasure_batch(tokens, scores, ks, filler_id, keep_mask)
    order = ranking(scores, keep_mask)
    flip_in = np.asarray(tokens).copy()
    flip_in[order[0]] = filler_id
    f, top = predict(np.concatenate([batch, flip_in[None]]))
    f, top = np.asarray(f, np.float64), np.asarray(top)
    n = len(ks)
    p0 = f[0]
    comp = p0 - f[1 : 1 + n]
    suff = p0 - f[1 + n : 1 + 2 * n]
    out = {"p": float(p0)}
    for k, c, s in zip(ks, comp, suff, strict=True):
        out[f"comp@{k}"] = float(c)
        out[f"suff@{k}"] = float(s)
    out["aopc_comp"] = float(np.mean(comp))
    out["aopc_suff"] = float(np.mean(suff))
    out["flip"] = float(top[-1] != top[0])
    return out


def model_predict(params, cfg: ModelConfig, target_id: int, kind: str = "prob",
                  foil_id: int | None = None) -> Predict:
    """``predict`` for ``faithfulness_fn`` from the substrate model (last-position readout)."""

    def predict(batch):
        f, top = readout_batch(params, jnp.asarray(batch, jnp.int32), target_id,
                               0 if foil_id is None else foil_id, cfg=cfg, kind=kind)
        return np.asarray(f), np.asarray(top)

    return predict


def faithfulness(params, cfg: ModelConfig, tokens, target_id: int, scores, *, filler_id: int,
                 ks: Sequence[int] = (1, 2, 3), keep_mask=None, kind: str = "prob",
                 foil_id: int | None = None) -> dict[str, float]:
    """Comprehensiveness, sufficiency (per k), AOPC and decision flip of ``scores`` [T].

    Args:
        params, cfg: the model; tokens [T] the prompt; target_id the explained answer.
        scores: [T] attributions (higher = more important).
        filler_id: the token that replaces erased tokens.
        ks: rationale sizes.
        keep_mask: optional [T] bool of positions never erased (template tokens).
        kind: readout ("prob" by default, as in ERASER).

    Returns:
        {"p", "comp@k", "suff@k", "aopc_comp", "aopc_suff", "flip"}.
    """
    scores = np.asarray(scores)
    if scores.shape != (len(tokens),):
        raise ValueError(f"scores must be [T]={len(tokens)}, got shape {scores.shape}")
    pred = model_predict(params, cfg, target_id, kind, foil_id)
    return faithfulness_fn(pred, tokens, scores, ks=ks, filler_id=filler_id, keep_mask=keep_mask)


def plausibility(scores, gold_mask, *, k: int | None = None, keep_mask=None) -> dict[str, float]:
    """Agreement of the top-k tokens with a labelled rationale (gold_mask [T] bool).

    k defaults to the gold rationale's size. Returns hit@1 (top token is gold),
    token precision/recall/F1 of the top-k set, and IOU.
    """
    gold = np.asarray(gold_mask, bool)
    if gold.shape != np.asarray(scores).shape:
        raise ValueError(f"gold_mask {gold.shape} and scores {np.asarray(scores).shape} differ")
    if not gold.any():
        raise ValueError("gold_mask marks no token")
    order = ranking(scores, keep_mask)
    k = int(gold.sum()) if k is None else k
    pred = np.zeros_like(gold)
    pred[order[:k]] = True
    tp = float((pred & gold).sum())
    prec = tp / max(pred.sum(), 1)
    rec = tp / gold.sum()
    f1 = 0.0 if tp == 0 else 2 * prec * rec / (prec + rec)
    return {"hit@1": float(gold[order[0]]), "precision": prec, "recall": rec, "f1": f1,
            "iou": tp / float((pred | gold).sum())}


def answer_mass(scores, gold_mask, *, keep_mask=None) -> float:
    """Fraction of attribution mass on the gold (answer-deciding) tokens:
    sum |s| over gold / sum |s| over all tokens not in ``keep_mask``.

    The chance level of a method that spreads mass evenly is |gold| / |free tokens|.
    NaN when every free score is zero.
    """
    s = np.abs(np.asarray(scores, np.float64))
    gold = np.asarray(gold_mask, bool)
    if gold.shape != s.shape or s.ndim != 1:
        raise ValueError(f"gold_mask {gold.shape} and scores {s.shape} must be the same [T]")
    free = np.ones_like(gold) if keep_mask is None else ~np.asarray(keep_mask, bool)
    if not (gold & free).any():
        raise ValueError("gold_mask marks no token outside keep_mask")
    den = s[free].sum()
    return float(s[gold & free].sum() / den) if den > 0 else float("nan")
