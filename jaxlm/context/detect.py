"""Truth detection from per-layer attention outputs (TACS, reimplemented from its description).

Token level (TACS-T): a logistic probe per layer on each context token's attn_out
vector; the k best layers (validation accuracy on held-out entities) vote, a token
is truthful when at least ``min_votes`` layers say so, then a forward window
smooths the decisions: v[j] = [mean(v[j : j + window]) >= 0.5] within the context.
Sentence level (TACS-S): the same on the per-layer mean of a sentence's tokens;
a sentence is kept or dropped as a whole.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from jaxlm.context.data import Prompt
from jaxlm.interpret import probes

LEVELS = ("token", "sentence")


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
    """Probe and vote settings.

    Attributes:
        top_layers: layers that vote (TACS: 5).
        min_votes: votes needed to call a token / sentence truthful (TACS: 3 of 5).
        window: forward smoothing window for token level (TACS: 7; 1 = off).
        l2: probe L2 strength on standardised features.
        label_from: "all" sentence tokens carry the label (TACS) or only from the "object" on.
    """

    top_layers: int = 5
    min_votes: int = 3
    window: int = 7
    l2: float = 10.0
    label_from: str = "all"

    def __post_init__(self):
        if not 1 <= self.min_votes <= self.top_layers:
            raise ValueError(f"min_votes must be in [1, top_layers={self.top_layers}]")
        if self.window < 1:
            raise ValueError("window must be >= 1")
        if self.label_from not in ("all", "object"):
            raise ValueError(f"label_from must be 'all' or 'object', got {self.label_from!r}")


@dataclasses.dataclass
class Detector:
    """Trained probes (leading axis L) and chosen layers per level."""

    cfg: DetectorConfig
    probes: dict[str, probes.LogisticProbe]
    layers: dict[str, np.ndarray]
    val_acc: dict[str, np.ndarray]


def token_dataset(feats: Sequence[np.ndarray], prompts: Sequence[Prompt], label_from="all"):
    """Stacks labelled context tokens: features [L, N, D], labels [N], prompt index [N]."""
    xs, ys, owner = [], [], []
    for i, (f, p) in enumerate(zip(feats, prompts, strict=True)):
        lab, w = p.token_labels(label_from)
        idx = np.nonzero(w)[0]
        xs.append(f[:, idx])
        ys.append(lab[idx])
        owner.append(np.full(idx.size, i))
    return np.concatenate(xs, 1), np.concatenate(ys), np.concatenate(owner)


def sentence_dataset(feats: Sequence[np.ndarray], prompts: Sequence[Prompt]):
    """Mean-pooled sentence features [L, S, D], labels [S], prompt index [S]."""
    xs, ys, owner = [], [], []
    for i, (f, p) in enumerate(zip(feats, prompts, strict=True)):
        for (s, e), y in zip(p.sent_spans, p.sent_labels, strict=True):
            xs.append(f[:, s:e].mean(1))
            ys.append(y)
            owner.append(i)
    return np.stack(xs, 1), np.asarray(ys, np.float32), np.asarray(owner)


def layer_accuracy(probe, x, y) -> np.ndarray:
    """Accuracy per layer [L] of a stacked probe on features [L, N, D]."""
    return probes.accuracy(np.asarray(probes.predict_logit(probe, x)), y)


def train(train_feats, train_prompts, val_feats, val_prompts,
          cfg: DetectorConfig = DetectorConfig()) -> Detector:
    """Fits token- and sentence-level probes per layer; picks top layers on validation."""
    pr, layers, accs = {}, {}, {}
    for level in LEVELS:
        if level == "token":
            xt, yt, _ = token_dataset(train_feats, train_prompts, cfg.label_from)
            xv, yv, _ = token_dataset(val_feats, val_prompts, cfg.label_from)
        else:
            xt, yt, _ = sentence_dataset(train_feats, train_prompts)
            xv, yv, _ = sentence_dataset(val_feats, val_prompts)
        if len(np.unique(yt)) < 2:
            raise ValueError(f"{level} training data needs both truthful and untruthful examples")
        p = probes.fit_logistic_layers(xt, yt, l2=cfg.l2)
        acc = layer_accuracy(p, xv, yv)
        pr[level], accs[level] = p, acc
        layers[level] = np.argsort(-acc, kind="stable")[: cfg.top_layers]
    return Detector(cfg, pr, layers, accs)


def _votes(det: Detector, level: str, x: np.ndarray) -> np.ndarray:
    """Truthful votes [N] from the chosen layers; x [L, N, D]."""
    sel = det.layers[level]
    p = det.probes[level]
    sub = probes.LogisticProbe(p.w[sel], p.b[sel], p.mu[sel], p.sd[sel])
    return (np.asarray(probes.predict_logit(sub, x[sel])) > 0).sum(0)


def smooth_forward(v: np.ndarray, window: int) -> np.ndarray:
    """v'[j] = mean(v[j : j + window]) >= 0.5 (the window is cut at the end)."""
    v = np.asarray(v, np.float64)
    if window <= 1 or v.size == 0:
        return v >= 0.5
    c = np.concatenate([[0.0], np.cumsum(v)])
    j = np.arange(v.size)
    hi = np.minimum(j + window, v.size)
    return (c[hi] - c[j]) / (hi - j) >= 0.5


def drop_mask(det: Detector, feats: np.ndarray, prompt: Prompt, level: str) -> np.ndarray:
    """Positions to drop [T] (True = judged untruthful) for one prompt's features [L, T, D]."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    t = len(prompt.ids)
    drop = np.zeros(t, bool)
    if not prompt.sent_spans:
        return drop
    if level == "sentence":
        x = np.stack([feats[:, s:e].mean(1) for s, e in prompt.sent_spans], 1)
        truthful = _votes(det, level, x) >= det.cfg.min_votes
        for (s, e), ok in zip(prompt.sent_spans, truthful, strict=True):
            drop[s:e] = not ok
        return drop
    idx = np.concatenate([np.arange(s, e) for s, e in prompt.sent_spans])
    truthful = _votes(det, level, feats[:, idx]) >= det.cfg.min_votes
    truthful = smooth_forward(truthful.astype(float), det.cfg.window)
    drop[idx] = ~truthful
    return drop


def oracle_drop(prompt: Prompt) -> np.ndarray:
    """Drops exactly the untruthful sentences [T]."""
    drop = np.zeros(len(prompt.ids), bool)
    for (s, e), y in zip(prompt.sent_spans, prompt.sent_labels, strict=True):
        drop[s:e] = y == 0
    return drop


def all_drop(prompt: Prompt) -> np.ndarray:
    """Drops every context sentence [T]."""
    drop = np.zeros(len(prompt.ids), bool)
    for s, e in prompt.sent_spans:
        drop[s:e] = True
    return drop
