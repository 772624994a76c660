"""Token-level automata: a constraint's regex -> outlines-core ``Index`` over the model's
vocabulary -> a dense transition table over *token classes*, cached on disk.

Tokens that every state treats alike (same next state from every state, or disallowed
everywhere) form one class, so a table ``next[state, class]`` plus ``class_of[token]``
is the whole automaton: a JSON schema the size of Luminate's has a few thousand states
but only a few hundred classes, against 49152 tokens. Class 0 is reserved for tokens the
automaton never emits (special tokens, stop tokens: stops are allowed separately, in
accepting states only).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pathlib
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxlm.structured.constraints import Constraint, ConstraintError

FORMAT = 1
MAX_STATES = 1 << 20


def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's byte -> printable-unicode map used by byte-level BPE vocabularies."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    out = {chr(b): b for b in keep}
    n = 0
    for b in range(256):
        if b not in keep:
            out[chr(256 + n)] = b
            n += 1
    return out


@dataclasses.dataclass(frozen=True)
class TokenVocab:
    """The bytes of every ordinary token of a tokenizer (None for special tokens).

    Attributes:
        token_bytes: per token id, its UTF-8 bytes, or None for special/control tokens.
        eos_id: the id outlines-core treats as end of sequence (never in ``token_bytes``).
        stop_ids: ids that end generation (allowed only in accepting states).
        digest: sha256 of the vocabulary, the disk-cache key's tokenizer part.
    """

    token_bytes: tuple[bytes | None, ...]
    eos_id: int
    stop_ids: tuple[int, ...]
    digest: str

    @property
    def size(self) -> int:
        return len(self.token_bytes)

    @classmethod
    def from_tokenizer(cls, tok: Any) -> "TokenVocab":
        """From a ``jaxlm.weights.Tokenizer`` (byte-level BPE, as built from a GGUF)."""
        hf = tok.hf
        vocab = hf.get_vocab(with_added_tokens=True)
        special = {a.content for a in hf.get_added_tokens_decoder().values()}
        dec = _byte_decoder()
        out: list[bytes | None] = [None] * (max(vocab.values()) + 1)
        for s, i in vocab.items():
            if s in special:
                continue
            try:
                out[i] = bytes(dec[ch] for ch in s)
            except KeyError:
                raise ConstraintError(
                    f"token {i} ({s!r}) is not byte-level BPE; structured generation supports "
                    "byte-level BPE tokenizers (GPT-2 / Llama-3 / SmolLM style)") from None
        stops = tuple(sorted(set(tok.stop_ids) | {int(tok.eos_id)}))
        return cls.from_bytes(out, int(tok.eos_id), stops)

    @classmethod
    def from_bytes(cls, token_bytes: Sequence[bytes | None], eos_id: int,
                   stop_ids: Sequence[int] = ()) -> "TokenVocab":
        tb = tuple(None if b is None else bytes(b) for b in token_bytes)
        if not 0 <= eos_id < len(tb) or tb[eos_id] is not None:
            raise ConstraintError(f"eos_id {eos_id} must be a special token id (bytes None)")
        stops = tuple(sorted(set(int(s) for s in stop_ids) | {int(eos_id)}))
        h = hashlib.sha256()
        h.update(json.dumps([eos_id, stops]).encode())
        for b in tb:
            h.update(b"\xff" if b is None else len(b).to_bytes(2, "little") + b)
        return cls(tb, int(eos_id), stops, h.hexdigest())


@dataclasses.dataclass(frozen=True)
class TokenDFA:
    """One compiled constraint.

    Attributes:
        next_state: [S, C] int32, next state per (state, token class), -1 = disallowed.
        class_of: [V] int32, token class of each token id (0 = never allowed).
        accepting: [S] bool, the output may end here (stop tokens allowed).
        initial: start state.
    """

    next_state: np.ndarray
    class_of: np.ndarray
    accepting: np.ndarray
    initial: int

    @property
    def n_states(self) -> int:
        return self.next_state.shape[0]

    @property
    def n_classes(self) -> int:
        return self.next_state.shape[1]

    def allowed(self, state: int) -> np.ndarray:
        """Sorted ids of the (non-stop) tokens allowed in ``state``."""
        ok = self.next_state[state][self.class_of] >= 0
        return np.flatnonzero(ok)

    def step(self, state: int, token: int) -> int:
        return int(self.next_state[state, self.class_of[token]])

    def validate(self, vocab_size: int | None = None) -> None:
        """Raises ConstraintError unless the arrays form a well-formed automaton."""
        ns, co, acc = self.next_state, self.class_of, self.accepting
        ok = (isinstance(ns, np.ndarray) and ns.dtype == np.int32 and ns.ndim == 2
              and isinstance(co, np.ndarray) and co.dtype == np.int32 and co.ndim == 1
              and isinstance(acc, np.ndarray) and acc.dtype == np.bool_
              and acc.shape == (ns.shape[0],) and 0 < ns.shape[0] <= MAX_STATES
              and ns.shape[1] >= 1 and (vocab_size is None or co.shape[0] == vocab_size))
        if not ok:
            raise ConstraintError("automaton arrays have the wrong dtypes or shapes")
        if ns.min() < -1 or ns.max() >= ns.shape[0] or co.min() < 0 or co.max() >= ns.shape[1]:
            raise ConstraintError("automaton arrays hold out-of-range states or classes")
        if not 0 <= self.initial < ns.shape[0] or (ns[:, 0] != -1).any():
            raise ConstraintError("automaton has a bad initial state or class 0 is allowed")


def _classes(s: np.ndarray, t: np.ndarray, n: np.ndarray, n_states: int, vocab: int,
             seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Groups tokens with identical (state -> next) maps; returns (class_of [V], table)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=n_states, dtype=np.uint64) | np.uint64(1)
    b = rng.integers(1, 2**63, size=n_states, dtype=np.uint64)
    h = np.zeros(vocab, np.uint64)
    with np.errstate(over="ignore"):
        np.add.at(h, t, a[s] * (b[n] + np.uint64(1)))
    count = np.bincount(t, minlength=vocab)
    h[count == 0] = 0  # never-allowed tokens share class 0
    uniq, inv = np.unique(h, return_inverse=True)
    if uniq[0] != 0:  # no never-allowed token: keep class 0 reserved anyway
        inv = inv + 1
    class_of = inv.astype(np.int32)
    n_classes = int(class_of.max()) + 1
    rep = np.full(n_classes, -1, np.int64)
    rep[class_of[::-1]] = np.arange(vocab)[::-1]  # first token of each class
    table = np.full((n_states, n_classes), -1, np.int32)
    is_rep = rep[class_of[t]] == t
    table[s[is_rep], class_of[t[is_rep]]] = n[is_rep]
    # exactness: every token agrees with its class representative on every entry it has,
    # and has as many entries (hash collisions would show here)
    exact = (table[s, class_of[t]] == n).all() and (
        count == count[rep[class_of]]).all() and (table[:, 0] == -1).all()
    if not exact:
        if seed > 4:
            raise RuntimeError("token-class grouping failed repeatedly")
        return _classes(s, t, n, n_states, vocab, seed + 1)
    return class_of, table


def _index(regex: str, groups: dict[bytes, list[int]], eos: int):
    from outlines_core import Index, Vocabulary

    try:
        return Index(regex, Vocabulary(eos, groups))
    except (ValueError, RuntimeError) as e:
        raise ConstraintError(f"cannot compile the constraint: {str(e).splitlines()[0]}") from None


def _entries(index) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(state, token, next) arrays of an outlines-core index's transitions."""
    parts_s, parts_t, parts_n = [], [], []
    for st, d in index.get_transitions().items():
        parts_s.append(np.full(len(d), st, np.int64))
        parts_t.append(np.fromiter(d.keys(), np.int64, len(d)))
        parts_n.append(np.fromiter(d.values(), np.int64, len(d)))
    if not parts_s:
        return (np.zeros(0, np.int64),) * 3
    return np.concatenate(parts_s), np.concatenate(parts_t), np.concatenate(parts_n)


