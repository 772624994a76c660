"""weights.load hands every caller fresh params; a ModelCache held by the caller shares them."""

import numpy as np
import pytest

from jaxlm.weights import ModelCache, WeightsError, load
from tests.robustness._model_files import write_tiny_gguf


@pytest.fixture(scope="module")
def gguf_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("registry") / "tiny.gguf"
    write_tiny_gguf(path)
    return path


def _leaf(m):
    return m.params["layers"][0]["mlp"]["w_down"]


def test_load_returns_fresh_params_each_call(gguf_path):
    a, b = load(gguf_path), load(gguf_path)
    assert a.params is not b.params and _leaf(a) is not _leaf(b)
    np.testing.assert_array_equal(_leaf(a), _leaf(b))
    before = np.array(_leaf(b))
    _leaf(a)[...] = 0.0  # one caller editing its weights in place ...
    np.testing.assert_array_equal(_leaf(b), before)  # ... never changes another caller's
    assert np.abs(before).max() > 0
    assert np.abs(_leaf(load(gguf_path))).max() > 0


def test_model_cache_is_held_by_the_caller(gguf_path):
    cache = ModelCache()
    a = cache.load(gguf_path)
    assert cache.load(str(gguf_path)) is a and len(cache) == 1
    h = cache.load(gguf_path, dtype="float16")
    assert h is not a and len(cache) == 2 and _leaf(h).dtype == np.float16
    other = ModelCache()
    assert other.load(gguf_path) is not a  # two caches never share params
    cache.clear()
    assert len(cache) == 0 and cache.load(gguf_path) is not a
    with pytest.raises(WeightsError, match="unknown weight dtype"):
        cache.load(gguf_path, dtype="int3")
