"""bench_generate's pieces that need no model run: held-out text, flag lists, the optional
llama.cpp anchor."""

import pytest
from absl import app

from experiments.smollm2 import perf as bg  # bench_generate's flag-free pieces
from experiments import llamacpp_anchor


class _CharTokenizer:
    def encode(self, text, add_bos=None):
        assert add_bos is False
        return [ord(c) % 1000 for c in text]


def test_heldout_text_is_python_docs_and_deterministic():
    a = bg.heldout_tokens(_CharTokenizer(), 3000)
    b = bg.heldout_tokens(_CharTokenizer(), 3000)
    assert a == b and len(a) == 3000
    assert len(set(a)) > 30  # prose, not a constant


def test_format_and_anchor_lists():
    assert bg.parse_list("all", bg.ALL_FORMATS, "formats", ()) == bg.ALL_FORMATS
    assert bg.parse_list("", bg.ALL_FORMATS, "formats", ("q4_1",)) == ("q4_1",)
    assert bg.parse_list("none", bg.ALL_ANCHORS, "anchors", bg.ALL_ANCHORS) == ()
    assert bg.parse_list("q8_0, q4_1", bg.ALL_FORMATS, "formats", ()) == ("q8_0", "q4_1")
    with pytest.raises(app.UsageError, match="--formats: unknown"):
        bg.parse_list("q3_k", bg.ALL_FORMATS, "formats", ())


def test_llamacpp_anchor_is_optional():
    import importlib.util

    assert llamacpp_anchor.available() == (importlib.util.find_spec("llama_cpp") is not None)


def test_int8_activation_format_names():
    from experiments.smollm2.perf import ALL_FORMATS, split_format

    assert split_format("q4_1") == ("q4_1", 16) and split_format("q4_1-a8") == ("q4_1", 8)
    assert split_format("float32") == ("float32", 16) and "q4_1-a8" in ALL_FORMATS