def byte_classes(regex: str) -> np.ndarray:
    """[256] class id per byte: bytes the regex's byte-level automaton treats alike.

    Built from outlines-core's index over the 256 single-byte tokens (every automaton
    state is reached byte by byte), so no regex is parsed here."""
    index = _index(regex, {bytes([b]): [b] for b in range(256)}, 256)
    s, t, n = _entries(index)
    keep = t < 256
    s, t, n = s[keep], t[keep], n[keep]
    sig: dict[tuple, int] = {}
    cols: list[list[tuple[int, int]]] = [[] for _ in range(256)]
    for st, b, nx in zip(s.tolist(), t.tolist(), n.tolist()):
        cols[b].append((st, nx))
    out = np.zeros(256, np.int64)
    for b in range(256):
        out[b] = sig.setdefault(tuple(sorted(cols[b])), len(sig))
    return out


def compile_regex(regex: str, vocab: TokenVocab) -> TokenDFA:
    """Builds the token automaton of ``regex`` over ``vocab`` with outlines-core.

    Tokens whose bytes fall in the same sequence of byte classes behave identically, so
    outlines-core indexes one representative per such group (a few thousand instead of
    the whole vocabulary); the group automaton is then compressed to token classes."""
    bcls = byte_classes(regex)
    table = bytes(int(c) for c in bcls)
    group_of = np.full(vocab.size, -1, np.int64)
    reps: dict[bytes, int] = {}
    rep_bytes: list[bytes] = []
    for i, b in enumerate(vocab.token_bytes):
        if not b:
            continue
        sig = b.translate(table)
        g = reps.get(sig)
        if g is None:
            g = reps[sig] = len(rep_bytes)
            rep_bytes.append(b)
        group_of[i] = g
    n_groups = len(rep_bytes)
    index = _index(regex, {b: [g] for g, b in enumerate(rep_bytes)}, n_groups)
    s, t, n = _entries(index)
    init = index.get_initial_state()
    finals = np.fromiter(index.get_final_states(), np.int64)
    keep = t != n_groups  # end-of-sequence: stops are handled by `accepting`
    s, t, n = s[keep], t[keep], n[keep]
    ids = np.unique(np.concatenate([s, n, finals, [init]]))
    if len(ids) > MAX_STATES:
        raise ConstraintError(f"the constraint needs {len(ids)} automaton states (limit "
                              f"{MAX_STATES}); bound string lengths or simplify it")
    s, n = np.searchsorted(ids, s), np.searchsorted(ids, n)
    gclass, table = _classes(s, t, n, len(ids), n_groups + 1)
    class_of = np.where(group_of >= 0, gclass[np.maximum(group_of, 0)], 0).astype(np.int32)
    accepting = np.zeros(len(ids), bool)
    accepting[np.searchsorted(ids, finals)] = True
    dfa = TokenDFA(table, class_of, accepting, int(np.searchsorted(ids, init)))
    if not (table[dfa.initial] >= 0).any() and not accepting[dfa.initial]:
        raise ConstraintError("the constraint accepts no token sequence over this vocabulary")
    return dfa


