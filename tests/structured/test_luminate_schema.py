"""Luminate dimensions under the schema (dimension grammar) and the model's own dimensions
used end to end."""

import json
import re

import pytest

from jaxlm.agents import luminate as L
from jaxlm.llm import ScriptedBackend
from jaxlm.llm.base import GenConfig


@pytest.mark.parametrize("kind, n", [("categorical", 3), ("ordinal", 3), ("categorical", 1)])
def test_dimension_format_accepts_the_examples_and_rejects_bad_layouts(kind, n):
    rx = L.dimension_format(n, kind)["regex"]
    ex = dict(list(L._EXAMPLES[kind].items())[:n])
    assert re.fullmatch(rx, json.dumps(ex))
    assert not re.fullmatch(rx, json.dumps(dict(list(ex.items())[:n - 1]))) or n == 1
    first = list(ex.items())[0]
    assert not re.fullmatch(rx, json.dumps({first[0]: first[1][:-1]}))  # one value short


def test_schema_style_replies_always_have_the_layout(model, tokenizer):
    from jaxlm.llm.local import LocalBackend

    cfg, params = model
    backend = LocalBackend(None, cfg=cfg, params=params, tokenizer=tokenizer)
    rf = L.dimension_format(2, "ordinal")
    texts = L._complete_batch(backend, ["List dimensions. JSON: "] * 3,
                              GenConfig(max_tokens=112, temperature=1.0, response_format=rf),
                              raw=True)
    for t in texts:  # a random model, yet every reply is the exact JSON layout
        assert re.fullmatch(rf["regex"], t), t
        obj = json.loads(t)
        assert all(isinstance(v, list) and len(v) == 5 for v in obj.values())


def _reply(t: str) -> str:
    if "Describe the text" in t:
        return '{"Title": "Bottle", "Key Words": ["water"], "Summary": "About water."}'
    if "JSON" in t:
        return json.dumps({"Mood": ["calm", "angry", "sad", "happy", "bored", "proud"],
                           "Place": ["city", "forest", "beach", "desert", "office", "ship"],
                           "Voice": ["poet", "child", "robot", "pirate", "judge", "chef"]})
    return "Drink water."


def test_run_uses_the_models_dimensions(tmp_path, monkeypatch):
    calls = []

    def fake_classify(backend, text, dim):
        calls.append(dim.name)
        return dim.values[0]

    monkeypatch.setattr(L, "classify", fake_classify)
    cfg = L.LuminateConfig(n=6, dim_retries=1, n_abstract=2, dim_style="schema",
                           use_llm_dims=True, n_label=4)
    res = L.run_luminate(ScriptedBackend(rules=[(".", _reply)]), cfg, tmp_path)
    m = res["metrics"]
    assert m["dims_source"] == "llm"
    assert [d.name for d in res["dims"]] == ["Mood", "Place", "Voice"]
    assert set(m["label_fidelity"]) == {"Mood", "Place", "Voice"}
    assert all(v["n"] == 4 for v in m["label_fidelity"].values())
    assert set(calls) == {"Mood", "Place", "Voice"}
    assert all(set(r.labels) == {"Mood", "Place", "Voice"} for r in res["responses"])
    assert m["dimension_json"]["fallback_rate"] < 1.0
    assert "Mood" in (tmp_path / "luminate.html").read_text()
    # fewer than 2 model dimensions: the library dimensions are used
    lib = L.run_luminate(L.scripted_backend(), cfg)
    assert lib["metrics"]["dims_source"] == "library"


def test_classify_under_a_choice_constraint(model, tokenizer):
    from jaxlm.llm.local import LocalBackend

    cfg, params = model
    backend = LocalBackend(None, cfg=cfg, params=params, tokenizer=tokenizer)
    dim = L.Dimension("Mood", "categorical", ("calm", "angry", "very sad", "happy go lucky"))
    for text in ("I am fine.", "Everything is terrible!"):
        assert L.classify(backend, text, dim, mode="choice") in dim.values
    ignores = ScriptedBackend(rules=[(".", lambda t: "no idea")])
    with pytest.raises(ValueError, match="ignored the Choice"):
        L.classify(ignores, "x", dim, mode="choice")
    with pytest.raises(ValueError, match="auto"):
        L.classify(backend, "x", dim, mode="vote")
