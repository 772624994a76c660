"""Token automata vs outlines-core's own full-vocabulary index; token classes; disk cache."""

import os

import numpy as np
import pytest
import regex
from outlines_core import Index, Vocabulary

from jaxlm.structured import (Choice, ConstraintError, JsonSchema, Regex, TokenVocab,
                              compile_constraint, compile_regex)
from jaxlm.structured.automaton import byte_classes, cache_key, clear_memo

CONSTRAINTS = [
    Regex(r"[0-9]{1,3}(\.[0-9]{1,2})?"),
    Regex(r"(yes|no|maybe), because [a-z ]{1,12}\."),
    Choice(["go north", "take the red key", "open door", "é café", "日本"]),
    JsonSchema({"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 8},
        "kind": {"enum": ["a", "b", 3]},
        "xs": {"type": "array", "items": {"type": "integer"}, "maxItems": 3},
        "ok": {"type": "boolean"}}, "required": ["name", "kind"]}),
]


def _reference_index(regex, vocab):
    groups = {}
    for i, b in enumerate(vocab.token_bytes):
        if b:
            groups.setdefault(b, []).append(i)
    return Index(regex, Vocabulary(vocab.eos_id, groups))


def _viable(pattern, data):
    """Independent check with the ``regex`` module: None if ``data`` is not whole UTF-8,
    else (is a prefix of some match, is a full match)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return (regex.fullmatch(pattern, text, partial=True) is not None,
            regex.fullmatch(pattern, text) is not None)


@pytest.mark.parametrize("c", CONSTRAINTS, ids=lambda c: type(c).__name__)
def test_masks_contain_the_reference_library_and_follow_the_language(c, vocab):
    """Along random token paths: our allowed sets contain outlines-core's (its full-
    vocabulary index); every extra token and a sample of the refused ones are checked
    against the language with the ``regex`` module (outlines-core's index drops some
    continuations out of accepting states, see ``byte_dfa``); acceptance equals the
    language's."""
    rx = c.to_regex()
    ref = _reference_index(rx, vocab)
    dfa = compile_regex(rx, vocab)
    rng = np.random.default_rng(0)
    checked = extra = 0
    for walk in range(8):
        rs, s, text = ref.get_initial_state(), dfa.initial, b""
        for _ in range(40):
            got = dfa.allowed(s)
            if rs is not None:
                want = {t for t in ref.get_allowed_tokens(rs) if t != vocab.eos_id}
                assert want <= set(got.tolist()), walk
                assert bool(dfa.accepting[s]) == ref.is_final_state(rs) or dfa.accepting[s]
                more = sorted(set(got.tolist()) - want)
            else:
                more = got.tolist()
            for t in more[:40]:
                v = _viable(rx, text + vocab.token_bytes[t])
                assert v is None or v[0], (text, vocab.token_bytes[t])
                extra += 1
            refused = np.setdiff1d(np.flatnonzero([b is not None and b != b""
                                                   for b in vocab.token_bytes]), got)
            for t in rng.choice(refused, size=min(30, refused.size), replace=False):
                v = _viable(rx, text + vocab.token_bytes[t])
                assert v is None or not v[0], (text, vocab.token_bytes[t])
            v = _viable(rx, text)
            assert v is None or v[1] == bool(dfa.accepting[s]), text
            checked += 1
            if got.size == 0:
                break
            tok = int(rng.choice(got))
            if rs is not None:
                rs = ref.get_next_state(rs, tok) if tok in want else None
            s, text = dfa.step(s, tok), text + vocab.token_bytes[tok]
    assert checked > 40


def test_prefix_options_and_continuations_out_of_accepting_states(vocab):
    """Where outlines-core's own index stops (``go|go north`` never gives ``go north``;
    ``[0-9]+(\\.[0-9]+)?`` refuses ``.`` after digits), the automaton follows the language."""
    dfa = compile_regex(Choice(["go", "go north"]).to_regex(), vocab)
    s = dfa.step(dfa.initial, vocab.token_bytes.index(b"go"))
    assert dfa.accepting[s]
    assert vocab.token_bytes.index(b" north") in dfa.allowed(s)
    num = compile_regex(r"[0-9]+(\.[0-9]+)?", vocab)
    s = num.step(num.initial, vocab.token_bytes.index(b"1"))
    assert num.accepting[s] and vocab.token_bytes.index(b".") in num.allowed(s)
    ref = _reference_index(r"[0-9]+(\.[0-9]+)?", vocab)
    rs = ref.get_next_state(ref.get_initial_state(), vocab.token_bytes.index(b"1"))
    assert vocab.token_bytes.index(b".") not in ref.get_allowed_tokens(rs)  # the quirk


def test_byte_classes_group_equivalent_bytes():
    cls = byte_classes(r"[a-c]x[0-9]+")
    assert cls[ord("a")] == cls[ord("b")] == cls[ord("c")]
    assert len({cls[ord(d)] for d in "0123456789"}) == 1
    assert len({cls[ord("a")], cls[ord("x")], cls[ord("0")], cls[ord("d")]}) == 4
    assert cls[ord("d")] == cls[ord("Z")]  # both never allowed anywhere


