"""A small SASRec-style baseline: a causal Transformer from ``jaxlm.core`` over item ids
(vocab = items + 1, id 0 unused), trained with next-item cross-entropy (AdamW) through ``jaxlm.train.make_train_step``."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlm.agents.recsys.data import Split
from jaxlm.core import ModelConfig, apply, init
from jaxlm.train import create_state, make_train_step
from jaxlm.train.step import jit_train_step


@dataclasses.dataclass(frozen=True)
class SASRecConfig:
    """Model and training sizes.

    Attributes:
        max_len: most recent items seen (left-padded window).
        d_model, n_layers, n_heads: Transformer shape.
        batch, steps, lr: training loop.
        seed: init/batch seed.
    """

    max_len: int = 50
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    batch: int = 64
    steps: int = 300
    lr: float = 3e-3
    seed: int = 0


def _window(seq: Sequence[int], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded tokens [n] and positions [n] (-1 = pad) of the last n items."""
    s = list(seq[-n:])
    toks = np.zeros(n, np.int32)
    pos = np.full(n, -1, np.int32)
    if s:
        toks[n - len(s):] = s
        pos[n - len(s):] = np.arange(len(s))
    return toks, pos


class SASRec:
    """Trained model; ``score(history, candidates)`` returns next-item logits."""

    def __init__(self, params, mcfg: ModelConfig, cfg: SASRecConfig, losses: list[float]):
        self.params, self.mcfg, self.cfg, self.losses = params, mcfg, cfg, losses
        self._fwd = jax.jit(lambda p, t, q: apply(p, mcfg, t, positions=q).logits[:, -1])

    def score(self, history: Sequence[int], cands: Sequence[int]) -> np.ndarray:
        t, p = _window(history, self.cfg.max_len)
        logits = np.asarray(self._fwd(self.params, t[None], p[None]))[0]
        return logits[np.asarray(cands)].astype(np.float64)


def train_sasrec(split: Split, n_items: int, cfg: SASRecConfig = SASRecConfig()) -> SASRec:
    """Trains on each user's history before the test target (train + validation items).

    Args:
        split: leave-one-out split (test targets are never seen).
        n_items: largest item id.
        cfg: sizes.
    """
    if n_items < 2 or cfg.steps < 1:
        raise ValueError(f"train_sasrec: need n_items >= 2 and steps >= 1 ({n_items}, {cfg})")
    hd = cfg.d_model // cfg.n_heads
    mcfg = ModelConfig(vocab_size=n_items + 1, d_model=cfg.d_model, n_layers=cfg.n_layers,
                       n_heads=cfg.n_heads, n_kv_heads=cfg.n_heads, head_dim=hd,
                       d_ff=2 * cfg.d_model, max_seq_len=cfg.max_len + 1)
    seqs = [split.test_hist[u] for u in split.users if len(split.test_hist[u]) >= 2]
    # windows of max_len + 1 items: inputs = [:-1], targets = [1:]
    wins = []
    for s in seqs:
        for end in range(len(s), 1, -cfg.max_len):
            wins.append(_window(s[:end], cfg.max_len + 1))
    toks = np.stack([w[0] for w in wins])
    pos = np.stack([w[1] for w in wins])
    key = jax.random.PRNGKey(cfg.seed)
    params = init(key, mcfg)
    tx = optax.adamw(cfg.lr, weight_decay=1e-4)
    state = create_state(params, tx)

    def loss_fn(p, batch, rng):
        del rng
        t, q = batch["tokens"], batch["positions"]
        x, xp, y = t[:, :-1], q[:, :-1], t[:, 1:]
        # inputs' positions: shift so the first real input item is 0
        mask = (q[:, 1:] >= 1).astype(jnp.float32)  # target real and input real
        xp = jnp.where(xp >= 0, xp, -1)
        logits = apply(p, mcfg, x, positions=xp).logits  # [B, T, V]
        lp = jax.nn.log_softmax(logits.at[..., 0].set(-1e9))
        nll = -jnp.take_along_axis(lp, y[..., None], -1)[..., 0]
        # already the mean over counted targets: weight 1 keeps the plain gradient step
        return (nll * mask).sum() / jnp.maximum(mask.sum(), 1.0), jnp.ones((), jnp.float32)

    step = jit_train_step(make_train_step(loss_fn, tx))
    key = jax.random.PRNGKey(0)  # unused by the loss
    rng = np.random.default_rng(cfg.seed)
    losses = []
    for _ in range(cfg.steps):
        idx = rng.integers(0, len(toks), cfg.batch)
        batch = {"tokens": jnp.asarray(toks[idx]), "positions": jnp.asarray(pos[idx])}
        state, metrics = step(state, batch, key)
        losses.append(float(metrics["loss"]))
    params = state.params
    return SASRec(params, dataclasses.replace(mcfg), cfg, losses)