# ---------------------------------------------------------------------------- disk cache
def default_cache_dir() -> pathlib.Path:
    base = os.environ.get("JAXLM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "jaxlm")
    return pathlib.Path(base) / "structured"


def cache_key(constraint: Constraint, vocab: TokenVocab) -> str:
    import outlines_core

    ver = getattr(outlines_core, "__version__", "")
    text = json.dumps([FORMAT, ver, vocab.digest, constraint.key()])
    return hashlib.sha256(text.encode()).hexdigest()


def _load(path: pathlib.Path, key: str, vocab_size: int) -> TokenDFA | None:
    """A cached automaton, or None if the file is missing or fails validation."""
    try:
        raw = path.read_bytes()
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            if str(z["key"]) != key or int(z["format"]) != FORMAT:
                return None
            dfa = TokenDFA(z["next_state"], z["class_of"], z["accepting"], int(z["initial"]))
        dfa.validate(vocab_size)
        return dfa
    except (OSError, ValueError, KeyError, ConstraintError, EOFError):
        return None


def _save(path: pathlib.Path, key: str, dfa: TokenDFA) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, key=np.asarray(key), format=np.asarray(FORMAT),
                     next_state=dfa.next_state, class_of=dfa.class_of,
                     accepting=dfa.accepting, initial=np.asarray(dfa.initial))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def compile_constraint(constraint: Constraint, vocab: TokenVocab,
                       cache_dir: str | os.PathLike | None | bool = None) -> TokenDFA:
    """The token automaton of ``constraint`` over ``vocab``, from the disk cache when there.

    Args:
        cache_dir: folder of the cache (None: ``$JAXLM_CACHE/structured`` or
            ``~/.cache/jaxlm/structured``; False: no disk cache). Files are keyed by
            (tokenizer digest, grammar, outlines-core version), written atomically and
            validated on load (a bad file is recompiled and replaced).
    """
    key = cache_key(constraint, vocab)
    if key in _MEMO:
        return _MEMO[key]
    dfa = _compile_or_load(constraint, vocab, key, cache_dir)
    if len(_MEMO) >= 64:
        _MEMO.pop(next(iter(_MEMO)))
    _MEMO[key] = dfa
    return dfa


_MEMO: dict[str, TokenDFA] = {}


def clear_memo() -> None:
    """Forgets the in-process automata (the disk cache stays)."""
    _MEMO.clear()


def _compile_or_load(constraint: Constraint, vocab: TokenVocab, key: str, cache_dir: Any
                     ) -> TokenDFA:
    path = None
    if cache_dir is not False:
        path = pathlib.Path(cache_dir or default_cache_dir()) / f"{key}.npz"
        hit = _load(path, key, vocab.size)
        if hit is not None:
            return hit
    dfa = compile_regex(constraint.to_regex(), vocab)
    dfa.validate(vocab.size)
    if path is not None:
        try:
            _save(path, key, dfa)
        except OSError:
            pass  # a read-only cache must not break generation
    return dfa
