"""Tests for jaxlm.agents.luminate (dimensions, checks, generation, metrics, page)."""

from __future__ import annotations

import dataclasses
import re

import jax
import pytest

from jaxlm.agents import luminate as L
from jaxlm.llm import GenConfig, ScriptedBackend


@pytest.mark.parametrize("text,want", [
    ("I love my bottle.", "first person"), ("You will love your bottle!", "second person"),
    ("She carries her bottle everywhere.", "third person"), ("Water bottles.", None)])
def test_perspective(text, want):
    assert L.check_perspective(text) == want


def test_other_checks():
    assert L.check_sentence_form("Thirsty?") == "question"
    assert L.check_sentence_form('"Go now!"') == "exclamation"
    assert L.check_sentence_form("Drink.") == "statement"
    assert L.check_sentiment("A great, happy day") == "positive"
    assert L.check_sentiment("A sad and broken cup") == "negative"
    assert L.check_formality("Hey, it's gonna be cool") == "casual"
    assert L.check_formality("Hydration is essential.") == "formal"
    assert L.check_length("one two three") == "short"


def test_parse_dimensions_and_library():
    d = L.parse_dimensions({"Tone": ["warm", "cold", "warm", "dry"]}, "categorical")
    assert d[0].values == ("warm", "cold", "dry") and d[0].kind == "categorical"
    with pytest.raises(L.DimensionError, match="must be words"):
        L.parse_dimensions({"1": ["Clarify", "6.7", "x"]}, "categorical")
    with pytest.raises(L.DimensionError, match=">= 3 values"):
        L.parse_dimensions({"Tone": ["a", "b"]}, "categorical")
    with pytest.raises(L.DimensionError, match="5 levels"):
        L.parse_dimensions({"Realism": ["low", "high"]}, "ordinal", 5)
    with pytest.raises(L.DimensionError, match="list of strings"):
        L.parse_dimensions({"Tone": "warm"}, "categorical")
    with pytest.raises(L.DimensionError, match="non-empty object"):
        L.parse_dimensions([], "categorical")
    with pytest.raises(L.DimensionError, match="unknown dimension 'Colour'"):
        L.library_dims(["Colour"])


def test_dimension_fallback_and_success():
    never = ScriptedBackend(default="I cannot do JSON, sorry.")
    dims, st = L.generate_dimensions(never, "slogan", 2, retries=3)
    assert st.attempts == 6 and st.valid == 0 and st.fallback_rate == 1.0
    assert [d.name for d in dims] == ["Perspective", "Sentence form", "Length band"]
    good = ScriptedBackend(rules=[
        ("6 values", 'Here: {"Tone": ["a", "b", "c", "d", "e", "f"], "Setting": ["x", "y", "z"]}'),
        ("ordered", '{"Realism": ["none", "low", "mid", "high", "full"]}')])
    dims, st = L.generate_dimensions(good, "slogan", 3, retries=3)
    assert st.valid_rate == 1.0 and st.fallback_rate == 0.0
    assert [(d.name, d.kind) for d in dims] == [("Tone", "categorical"),
                                                ("Setting", "categorical"),
                                                ("Realism", "ordinal")]


def test_combinations_and_coverage():
    dims = L.library_dims(["Perspective", "Sentiment"])
    cov = L.sample_combinations(dims, 6, 0, "cover")
    assert L.coverage(cov, dims) == 1.0 and len({tuple(c.values()) for c in cov}) == 6
    rnd = L.sample_combinations(dims, 6, 0, "random")
    assert all(set(c) == {"Perspective", "Sentiment"} for c in rnd)
    with pytest.raises(L.DimensionError):
        L.sample_combinations([], 3)


def test_diversity_metrics_reference():
    texts = ["a b c", "a b d"]
    assert L.distinct_n(texts, 1) == pytest.approx(4 / 6)
    assert L.distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert L.self_bleu(["x y z w", "x y z w"]) == pytest.approx(1.0)
    # hand-computed BLEU: 4/5 unigram, (3+1)/(4+1), (2+1)/(3+1), (1+1)/(2+1); equal lengths
    h, r = "the cat sat on mat".split(), "the cat sat on a".split()
    ref = ((4 / 5) * (4 / 5) * (3 / 4) * (2 / 3)) ** 0.25
    assert L.bleu(h, [r]) == pytest.approx(ref)
    d = L.diversity(["alpha beta", "gamma delta", "alpha beta"])
    assert d["unique texts"] == pytest.approx(2 / 3) and 0 < d["pairwise distance"] < 1


def test_pipeline_with_obedient_backend(tmp_path):
    from experiments.luminate import scripted_backend

    cfg = L.LuminateConfig(n=12, dim_retries=1, n_abstract=4)
    res = L.run_luminate(scripted_backend(), cfg, tmp_path)
    fid = res["metrics"]["label_fidelity"]
    assert fid["Perspective"]["fidelity"] == 1.0 and fid["Sentence form"]["fidelity"] == 1.0
    assert res["metrics"]["coverage"] == 1.0
    assert res["metrics"]["abstraction_json"]["valid_rate"] == 1.0
    page = (tmp_path / "luminate.html").read_text()
    assert page.count('class="card"') == 12
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page)  # offline
    assert "<th>question</th>" in page and "more like this" in page
    with pytest.raises(L.DimensionError, match="unknown dimension 'Colour'"):
        L.render_html("p", res["responses"], res["dims"], "Colour", "Perspective")
    with pytest.raises(L.DimensionError):
        L.run_luminate(scripted_backend(), dataclasses.replace(cfg, x_dim="Length band"))


def test_batched_generation_matches_single():
    from jaxlm.core import MODELS, init
    from jaxlm.llm.local import ByteTokenizer, LocalBackend

    cfg = MODELS.get("llama-20m_test")
    b = LocalBackend(cfg=cfg, params=init(jax.random.PRNGKey(0), cfg),
                     tokenizer=ByteTokenizer(), name="tiny")
    prompts = ["hi", "a longer prompt here"]
    g = GenConfig(max_tokens=4, temperature=0.0)
    batched = L._complete_batch(b, prompts, g)  # "hi" is left-padded with positions -1
    ids = b.encode(b.apply_chat_template([{"role": "user", "content": "hi"}]))
    single = b.decode(b.generate_ids([ids], cfg=g)[0]).strip()
    assert batched[0] == single and len(batched) == 2


def test_screenshot(tmp_path):
    if L.find_chromium() is None:
        pytest.skip("no Chromium/Chrome binary on PATH: headless screenshot not possible")
    from experiments.luminate import scripted_backend

    res = L.run_luminate(scripted_backend(), L.LuminateConfig(n=40, dim_retries=1,
                                                              n_abstract=2), tmp_path)
    png = L.screenshot(res["html"], tmp_path / "page.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
