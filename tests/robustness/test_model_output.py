"""Model output is untrusted: every parser of it is fuzzed (hypothesis, bounded examples
and deadlines) and the hostile cases of issue 20 are pinned: deeply nested JSON, script
breaking text in the Luminate page, and counts < 1."""

from __future__ import annotations

import datetime
import html.parser
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxlm.agents import luminate as L
from jaxlm.agents.recsys.prompting import parse_ranking
from jaxlm.agents.tips import sanitize_tips
from jaxlm.llm import ScriptedBackend
from jaxlm.llm.helpers import MAX_JSON_DEPTH, extract_json, json_depth, match_action

FUZZ = settings(max_examples=60, deadline=datetime.timedelta(seconds=2), derandomize=True,
                database=None, suppress_health_check=[HealthCheck.too_slow])

# text that looks like model output: JSON punctuation, quotes, markup, newlines, unicode
_ALPHABET = st.sampled_from(list('{}[]":,\\ \n-*.0123456789abcXYZ<>!/\'`') + ["é", "\u2028",
                                                                              "\x00"])
model_text = st.one_of(st.text(max_size=300), st.text(_ALPHABET, max_size=300))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda ch: st.lists(ch, max_size=4) | st.dictionaries(st.text(max_size=8), ch, max_size=4),
    max_leaves=20)


# ---------------------------------------------------------------- extract_json
def nested(depth: int, kind: str = "obj") -> str:
    if kind == "obj":
        return '{"a": ' * depth + "1" + "}" * depth
    return '{"a": ' + "[" * depth + "]" * depth + "}"


@pytest.mark.parametrize("depth", [10 ** 3, 10 ** 5, 10 ** 6])
@pytest.mark.parametrize("kind", ["obj", "list"])
def test_deep_nesting_is_a_value_error_not_recursion(depth, kind):
    text = "Here you go: " + nested(depth, kind) + " done"
    with pytest.raises(ValueError, match="max_depth|max_chars"):
        extract_json(text, max_chars=10 ** 7)
    with pytest.raises(ValueError, match="max_chars|max_depth"):
        extract_json(text)


def test_nesting_at_the_limit_still_parses():
    obj = extract_json("x " + nested(MAX_JSON_DEPTH) + " y")
    for _ in range(MAX_JSON_DEPTH - 1):
        obj = obj["a"]
    assert obj == {"a": 1}
    assert extract_json('{"s": "[[[[{{{{" }', max_depth=1) == {"s": "[[[[{{{{"}


@FUZZ
@given(model_text)
def test_extract_json_only_raises_value_error(text):
    try:
        extract_json(text)
    except ValueError:
        pass


@FUZZ
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=5),
       st.text(st.characters(blacklist_characters="{}"), max_size=40),
       st.text(st.characters(blacklist_characters="{}"), max_size=40))
def test_extract_json_finds_an_embedded_object(obj, before, after):
    assert extract_json(before + json.dumps(obj) + after) == obj


@FUZZ
@given(json_values)
def test_json_depth_matches_the_structure(v):
    def depth(x):
        if isinstance(x, dict):
            return 1 + max((depth(y) for y in x.values()), default=0)
        if isinstance(x, list):
            return 1 + max((depth(y) for y in x), default=0)
        return 0
    assert json_depth(json.dumps(v)) == depth(v)


# ---------------------------------------------------------------- agents' text parsers
ADMISSIBLE = ["go north", "open fridge", "take red key from table", "look", "inventory"]


@FUZZ
@given(model_text, st.lists(st.text(min_size=1, max_size=20), max_size=6))
def test_match_action_returns_an_admissible_command_or_none(text, extra):
    adm = ADMISSIBLE + extra
    cmd, how = match_action(text, adm)
    assert how in ("exact", "contains", "fuzzy", "none")
    assert (cmd is None) == (how == "none")
    assert cmd is None or cmd in adm


@FUZZ
@given(st.sampled_from(ADMISSIBLE), st.sampled_from(["", "> ", "Action: ", "1. ", "- "]),
       st.sampled_from(["", ".", "\nbecause it is there", "!"]))
