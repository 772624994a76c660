"""Token-level automata: a constraint's regex -> outlines-core's byte-level automaton -> a
dense transition table over the model's vocabulary grouped into *token classes*, cached on
disk.

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
import itertools
import json
import os
import pathlib
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxlm.structured.constraints import Constraint, ConstraintError

FORMAT = 2
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


def _index(regex: str, groups: dict[bytes, list[int]], eos: int):
    from outlines_core import Index, Vocabulary

    try:
        return Index(regex, Vocabulary(eos, groups))
    except (ValueError, RuntimeError) as e:
        raise ConstraintError(f"cannot compile the constraint: {str(e).splitlines()[0]}") from None


@dataclasses.dataclass(frozen=True)
class _VocabBytes:
    """A vocabulary's token bytes as one padded matrix, longest tokens first (built once per
    tokenizer digest and reused by every grammar)."""

    order: np.ndarray  # [V] token ids, by decreasing byte length
    lengths: np.ndarray  # [V] byte length of order[i] (0 for special/empty tokens)
    matrix: np.ndarray  # [V, Lmax] uint8, row i = bytes of order[i], zero-padded


_VOCAB_BYTES: dict[str, _VocabBytes] = {}


def vocab_bytes(vocab: TokenVocab) -> _VocabBytes:
    """The padded byte matrix of ``vocab`` (memoised per vocabulary digest)."""
    hit = _VOCAB_BYTES.get(vocab.digest)
    if hit is not None:
        return hit
    lens = np.fromiter((len(b) if b else 0 for b in vocab.token_bytes), np.int64, vocab.size)
    order = np.argsort(-lens, kind="stable")
    slens = lens[order]
    flat = np.frombuffer(b"".join(vocab.token_bytes[i] or b"" for i in order.tolist()),
                         np.uint8)
    width = max(int(slens.max(initial=0)), 1)
    rows = np.repeat(np.arange(vocab.size), slens)
    cols = np.arange(flat.size) - np.repeat(np.cumsum(slens) - slens, slens)
    mat = np.zeros((vocab.size, width), np.uint8)
    mat[rows, cols] = flat
    out = _VocabBytes(order, slens, mat)
    if len(_VOCAB_BYTES) >= 8:
        _VOCAB_BYTES.pop(next(iter(_VOCAB_BYTES)))
    _VOCAB_BYTES[vocab.digest] = out
    return out


# end markers tried in turn: control characters few patterns ever match
_SENTINELS = (*range(0x00, 0x09), *range(0x0E, 0x20), 0x7F)


def byte_dfa(regex: str) -> tuple[np.ndarray, int, np.ndarray]:
    """The regex's byte-level automaton (the exact language of ``regex``).

    Built from outlines-core's index over the 256 one-byte tokens of ``(?:regex)`` followed
    by an end marker byte ``m``: outlines-core's index follows regex-automata's leftmost-
    first, one-byte-delayed matches, so out of an accepting state it drops continuations
    (``(ab)+`` could not go on after ``ab``; ``go|go north`` could never give ``go north``).
    With the marker no state of ``regex`` is accepting, so every transition is kept, and a
    state accepts exactly when ``m`` leads to the marker's final state. ``m`` is the first
    control byte the pattern cannot consume (checked: one final state, reached only on
    ``m``, with no way out).

    Returns:
        (delta [S+1, 256] int32 with the dead state S absorbing, initial, accepting [S+1]).
    """
    for m in _SENTINELS:
        got = _byte_dfa_marked(regex, m)
        if got is not None:
            return got
    raise ConstraintError("cannot compile the constraint: the pattern can consume every "
                          "control character, so its end cannot be marked; leave one out "
                          "of it (e.g. [^\\x00] instead of (?s:.))")


def _byte_dfa_marked(regex: str, m: int) -> tuple[np.ndarray, int, np.ndarray] | None:
    index = _index(f"(?:{regex})\\x{m:02X}", {bytes([b]): [b] for b in range(256)}, 256)
    trans = index.get_transitions()
    init, finals = index.get_initial_state(), list(index.get_final_states())
    ids = np.unique(np.fromiter([*trans, *finals, init], np.int64))
    if len(ids) > MAX_STATES:
        raise ConstraintError(f"the constraint needs {len(ids)} automaton states (limit "
                              f"{MAX_STATES}); bound string lengths or simplify it")
    n = len(ids)
    counts = np.fromiter(map(len, trans.values()), np.int64, len(trans))
    src = np.repeat(np.fromiter(trans, np.int64, len(trans)), counts)
    chain = itertools.chain.from_iterable
    tok = np.fromiter(chain(trans.values()), np.int64, len(src))
    dst = np.fromiter(chain(d.values() for d in trans.values()), np.int64, len(src))
    keep = tok < 256  # the end-of-sequence entries
    delta = np.full((n + 1, 256), n, np.int32)
    delta[np.searchsorted(ids, src[keep]), tok[keep]] = np.searchsorted(ids, dst[keep])
    if len(finals) != 1:
        return None
    done = int(np.searchsorted(ids, finals[0]))
    to_m = delta[:n, m]
    if ((to_m != n) & (to_m != done)).any() or (delta[done] != n).any():
        return None  # the pattern itself consumes the marker byte: try another
    accepting = np.append(to_m == done, False)
    delta[:, m] = n
    delta[done] = n  # unreachable now; dropped with the other unreachable states
    return delta, int(np.searchsorted(ids, init)), accepting


def _group_rows(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(class id per row, first row of each class) of a 2-D int array, rows equal <=> same
    class. Hashes each row (checked exactly; falls back to a sort on a collision)."""
    rng = np.random.default_rng(0)
    a = rng.integers(1, 2**63, size=m.shape[1], dtype=np.uint64) | np.uint64(1)
    with np.errstate(over="ignore"):
        h = (m.astype(np.uint64) + np.uint64(1)) @ a
    _, first, inv = np.unique(h, return_index=True, return_inverse=True)
    if not (m[first[inv]] == m).all():
        _, first, inv = np.unique(m, axis=0, return_index=True, return_inverse=True)
    return inv.reshape(-1), first


