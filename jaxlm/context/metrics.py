"""TACS metrics: truthful-information acceptance (TA), untruthful-information resistance
(UR), disturbance adaption rate DA = (TA + UR) / 2, with bootstrap confidence intervals.

TA: over facts the model gets wrong without context, given truthful information, the
fraction answered correctly. UR: over facts the model gets right without context,
given untruthful information, the fraction still answered correctly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxlm.utils.stats import bootstrap_ci


def ta_ur_da(origin_correct: Sequence[bool], correct: Sequence[bool], *, n_boot: int = 2000,
             seed: int = 0) -> dict[str, float]:
    """TA, UR, DA (with 95% bootstrap CIs) from per-fact flags.

    Args:
        origin_correct: [N] whether the model answers correctly without context
            (False -> the fact counts toward TA: its context was truthful; True -> UR).
        correct: [N] whether the answer with (possibly masked) context is correct.

    Returns:
        {"TA", "TA_lo", "TA_hi", "UR", ..., "DA", "DA_lo", "DA_hi", "n_ta", "n_ur"}.
        DA's CI resamples the TA and UR groups independently.
    """
    oc = np.asarray(origin_correct, bool)
    c = np.asarray(correct, bool)
    if oc.shape != c.shape:
        raise ValueError(f"origin_correct {oc.shape} and correct {c.shape} must have equal shape")
    ta_v, ur_v = c[~oc].astype(float), c[oc].astype(float)
    out = {"n_ta": int(ta_v.size), "n_ur": int(ur_v.size)}
    for name, v, s in (("TA", ta_v, seed), ("UR", ur_v, seed + 1)):
        m, lo, hi = bootstrap_ci(v, n_boot, seed=s)
        out.update({name: m, f"{name}_lo": lo, f"{name}_hi": hi})
    out["DA"] = (out["TA"] + out["UR"]) / 2
    if ta_v.size and ur_v.size:
        rng = np.random.default_rng(seed + 2)
        da = (ta_v[rng.integers(0, ta_v.size, (n_boot, ta_v.size))].mean(1)
              + ur_v[rng.integers(0, ur_v.size, (n_boot, ur_v.size))].mean(1)) / 2
        out["DA_lo"], out["DA_hi"] = float(np.quantile(da, 0.025)), float(np.quantile(da, 0.975))
    else:
        out["DA_lo"] = out["DA_hi"] = float("nan")
    return out


def mask_precision_recall(drop: Sequence[bool], untruthful: Sequence[bool]) -> dict[str, float]:
    """Precision / recall of dropped context tokens against the untruthful ones."""
    d, u = np.asarray(drop, bool), np.asarray(untruthful, bool)
    tp = float((d & u).sum())
    return {"precision": tp / d.sum() if d.sum() else float("nan"),
            "recall": tp / u.sum() if u.sum() else float("nan")}
