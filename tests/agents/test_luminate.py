"""Tests for jaxlm.agents.luminate (dimensions, checks, generation, metrics, page)."""

from __future__ import annotations

import dataclasses
import re

import jax
import numpy as np
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
    dims, st = L.generate_dimensions(good, "slogan", 3, retries=3, style="instruction")
    assert st.valid_rate == 1.0 and st.fallback_rate == 0.0
    # 2 of 3 categorical and 1 of 3 ordinal dimensions came from the LLM; the rest are
    # filled from the library (which has one ordinal dimension)
    assert [(d.name, d.kind) for d in dims] == [("Tone", "categorical"),
                                                ("Setting", "categorical"),
                                                ("Perspective", "categorical"),
                                                ("Realism", "ordinal"),
                                                ("Length band", "ordinal")]
    assert st.library_fill_rate == pytest.approx(2 / 6)


def test_fewshot_forced_json_and_repair():
    p = L.fewshot_dimension_prompt("Write a slogan.", 2, "categorical")
    assert p.endswith("Task: Write a slogan.\nJSON: " + L.FORCED_PREFIX) and '"Focus"' in p
    # the model continues the forced '{"'; text after the first '}' is ignored
    cont = ScriptedBackend(rules=[
        ("6 values", 'Tone": ["warm", "cool", "dry"], "Setting": ["sea", "city", "farm"]} junk'),
        ("ordered", 'Realism": ["none", "low", "mid", "high", "full"], "Mood": ["sad", "ok"')])
    dims, st = L.generate_dimensions(cont, "slogan", 2, retries=2, style="fewshot")
    assert st.valid == 1 and st.attempts == 3 and st.repaired == 1 and st.fallback_rate == 0
    assert [d.name for d in dims] == ["Tone", "Setting", "Realism", "Length band"]
    # entry-level constrained decoding: round r continues the JSON built so far
    rounds = ScriptedBackend(rules=[
        (r'JSON: \{"$', 'Tone": ["warm", "cool", "warm", "dry", "bold", "calm", "wry", "odd"'),
        (r'wry"\], "$', 'Dimension": ["value1", "value2", "value3"]}'),
        (r'value3"\], "$', 'Mood": ["sad", "glad", "mad"], "'),
    ], default="no entry here")
    dims, st = L.generate_dimensions(rounds, "slogan", 3, kinds=("categorical",), retries=2)
    assert [d.name for d in dims] == ["Tone", "Mood", "Perspective"]
    assert dims[0].values == ("warm", "cool", "dry", "bold", "calm", "wry")  # cut at 6
    assert st.entries == 6 and st.valid_entries == 4 and st.valid == 0
    assert st.fallback_rate == 0 and st.library_fill_rate == pytest.approx(1 / 3)
    assert L.read_entry('Tone": ["a", "b", 3, "c"]', 6) == ("Tone", ["a", "b"])
    assert L.read_entry('{"nested": 1}', 6) is None
    assert L.repair_dimensions('{"Mood": ["x", "y", "z"], "Bad": [1, 2], "C d": ["u"', "categorical"
                               )[0].values == ("x", "y", "z")
    with pytest.raises(L.DimensionError, match="placeholder"):
        L.parse_dimensions({"Dimension": ["value1", "value2", "value3"]}, "categorical")
    with pytest.raises(L.DimensionError, match="copied"):
        L.parse_dimensions({"Enthusiasm": ["indifferent", "mild", "moderate", "strong",
                                           "ecstatic"]}, "ordinal", 5)


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
    scripted_backend = L.scripted_backend

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


def _runs(ix: np.ndarray) -> int:
    """Number of runs of nearly consecutive indices (a 1-2 px line counts once)."""
    return len(np.split(ix, np.flatnonzero(np.diff(ix) > 2) + 1)) if len(ix) else 0


def test_screenshot(tmp_path):
    """Headless Chromium renders the offline page (40 responses): the PNG has the window
    size, the table's grid lines (4 columns x 4 rows incl. headers -> 5 lines each way) and
    one green dot per response inside the grid."""
    if L.find_chromium() is None:
        pytest.skip("no Chromium/Chrome binary on PATH (Debian: apt-get install -y chromium): "
                    "headless screenshot not possible")
    import matplotlib.image as mpimg
    from scipy import ndimage

    scripted_backend = L.scripted_backend

    res = L.run_luminate(scripted_backend(), L.LuminateConfig(n=40, dim_retries=1,
                                                              n_abstract=2), tmp_path)
    png = L.screenshot(res["html"], tmp_path / "page.png", size=(1400, 1000))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rgb = np.round(mpimg.imread(png)[..., :3] * 255).astype(int)
    assert rgb.shape == (1000, 1400, 3)
    line = np.all(rgb == 0xBB, axis=-1)  # table borders are #bbb
    rows = np.flatnonzero(line.sum(1) > 600)  # horizontal lines spanning the table
    cols = np.flatnonzero(line.sum(0) > 200)  # vertical lines
    assert _runs(rows) == 5 and _runs(cols) == 5, (rows, cols)
    green = np.all(np.abs(rgb - np.array([0x33, 0xAA, 0x77])) < 40, axis=-1)  # .dot #3a7
    lab, n_dots = ndimage.label(green)
    assert n_dots == 40
    cy, cx = np.array(ndimage.center_of_mass(green, lab, range(1, n_dots + 1))).T
    assert cy.min() > rows.min() and cy.max() < rows.max()
    assert cx.min() > cols.min() and cx.max() < cols.max()
