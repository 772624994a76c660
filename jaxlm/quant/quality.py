"""Quality of a quantized model against its float reference, from logits on the same text.

``compare_logits(ref_logits, test_logits, targets, mask)`` returns top-1 agreement (the
fraction of positions where both argmaxes agree), the mean KL(ref || test) in nats, and the
perplexity of each model on ``targets`` (the next tokens), over the positions where ``mask``
is true. Computed in float64 numpy from float32 logits, in chunks of rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def compare_logits(ref_logits: Any, test_logits: Any, targets: Any, mask: Any = None, *, chunk: int = 256) -> dict[str, float]:
    """Top-1 agreement, mean KL(ref || test) and both perplexities (see module docstring).

    Args:
        ref_logits, test_logits: [..., V] logits at the same positions.
        targets: [...] int next-token ids (the text's continuation at each position).
        mask: [...] bool, positions to count (default all).
    """
    ref = np.asarray(ref_logits)
    tst = np.asarray(test_logits)
    tgt = np.asarray(targets)
    if ref.shape != tst.shape or ref.shape[:-1] != tgt.shape:
        raise ValueError(
            f"compare_logits: logits {ref.shape} / {tst.shape} and targets {tgt.shape} must agree "
            "([..., V] and [...])."
        )
    v = ref.shape[-1]
    ref = ref.reshape(-1, v)
    tst = tst.reshape(-1, v)
    tgt = tgt.reshape(-1)
    keep = np.ones(tgt.shape, bool) if mask is None else np.asarray(mask, bool).reshape(-1)
    idx = np.nonzero(keep)[0]
    if idx.size == 0:
        raise ValueError("compare_logits: the mask selects no position.")
    agree = kl = nll_ref = nll_tst = 0.0
    for s in range(0, idx.size, chunk):
        rows = idx[s : s + chunk]
        lr = _log_softmax(ref[rows])
        lt = _log_softmax(tst[rows])
        agree += float((lr.argmax(-1) == lt.argmax(-1)).sum())
        kl += float((np.exp(lr) * (lr - lt)).sum())
        t = tgt[rows]
        nll_ref -= float(lr[np.arange(rows.size), t].sum())
        nll_tst -= float(lt[np.arange(rows.size), t].sum())
    n = idx.size
    return {
        "positions": int(n),
        "top1_agreement": agree / n,
        "mean_kl": kl / n,
        "ppl_ref": float(np.exp(nll_ref / n)),
        "ppl_test": float(np.exp(nll_tst / n)),
    }
