"""Packing scored continuations into one row: the layout shared by every batched scorer.

A row holds (part of) a prompt followed by candidate continuations. Each candidate gets its own
segment id (1, 2, ...; the prompt is segment 0) so an additive bias can keep candidates from
seeing each other, positions that continue the prompt, and prediction/target indices so the
log-probability of token j of a candidate is read from the logits at the slot before it (the
prompt's last slot for the first token).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def empty_packed(g: int, t: int, n: int, pad: int = 0) -> tuple[np.ndarray, ...]:
    """Blank packed arrays for ``g`` rows of ``t`` slots and ``n`` scored tokens.

    Returns:
        (toks [G,T] filled with ``pad``, pos [G,T] = -1 (never attended), seg [G,T] = -1,
        pred [G,N] = 0, tgt [G,N] = 0).
    """
    return (np.full((g, t), pad, np.int32), np.full((g, t), -1, np.int32),
            np.full((g, t), -1, np.int32), np.zeros((g, n), np.int32), np.zeros((g, n), np.int32))


def pack_candidates(toks: np.ndarray, pos: np.ndarray, seg: np.ndarray, pred: np.ndarray,
                    tgt: np.ndarray, row: int, conts: Sequence[Sequence[int]], *, slot: int,
                    first_pos: int, anchor: int) -> tuple[list[tuple[int, int]], int, int]:
    """Writes ``conts`` into ``row`` of the packed arrays, in place.

    Args:
        toks, pos, seg: [G, T] token ids, positions and segment ids of the packed rows.
        pred, tgt: [G, M] for each scored token, the slot whose logits predict it and its id.
        row: which row to fill.
        conts: the candidate continuations (token id lists; an empty one scores 0).
        slot: first free slot of the row (right after the prompt tokens written there).
        first_pos: position of the first continuation token (the full prompt's length).
        anchor: slot of the prompt's last token (predicts every candidate's first token).

    Returns:
        (spans, end_slot, n_scored): per candidate its [start, end) range in ``pred``/``tgt``,
        the next free slot, and the number of scored tokens written.
    """
    spans: list[tuple[int, int]] = []
    s, m = slot, 0
    for c, x in enumerate(conts):
        lx = len(x)
        toks[row, s: s + lx] = x
        pos[row, s: s + lx] = first_pos + np.arange(lx)
        seg[row, s: s + lx] = c + 1
        pred[row, m] = anchor
        pred[row, m + 1: m + lx] = s + np.arange(lx - 1)
        tgt[row, m: m + lx] = x
        spans.append((m, m + lx))
        s, m = s + lx, m + lx
    return spans, s, m