def test_match_action_reads_a_clean_command(cmd, pre, post):
    assert match_action(pre + cmd.upper() + post, ADMISSIBLE) == (cmd, "exact")


@FUZZ
@given(model_text, st.integers(1, 6), st.integers(1, 25))
def test_sanitize_tips_bounds(text, max_tips, max_words):
    tips = sanitize_tips(text, max_tips, max_words)
    assert len(tips) <= max_tips
    for t in tips:
        assert isinstance(t, str) and 3 <= len(t.split()) <= max_words and "\n" not in t
    keys = [re.sub(r"\W+", " ", t.lower()).strip() for t in tips]
    assert len(set(keys)) == len(keys)


TITLES = ["Toy Story (1995)", "Heat (1995)", "Alien (1979)", "Up (2009)"]


@FUZZ
@given(model_text, st.permutations(TITLES))
def test_parse_ranking_scores_are_a_partial_ranking(text, order):
    scores, matched = parse_ranking(text, TITLES)
    assert scores.shape == (len(TITLES),)
    ranked = scores[scores != -10000.0]
    assert len(ranked) == matched and len(set(ranked.tolist())) == matched
    assert set(ranked.tolist()) <= set(range(1, len(TITLES) + 1))
    # a clean numbered list of every title is read exactly
    clean = "\n".join(f"{i + 1}. {t}" for i, t in enumerate(order))
    s, m = parse_ranking(clean, TITLES)
    assert m == len(TITLES)
    assert [TITLES[j] for j in np.argsort(-s)] == list(order)


# ---------------------------------------------------------------- Luminate dimension parsers
@FUZZ
@given(json_values, st.sampled_from(["categorical", "ordinal"]))
def test_parse_dimensions_validates_or_raises_dimension_error(obj, kind):
    try:
        dims = L.parse_dimensions(obj, kind, 5 if kind == "ordinal" else None)
    except L.DimensionError:
        return
    for d in dims:
        assert d.kind == kind and len(set(d.values)) == len(d.values) >= 2
        assert all(isinstance(v, str) and 0 < len(v) <= 60 for v in d.values)
        assert kind != "ordinal" or len(d.values) == 5


@FUZZ
@given(model_text, st.integers(1, 8))
def test_read_entry_bounds(text, n):
    e = L.read_entry(text, n)
    if e is not None:
        name, vals = e
        assert isinstance(name, str) and len(vals) <= n and len(set(vals)) == len(vals)


@FUZZ
@given(model_text, st.sampled_from(["categorical", "ordinal"]))
def test_repair_and_abstraction_never_raise(text, kind):
    for d in L.repair_dimensions(text, kind, 5 if kind == "ordinal" else None):
        assert d.kind == kind
    a = L._valid_abstraction(text)
    assert a is None or (isinstance(a["Title"], str) and isinstance(a["Summary"], str)
                         and len(a["Key Words"]) <= 5)


def _hostile_backend(reply: str) -> ScriptedBackend:
    return ScriptedBackend(rules=[(".", lambda t: reply)])


@pytest.mark.parametrize("style", L.DIM_STYLES)
def test_deeply_nested_reply_falls_back_not_crashes(style):
    deep = nested(200_000)
    dims, stats = L.generate_dimensions(_hostile_backend(deep), "Write a slogan.", n_dims=2,
                                        retries=2, style=style)
    # library dimensions filled in (the library has one ordinal dimension)
    assert stats.valid == 0 and stats.filled == 3
    assert [d.name for d in dims] == ["Perspective", "Sentence form", "Length band"]
    abst, ast = L.abstract_responses(_hostile_backend(deep), ["a text"], retries=1)
    assert ast["valid"] == 0 and abst[0]["fallback"] is True