def byte_classes(regex: str) -> np.ndarray:
    """[256] class id per byte: bytes the regex's byte-level automaton treats alike."""
    delta, _, _ = byte_dfa(regex)
    return _group_rows(np.ascontiguousarray(delta.T))[0]


def compile_regex(regex: str, vocab: TokenVocab) -> TokenDFA:
    """Builds the token automaton of ``regex`` over ``vocab``.

    outlines-core gives the byte-level automaton (its index over the 256 one-byte tokens).
    A token acts on the automaton as a function state -> state (the composition of its
    bytes' functions); tokens with the same function are one token class. The functions
    of all tokens are found level by level over the vocabulary's byte matrix, memoising
    (function, byte class) -> function: a JSON schema the size of Luminate's has ~5000
    states but only a few hundred distinct prefix functions, so the walk is a few thousand
    state-vector gathers instead of one per (state, token)."""
    delta, init, accepting = byte_dfa(regex)
    dead = delta.shape[0] - 1
    bcls, brep = _group_rows(np.ascontiguousarray(delta.T))
    dc = np.ascontiguousarray(delta[:, brep])  # [S+1, byte classes]
    n_bc = dc.shape[1]
    vb = vocab_bytes(vocab)
    funcs: list[np.ndarray] = [np.arange(dead + 1, dtype=np.int32)]  # 0 = identity
    seen: dict[bytes, int] = {funcs[0].tobytes(): 0}
    memo: dict[int, int] = {}
    fid = np.zeros(vocab.size, np.int64)
    # rows [:active[k]] have a k-th byte (rows are sorted by decreasing length)
    active = np.searchsorted(-vb.lengths, -np.arange(vb.matrix.shape[1]), side="left")
    for k, n in enumerate(active.tolist()):
        if n == 0:
            break
        key = fid[:n] * n_bc + bcls[vb.matrix[:n, k]]
        uniq, inv = np.unique(key, return_inverse=True)
        out = np.empty(len(uniq), np.int64)
        for j, kk in enumerate(uniq.tolist()):
            r = memo.get(kk)
            if r is None:
                f, c = divmod(kk, n_bc)
                vec = dc[funcs[f], c]
                r = seen.setdefault(vec.tobytes(), len(funcs))
                if r == len(funcs):
                    funcs.append(vec)
                memo[kk] = r
            out[j] = r
        fid[:n] = out[inv.reshape(-1)]
    # token classes: distinct non-dead functions of non-empty tokens; class 0 = never allowed
    fn = np.stack(funcs)  # [F, S+1]
    live_f = (fn[:, :dead] != dead).any(axis=1)
    live_tok = (vb.lengths > 0) & live_f[fid]
    used, tok_cls = np.unique(fid[live_tok], return_inverse=True)
    class_sorted = np.zeros(vocab.size, np.int32)
    class_sorted[live_tok] = tok_cls.reshape(-1) + 1
    class_of = np.zeros(vocab.size, np.int32)
    class_of[vb.order] = class_sorted
    table = np.concatenate([np.full((dead, 1), dead, np.int32), fn[used][:, :dead].T], axis=1)
    # keep the states reachable from the initial state by tokens, renumbered in BFS order
    reach = np.zeros(dead + 1, bool)
    reach[init] = True
    frontier = np.array([init])
    while frontier.size:
        nxt = np.unique(table[frontier])
        nxt = nxt[(nxt != dead) & ~reach[nxt]]
        reach[nxt] = True
        frontier = nxt
    keep = np.flatnonzero(reach[:dead])
    new_id = np.full(dead + 1, -1, np.int32)
    new_id[keep] = np.arange(len(keep), dtype=np.int32)
    table = new_id[table[keep]]
    dfa = TokenDFA(np.ascontiguousarray(table, np.int32), class_of,
                   accepting[keep].copy(), int(new_id[init]))
    if not (table[dfa.initial] >= 0).any() and not dfa.accepting[dfa.initial]:
        raise ConstraintError("cannot compile the constraint: it accepts no token sequence "
                              "over this vocabulary")
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
