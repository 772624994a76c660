"""Automata as device arrays and the logits processor core's decode loop calls per step.

Several automata are stacked into one table (state ids offset per automaton) so every
row of a batch may follow its own constraint; rows without one run unchanged. All
shapes are rounded up to powers of two (states, classes, automata), so another grammar
of the same padded shape reuses the compiled loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxlm.structured.automaton import TokenDFA, TokenVocab, compile_constraint
from jaxlm.structured.constraints import Constraint, ConstraintError, as_constraint

Array = jax.Array


def bucket(n: int, minimum: int) -> int:
    """Smallest power of two >= max(n, minimum)."""
    return 1 << (max(n, minimum) - 1).bit_length()


@struct.dataclass
class Tables:
    """Stacked automata.

    Attributes:
        next_state: [S, C] int32 global next state per (state, class), -1 = disallowed.
        class_of: [G, V] int32 token class per automaton.
        accepting: [S] bool, stop tokens allowed.
        terminal: [S] bool, accepting with no continuation (the row is finished).
        is_stop: [V] bool, the stop token ids.
    """

    next_state: Array
    class_of: Array
    accepting: Array
    terminal: Array
    is_stop: Array


def stack_tables(dfas: Sequence[TokenDFA], vocab_size: int, stop_ids: Sequence[int],
                 min_states: int = 64, min_classes: int = 16
                 ) -> tuple[dict[str, np.ndarray], list[int]]:
    """Host-side stacking: padded numpy tables and each automaton's global initial state."""
    total = sum(d.n_states for d in dfas)
    s_pad = bucket(total, min_states)
    c_pad = bucket(max((d.n_classes for d in dfas), default=1), min_classes)
    g_pad = bucket(len(dfas), 1)
    nxt = np.full((s_pad, c_pad), -1, np.int32)
    cls = np.zeros((g_pad, vocab_size), np.int32)
    acc = np.zeros(s_pad, bool)
    inits, off = [], 0
    for g, d in enumerate(dfas):
        if d.class_of.shape[0] > vocab_size:
            if (d.class_of[vocab_size:] != 0).any():
                raise ConstraintError(
                    f"the automaton uses token ids >= the model's vocabulary ({vocab_size})")
        n = min(vocab_size, d.class_of.shape[0])
        t = d.next_state
        nxt[off:off + d.n_states, :d.n_classes] = np.where(t >= 0, t + off, -1)
        cls[g, :n] = d.class_of[:n]
        acc[off:off + d.n_states] = d.accepting
        inits.append(off + d.initial)
        off += d.n_states
    term = acc & ~(nxt >= 0).any(axis=1)
    stop = np.zeros(vocab_size, bool)
    stop[[s for s in stop_ids if 0 <= s < vocab_size]] = True
    return dict(next_state=nxt, class_of=cls, accepting=acc, terminal=term, is_stop=stop), inits


@struct.dataclass
class StructuredProcessor:
    """Per-row token automata for ``jaxlm.core.generate(..., processor=...)``.

    State: the global automaton state per row, -1 for rows without a constraint.
    ``apply`` sets logits of disallowed tokens to -inf (stop tokens are allowed only in
    accepting states, or when nothing else is); ``advance`` follows the sampled token;
    ``finished`` is True once a row's automaton accepts and allows no continuation.
    """

    tables: Tables
    row_group: Array  # [B] int32 automaton of each row, -1 = unconstrained
    row_init: Array  # [B] int32 initial global state, -1 = unconstrained
    row_class: Array  # [B, V] int32 token classes of each row's automaton (gathered once)

    def init(self, batch: int) -> Array:
        if batch != self.row_init.shape[0]:
            raise ValueError(f"StructuredProcessor was built for {self.row_init.shape[0]} rows "
                             f"but the batch has {batch}; give one constraint per prompt")
        return self.row_init

    def allowed(self, state: Array) -> Array:
        """bool [B, V]: tokens each row may emit next (all True for unconstrained rows)."""
        tb = self.tables
        on = state >= 0
        s = jnp.maximum(state, 0)
        rows = tb.next_state[s]  # [B, C]
        ok = jnp.take_along_axis(rows, self.row_class, axis=1) >= 0
        stuck = ~(rows >= 0).any(axis=1)
        stop_ok = tb.accepting[s] | stuck
        ok = jnp.where(tb.is_stop[None], stop_ok[:, None], ok)
        return ok | ~on[:, None]

    def apply(self, state: Array, logits: Array) -> Array:
        on = (state >= 0)[:, None]
        masked = jnp.where(self.allowed(state), logits, -jnp.inf)
        return jnp.where(on, masked, logits)

    def advance(self, state: Array, tokens: Array) -> Array:
        tb = self.tables
        s = jnp.maximum(state, 0)
        c = jnp.take_along_axis(self.row_class, tokens[:, None], axis=1)[:, 0]
        nxt = tb.next_state[s, c]
        nxt = jnp.where(nxt >= 0, nxt, state)  # stop tokens (and pads) keep the state
        return jnp.where(state >= 0, nxt, state)

    def finished(self, state: Array) -> Array:
        return (state >= 0) & self.tables.terminal[jnp.maximum(state, 0)]


def make_processor(constraints: Sequence[Any], vocab: TokenVocab, vocab_size: int | None = None,
                   *, cache_dir: Any = None, min_states: int = 64, min_classes: int = 16
                   ) -> StructuredProcessor:
    """A processor for one batch: ``constraints[i]`` (Regex / JsonSchema / Choice / None)
    constrains row i; equal constraints share one automaton.

    Args:
        vocab: the tokenizer's ``TokenVocab``.
        vocab_size: logits width (the model's vocabulary, >= the tokenizer's); default
            ``vocab.size``.
        cache_dir: see ``compile_constraint``.
    """
    vocab_size = vocab.size if vocab_size is None else int(vocab_size)
    if vocab_size < vocab.size:
        raise ConstraintError(f"vocab_size {vocab_size} is smaller than the tokenizer's "
                              f"{vocab.size}")
    cons = [as_constraint(c) for c in constraints]
    if not cons:
        raise ConstraintError("make_processor needs one constraint (or None) per row")
    uniq: dict[Constraint, int] = {}
    for c in cons:
        if c is not None and c not in uniq:
            uniq[c] = len(uniq)
    dfas = [compile_constraint(c, vocab, cache_dir) for c in uniq]
    arrays, inits = stack_tables(dfas, vocab_size, vocab.stop_ids, min_states, min_classes)
    group = np.array([-1 if c is None else uniq[c] for c in cons], np.int32)
    init = np.array([-1 if g < 0 else inits[g] for g in group], np.int32)
    tables = Tables(**{k: jnp.asarray(v) for k, v in arrays.items()})
    row_class = arrays["class_of"][np.maximum(group, 0)]
    return StructuredProcessor(tables, jnp.asarray(group), jnp.asarray(init),
                               jnp.asarray(row_class))
