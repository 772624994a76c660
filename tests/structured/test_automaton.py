"""Token automata vs outlines-core's own full-vocabulary index; token classes; disk cache."""

import os

import numpy as np
import pytest
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


@pytest.mark.parametrize("c", CONSTRAINTS, ids=lambda c: type(c).__name__)
def test_masks_equal_the_reference_library_on_random_walks(c, vocab):
    """Along random token paths, our allowed sets and acceptance equal outlines-core's
    index built on the whole vocabulary (independent of our byte/token grouping)."""
    rx = c.to_regex()
    ref = _reference_index(rx, vocab)
    dfa = compile_regex(rx, vocab)
    rng = np.random.default_rng(0)
    checked = 0
    for walk in range(12):
        rs, s = ref.get_initial_state(), dfa.initial
        for _ in range(40):
            want = sorted(t for t in ref.get_allowed_tokens(rs) if t != vocab.eos_id)
            got = dfa.allowed(s).tolist()
            assert got == want, (walk, len(got), len(want))
            assert bool(dfa.accepting[s]) == ref.is_final_state(rs)
            checked += 1
            if not want:
                break
            tok = int(rng.choice(want))
            rs, s = ref.get_next_state(rs, tok), dfa.step(s, tok)
    assert checked > 40


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
