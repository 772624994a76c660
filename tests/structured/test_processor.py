"""Stacked device tables: per-row masks and transitions equal each automaton's own."""

import jax.numpy as jnp
import numpy as np

from jaxlm.core import generate as gen
from jaxlm.structured import (Choice, JsonSchema, Regex, compile_constraint, make_processor)

CONS = [Regex(r"[a-z]{2,5}[0-9]?"), Choice(["north", "south", "up"]),
        JsonSchema({"type": "object", "properties": {"n": {"type": "integer"}},
                    "required": ["n"]})]


def test_stacked_masks_and_steps_equal_each_automaton(vocab):
    rows = [CONS[0], None, CONS[2], CONS[1], CONS[0]]
    proc = make_processor(rows, vocab, vocab.size + 64, cache_dir=False)
    dfas = {c: compile_constraint(c, vocab, cache_dir=False) for c in CONS}
    assert proc.tables.next_state.shape[0] & (proc.tables.next_state.shape[0] - 1) == 0
    assert proc.tables.class_of.shape == (4, vocab.size + 64)  # 3 automata -> 4 (bucketed)
    state = proc.init(len(rows))
    local = [None if c is None else dfas[c].initial for c in rows]
    rng = np.random.default_rng(1)
    stops = np.zeros(vocab.size + 64, bool)
    stops[list(vocab.stop_ids)] = True
    for step in range(6):
        ok = np.asarray(proc.allowed(state))
        logits = jnp.asarray(rng.normal(size=(len(rows), vocab.size + 64)), jnp.float32)
        masked = np.asarray(proc.apply(state, logits))
        toks = []
        for i, c in enumerate(rows):
            if c is None:
                assert ok[i].all() and (masked[i] == np.asarray(logits[i])).all()
                toks.append(int(rng.integers(vocab.size)))
                continue
            d = dfas[c]
            want = np.zeros(vocab.size + 64, bool)
            want[d.allowed(local[i])] = True
            want[stops] = bool(d.accepting[local[i]]) or not want.any()
            assert (ok[i] == want).all(), (step, i)
            assert (np.isfinite(masked[i]) == want).all()
            toks.append(int(rng.choice(np.flatnonzero(want & ~stops))) if (want & ~stops).any()
                        else vocab.eos_id)
        state = proc.advance(state, jnp.asarray(toks, jnp.int32))
        fin = np.asarray(proc.finished(state))
        for i, c in enumerate(rows):
            if c is None:
                assert int(state[i]) == -1 and not fin[i]
                continue
            if toks[i] not in vocab.stop_ids:
                local[i] = dfas[c].step(local[i], toks[i])
            d = dfas[c]
            assert fin[i] == (d.accepting[local[i]] and not (d.next_state[local[i]] >= 0).any())


def test_all_unconstrained_processor_is_bit_for_bit_plain(model, vocab):
    cfg, params = model
    prompts = [[5, 6, 7], [8], [9, 10, 11, 12]]
    for s in (gen.SamplingConfig(), gen.SamplingConfig(temperature=1.0, top_k=50, top_p=0.9)):
        key = gen.jax.random.PRNGKey(3)
        plain = gen.generate(params, cfg, prompts, max_new_tokens=12, key=key, sampling=s,
                             stop_ids=vocab.stop_ids)
        free = make_processor([None] * 3, vocab, cfg.vocab_size, cache_dir=False)
        got = gen.generate(params, cfg, prompts, max_new_tokens=12, key=key, sampling=s,
                           stop_ids=vocab.stop_ids, processor=free)
        assert (np.asarray(plain.tokens) == np.asarray(got.tokens)).all()
        assert (np.asarray(plain.lengths) == np.asarray(got.lengths)).all()
        # a free row in a mixed batch is the same as in the plain run
        mixed = make_processor([CONS[1], None, CONS[0]], vocab, cfg.vocab_size, cache_dir=False)
        m = gen.generate(params, cfg, prompts, max_new_tokens=12, key=key, sampling=s,
                         stop_ids=vocab.stop_ids, processor=mixed)
        assert (np.asarray(m.tokens[1]) == np.asarray(plain.tokens[1])).all()
        assert int(m.lengths[1]) == int(plain.lengths[1])


def test_second_grammar_of_the_same_padded_shape_does_not_recompile(model, vocab):
    cfg, params = model
    gen._generate.clear_cache()
    shapes = set()
    for c in (Choice(["left", "right"]), Regex(r"[0-9]{3}"), Choice(["red", "blue"])):
        proc = make_processor([c, None], vocab, cfg.vocab_size, cache_dir=False, min_classes=64)
        shapes.add((proc.tables.next_state.shape, proc.tables.class_of.shape))
        gen.generate(params, cfg, [[1, 2], [3]], max_new_tokens=6, processor=proc,
                     stop_ids=vocab.stop_ids)
    assert len(shapes) == 1
    assert gen._generate._cache_size() == 1
