"""Property tests: every output of a constrained run matches its constraint.

A tiny random model with SmolLM2's real vocabulary samples under random small JSON
schemas and regexes (hypothesis), in mixed batches (schema, regex, choice, free rows),
greedy and with temperature / top-k / top-p, several seeds. Outputs are checked with
independent validators: ``json`` + ``jsonschema`` and Python's ``re``.
"""

import dataclasses
import json
import re

import jax
import jsonschema
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxlm.core import generate as gen
from jaxlm.core.generate import SamplingConfig
from jaxlm.structured import Choice, JsonSchema, Regex, compile_constraint, make_processor
from jaxlm.structured import generate as sgenerate

MAX_NEW = 64
SAMPLINGS = [SamplingConfig(), SamplingConfig(temperature=1.0),
             SamplingConfig(temperature=0.8, top_k=20), SamplingConfig(temperature=1.2, top_p=0.9)]
CHOICE = Choice(["open the door", "go north", "take key"])
NAMES = ["a", "id", "name", "tags", "x_y"]


def leaf():
    return st.one_of(
        st.tuples(st.integers(0, 3), st.integers(0, 5)).map(
            lambda t: {"type": "string", "minLength": min(t), "maxLength": max(t)}),
        st.just({"type": "boolean"}), st.just({"type": "integer"}), st.just({"type": "null"}),
        st.just({"type": "number"}),
        st.lists(st.one_of(st.sampled_from(["red", "blue", "a b"]), st.integers(-3, 3)),
                 min_size=1, max_size=3, unique=True).map(lambda e: {"enum": e}),
    )


def obj(children):
    return st.dictionaries(st.sampled_from(NAMES), children, min_size=1, max_size=3).flatmap(
        lambda props: st.lists(st.sampled_from(sorted(props)), unique=True).map(
            lambda req: {"type": "object", "properties": props, "required": req,
                         "additionalProperties": False}))


def arr(children):
    return st.tuples(children, st.integers(0, 2), st.integers(0, 2)).map(
        lambda t: {"type": "array", "items": t[0], "minItems": min(t[1:]),
                   "maxItems": max(t[1:])})


schemas = st.recursive(leaf(), lambda c: st.one_of(obj(c), arr(c)), max_leaves=4)

atoms = st.one_of(st.sampled_from(["[a-z]", "[0-9]", "[A-Z ]", "(ab|cd)", "x", "-", "é"]),
                  st.sampled_from(["[a-z]", "[0-9]"]).flatmap(
                      lambda a: st.tuples(st.integers(0, 2), st.integers(1, 3)).map(
                          lambda t: f"{a}{{{t[0]},{t[0] + t[1]}}}")))
regexes = st.lists(atoms, min_size=1, max_size=5).map("".join)


def _text(vocab, toks):
    return b"".join(vocab.token_bytes[t] for t in toks).decode("utf-8")


def _check_row(vocab, dfa, c, toks, length):
    """Every token was allowed; a complete output validates; an incomplete one only
    happens when the token budget ran out."""
    toks = [int(t) for t in toks[:length]]
    s = dfa.initial
    for t in toks:
        assert t not in vocab.stop_ids
        s = dfa.step(s, t)
        assert s >= 0, "a disallowed token was sampled"
    if not dfa.accepting[s]:
        assert length == MAX_NEW, "row stopped outside an accepting state"
        return False
    text = _text(vocab, toks)
    if isinstance(c, JsonSchema):
        jsonschema.validate(json.loads(text), json.loads(c.schema))
    elif isinstance(c, Regex):
        assert re.fullmatch(c.pattern, text), (c.pattern, text)
    else:
        assert text in c.options
    return True


def _run(model, vocab, cons, seed, sampling):
    cfg, params = model
    rows = cons + [CHOICE, None]
    proc = make_processor(rows, vocab, cfg.vocab_size, cache_dir=False, min_states=512,
                          min_classes=256)
    prompts = [[1 + i, 50 + seed, 7] for i in range(len(rows))]
    out = gen.generate(params, cfg, prompts, max_new_tokens=MAX_NEW, processor=proc,
                       key=jax.random.PRNGKey(seed), sampling=sampling,
                       stop_ids=vocab.stop_ids)
    toks, lens = np.asarray(out.tokens), np.asarray(out.lengths)
    done = 0
    for i, c in enumerate(rows[:-1]):
        dfa = compile_constraint(c, vocab, cache_dir=False)
        done += _check_row(vocab, dfa, c, toks[i], int(lens[i]))
    return done


_SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


@settings(max_examples=8, **_SETTINGS)
@given(schema=schemas, seed=st.integers(0, 3), samp=st.sampled_from(SAMPLINGS))
def test_random_schemas_always_validate(model, vocab, schema, seed, samp):
    _run(model, vocab, [JsonSchema(schema), Regex(r"[0-9]{1,4}")], seed, samp)


@settings(max_examples=8, **_SETTINGS)
@given(pattern=regexes, seed=st.integers(0, 3), samp=st.sampled_from(SAMPLINGS))
def test_random_regexes_always_match(model, vocab, pattern, seed, samp):
    _run(model, vocab, [Regex(pattern), JsonSchema({"type": "array", "items": {"enum": [1, 2]},
                                                    "maxItems": 3})], seed, samp)


@pytest.mark.parametrize("samp", SAMPLINGS)
def test_bounded_constraints_always_finish_valid(model, vocab, samp):
    schema = {"type": "object", "properties": {
        "label": {"enum": ["pos", "neg"]}, "score": {"type": "string", "maxLength": 4},
        "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2}},
        "required": ["label", "score", "tags"], "additionalProperties": False}
    for seed in range(3):
        n = _run(model, vocab, [JsonSchema(schema), Regex(r"(yes|no) [a-z]{1,6}")], seed, samp)
        assert n == 3  # finite languages: every row finishes and validates


@dataclasses.dataclass
class Move:
    direction: str
    steps: int


def test_generate_convenience_with_a_dataclass(model, tokenizer, vocab, tmp_path):
    cfg, params = model
    schema = JsonSchema({"type": "object", "properties": {
        "direction": {"enum": ["n", "s"]}, "steps": {"type": "string", "maxLength": 2}},
        "required": ["direction", "steps"], "additionalProperties": False})
    out = sgenerate(params, cfg, [[1, 2, 3], [4, 5]], constraint=[schema, CHOICE],
                    tokenizer=tokenizer, max_new_tokens=40, cache_dir=tmp_path)
    t0 = tokenizer.decode(np.asarray(out.tokens[0])[: int(out.lengths[0])])
    assert set(json.loads(t0)) == {"direction", "steps"}
    t1 = tokenizer.decode(np.asarray(out.tokens[1])[: int(out.lengths[1])])
    assert t1 in CHOICE.options
    # a dataclass type is accepted as the constraint; tokens stay inside its grammar
    o2 = sgenerate(params, cfg, [[9, 9]], constraint=Move, tokenizer=tokenizer,
                   max_new_tokens=24, cache_dir=tmp_path)
    dfa = compile_constraint(JsonSchema(Move), vocab, cache_dir=tmp_path)
    s = dfa.initial
    for t in np.asarray(o2.tokens[0])[: int(o2.lengths[0])]:
        s = dfa.step(s, int(t))
        assert s >= 0
    with pytest.raises(ValueError, match="one per prompt"):
        sgenerate(params, cfg, [[1], [2]], constraint=[CHOICE], tokenizer=tokenizer,
                  max_new_tokens=4)