def test_luminate_run_survives_a_hostile_backend(tmp_path):
    reply = "I say " + nested(50_000) + " </script><!--<script>"
    res = L.run_luminate(_hostile_backend(reply), L.LuminateConfig(n=4, dim_retries=1,
                                                                   n_abstract=2), tmp_path)
    assert len(res["responses"]) == 4 and (tmp_path / "luminate.html").exists()


# ---------------------------------------------------------------- the page
HOSTILE = ["<!--<script>", "</script><script>window.PWNED=1</script>", "</SCRIPT >",
           "<img src=x onerror=window.PWNED=2>", "a & b < c > d \"q\" 'p'", "]]> \u2028 \u2029",
           "<!-- -->", "</textarea></style></title>"]


def _page(texts):
    dims = L.library_dims(["Perspective", "Sentence form"])
    resp = []
    for i, t in enumerate(texts):
        r = L.Response(i, t, {"Perspective": dims[0].values[i % 3],
                               "Sentence form": dims[1].values[i % 3]},
                       title=t, keywords=[t, "k"], summary=t)
        r.neighbours = [(i + 1) % len(texts)]
        resp.append(r)
    return L.render_html(HOSTILE[0], resp, dims, "Sentence form", "Perspective",
                         metrics={"note": HOSTILE[1]}), resp


class _Structure(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.scripts: list[str] = []
        self.cards = 0
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "script":
            self._in_script = True
            self.scripts.append("")
        if tag == "div" and a.get("class") == "card":
            self.cards += 1

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data


def test_page_structure_with_script_breaking_text():
    page, resp = _page(HOSTILE)
    p = _Structure()
    p.feed(page)
    assert p.tags.count("script") == 2 and "img" not in p.tags
    assert p.cards == len(HOSTILE)
    data_script = p.scripts[0]
    # nothing in the data can open or close a tag or a comment inside the script element
    assert "<" not in data_script and ">" not in data_script
    data = json.loads(data_script)
    assert [r["text"] for r in data["responses"]] == HOSTILE
    assert data["prompt"] == HOSTILE[0] and data["metrics"]["note"] == HOSTILE[1]
    assert p.scripts[1].startswith("\nconst D=JSON.parse")


@FUZZ
@given(st.lists(model_text, min_size=1, max_size=4))
def test_page_structure_fuzzed(texts):
    page, _ = _page(texts)
    p = _Structure()
    p.feed(page)
    assert p.tags.count("script") == 2 and p.cards == len(texts)
    assert [r["text"] for r in json.loads(p.scripts[0])["responses"]] == texts


def test_page_scripts_run_in_chromium(tmp_path):
    """The browser's view: the page's own script ran (it sets the zoom label), no injected
    element or script exists, and every card is there."""
    exe = L.find_chromium()
    if exe is None:
        pytest.skip("no Chromium on PATH (Debian: apt-get install -y chromium); the "
                    "structure test above covers the escaping statically")
    page, _ = _page(HOSTILE)
    path = tmp_path / "page.html"
    path.write_text(page, encoding="utf-8")
    out = subprocess.run([exe, "--headless", "--disable-gpu", "--no-sandbox", "--dump-dom",
                          path.as_uri()], capture_output=True, text=True, timeout=90)
    dom = out.stdout
    assert '<span id="zl">title</span>' in dom, dom[-2000:]
    assert dom.count('class="card"') == len(HOSTILE)
    assert "<img" not in dom and "PWNED=1</script>" not in dom.split("application/json")[0]
    assert dom.count("<script") == 2


# ---------------------------------------------------------------- counts
@pytest.mark.parametrize("override", ["n=0", "n=-3", "max_tokens=0", "dim_retries=0",
                                      "n_abstract=-1", "temperature=nan", "x_dim=Nope"])
def test_luminate_refuses_bad_counts_in_one_line(override, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.luminate", "--config=quick_test",
         "--backend=scripted", f"--override={override}", f"--workdir={tmp_path / 'w'}",
         "--noscreenshot"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and re.match(r"^([\w.]+: )?error: ", err[0]) and override.split("=")[0] in err[0]
    assert not (tmp_path / "w").exists()  # nothing ran, nothing written