def test_special_tokens_and_stops_are_class_zero(vocab):
    dfa = compile_constraint(Regex("[a-z]+"), vocab, cache_dir=False)
    for t in vocab.stop_ids:
        assert dfa.class_of[t] == 0
    assert (dfa.next_state[:, 0] == -1).all()
    assert dfa.class_of.shape == (vocab.size,) and dfa.n_classes < 64


def test_unsatisfiable_over_the_vocabulary_is_a_clear_error():
    v = TokenVocab.from_bytes([None, b"a", b"b", b"ab"], eos_id=0)
    with pytest.raises(ConstraintError, match="cannot compile"):
        compile_regex("c+", v)
    dfa = compile_regex("(a|b){2}", v)
    assert sorted(dfa.allowed(dfa.initial).tolist()) == [1, 2, 3]


def _from_disk(c, v, cache_dir):
    clear_memo()  # bypass the in-process memo: read (or write) the disk cache
    return compile_constraint(c, v, cache_dir=cache_dir)


def test_disk_cache_roundtrip_and_untrusted_files(vocab, tmp_path):
    compile_constraint = _from_disk

    c = Choice(["alpha", "beta"])
    a = compile_constraint(c, vocab, cache_dir=tmp_path)
    files = list(tmp_path.iterdir())
    assert [f.name for f in files] == [cache_key(c, vocab) + ".npz"]  # no temp file left
    b = compile_constraint(c, vocab, cache_dir=tmp_path)
    assert (a.next_state == b.next_state).all() and (a.class_of == b.class_of).all()
    # a corrupted or tampered file is not trusted: recompiled and replaced
    files[0].write_bytes(b"not an npz")
    assert (compile_constraint(c, vocab, cache_dir=tmp_path).next_state == a.next_state).all()
    z = dict(np.load(files[0]))
    z["next_state"] = np.full_like(z["next_state"], 10**6)  # out-of-range states
    with open(files[0], "wb") as f:
        np.savez(f, **z)
    again = compile_constraint(c, vocab, cache_dir=tmp_path)
    assert (again.next_state == a.next_state).all()
    # another grammar's file renamed onto this key is rejected by the stored key
    other = compile_constraint(Choice(["gamma"]), vocab, cache_dir=tmp_path)
    os.replace(tmp_path / (cache_key(Choice(["gamma"]), vocab) + ".npz"), files[0])
    assert (compile_constraint(c, vocab, cache_dir=tmp_path).next_state == a.next_state).all()
    assert other.n_states != a.n_states


def test_cache_key_depends_on_the_tokenizer():
    v1 = TokenVocab.from_bytes([None, b"a", b"b"], eos_id=0)
    v2 = TokenVocab.from_bytes([None, b"b", b"a"], eos_id=0)
    assert v1.digest != v2.digest
    assert cache_key(Regex("a"), v1) != cache_key(Regex("a"), v2)


def test_token_functions_on_a_toy_vocabulary_follow_the_language():
    """Empty tokens, UTF-8 fragments and tokens longer than any path: in every reachable
    state the allowed tokens are exactly those that keep the bytes a prefix of a word of
    the (finite, enumerated) language, and acceptance is membership."""
    import itertools

    toks = [None, b"a", b"b", b"ab", b"ba", b"", b"\xc3", b"\xa9", b"\xc3\xa9", b"abab",
            b"aaaaaaaaaaaaaaaaaaaa", b"\xc3\xa9b", b"c", b"bc", None]
    v = TokenVocab.from_bytes(toks, eos_id=0, stop_ids=[14])
    words = {b"".join(p) + e for n in (1, 2, 3)
             for p in itertools.product([b"ab", "é".encode()], repeat=n) for e in (b"", b"c")}
    dfa = compile_regex("(ab|é){1,3}c?", v)
    seen, todo = {dfa.initial: b""}, [dfa.initial]
    while todo:
        s = todo.pop()
        text = seen[s]
        want = [t for t, b in enumerate(toks)
                if b and any(w.startswith(text + b) for w in words)]
        assert dfa.allowed(s).tolist() == want, text
        assert bool(dfa.accepting[s]) == (text in words)
        for t in want:
            nxt = dfa.step(s, t)
            if nxt not in seen:
                seen[nxt] = text + toks[t]
                todo.append(nxt)
    assert len(seen) == dfa.n_states  # only reachable states are kept
    assert dfa.class_of[5] == 0 and dfa.class_of[14] == 0  # empty and stop tokens
    assert dfa.class_of[1] != dfa.class_of[2]
    assert dfa.class_of[3] == dfa.class_of[8]  # "ab" and "é" act alike everywhere


def test_a_pattern_that_consumes_every_end_marker_is_a_clear_error(vocab):
    with pytest.raises(ConstraintError, match="leave one out"):
        compile_regex(r"(?s:.){1,3}", vocab)
    dfa = compile_regex(r"[^\x00]{1,3}", vocab)  # the pattern leaves \x00 out: it compiles
    assert dfa.accepting[dfa.step(dfa.initial, vocab.token_bytes.index(b"a"))]
