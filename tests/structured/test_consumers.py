"""Constrained decoding in its consumers: LLMSRec's generation-mode answers name candidates;
quantized weights decode under a constraint like float ones."""

import json

import jsonschema
import numpy as np
import pytest

from jaxlm.agents.recsys import answer_format, parse_ranking, rank_by_generation
from jaxlm.llm.local import LocalBackend
from jaxlm.structured import JsonSchema, compile_constraint
from jaxlm.structured import generate as sgenerate

TITLES = ["Toy Story (1995)", "Heat (1995)", "Casino (1995)", "Sabrina (1995)",
          "Jumanji (1995)", "Balto [a.k.a. B] (1995)"]


def test_answer_format_lines_are_candidate_titles():
    import re

    rx = answer_format(TITLES, lines=3)["regex"]
    assert re.fullmatch(rx, "1. Heat (1995)")
    assert re.fullmatch(rx, "1. Heat (1995)\n2. Balto [a.k.a. B] (1995)\n3. Heat (1995)")
    assert not re.fullmatch(rx, "1. Heat (1995)\n2. Heat (1995)\n3. Heat (1995)\n4. Heat (1995)")
    assert not re.fullmatch(rx, "1. Heat")
    with pytest.raises(ValueError, match="empty"):
        answer_format([])


def test_generation_mode_answers_name_a_candidate(model, tokenizer):
    """A random model answers free text that parse_ranking cannot match; under the answer
    format every line is a candidate and the first one is ranked first."""
    cfg, params = model
    backend = LocalBackend(None, cfg=cfg, params=params, tokenizer=tokenizer)
    prompt = "Candidates: " + ", ".join(TITLES) + "\nAnswer:\n"
    free, n_free = rank_by_generation(backend, prompt, TITLES, max_tokens=24)
    for lines in (1, 2):
        s, n = rank_by_generation(backend, prompt, TITLES, max_tokens=48, constrained=True,
                                  lines=lines)
        assert 1 <= n <= lines
        assert (s > 0).sum() == n and s.max() == len(TITLES)
    assert n_free == 0  # the random model's free text names nothing (the constraint matters)


def test_quantized_weights_decode_valid_json(model, tokenizer, vocab):
    from jaxlm.quant import quantize_params

    cfg, params = model
    qparams = quantize_params(params, cfg, "int8")  # the tiny model's K=48 rules out q4_1
    schema = {"type": "object", "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 6},
        "n": {"enum": [1, 2, 3]}}, "required": ["name", "n"], "additionalProperties": False}
    out = sgenerate(qparams, cfg, [[1, 2, 3], [4, 5, 6, 7]], constraint=JsonSchema(schema),
                    tokenizer=tokenizer, max_new_tokens=40, cache_dir=False)
    dfa = compile_constraint(JsonSchema(schema), vocab, cache_dir=False)
    for i in range(2):
        toks = np.asarray(out.tokens[i])[: int(out.lengths[i])].tolist()
        s = dfa.initial
        for t in toks:
            s = dfa.step(s, t)
            assert s >= 0
        assert dfa.accepting[s], "a 40-token budget finishes this bounded schema"
        jsonschema.validate(json.loads(tokenizer.decode(toks)), schema)
    assert parse_ranking("1. Heat (1995)", TITLES)[1] == 1


def test_keyformer_eviction_decodes_valid_json(model, tokenizer, vocab):
    """The grammar rides in kvcache's evicting loop: with a Keyformer cache at a small budget
    (and H2O in another row) every row's output follows the schema; without the processor
    the same loop's random-model output does not."""
    from jaxlm import kvcache as kv
    from jaxlm.structured.api import processor_for

    cfg, params = model
    schema = {"type": "object", "properties": {"k": {"enum": ["ab", "cd"]}, "v": {"enum": [1, 2]}},
              "required": ["k", "v"], "additionalProperties": False}
    prompts = [list(range(5, 45)), list(range(50, 90))]
    policies = [kv.Policy("keyformer", 0.5), kv.Policy("h2o", 0.5)]
    proc = processor_for(JsonSchema(schema), 2, tokenizer, cfg.vocab_size, False)
    out = kv.generate(params, cfg, prompts, policies, max_new_tokens=40, processor=proc)
    dfa = compile_constraint(JsonSchema(schema), vocab, cache_dir=False)
    for i in range(2):
        n = int(out.lengths[i])
        assert 0 < n < 40, "the bounded schema finishes inside the budget"
        toks = np.asarray(out.tokens[i])[:n].tolist()
        s = dfa.initial
        for t in toks:
            s = dfa.step(s, t)
            assert s >= 0
        assert dfa.accepting[s]
        jsonschema.validate(json.loads(tokenizer.decode(toks)), schema)
    free = kv.generate(params, cfg, prompts, policies, max_new_tokens=40)
    texts = [tokenizer.decode(np.asarray(free.tokens[i]).tolist()) for i in range(2)]
    assert not any(t.lstrip().startswith('{"k"') for t in texts)
    with pytest.raises(ValueError, match="teacher forcing"):
        kv.generate(params, cfg, prompts, policies, max_new_tokens=4, processor=proc,
                    forced=np.zeros((2, 4), np.int32))
