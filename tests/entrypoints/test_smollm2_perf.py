"""experiments.smollm2.perf: decode timed through core.generate (prefill excluded)."""

import jax
import pytest

from experiments.smollm2 import perf
from jaxlm.core import MODELS, init


@pytest.fixture(scope="module")
def tiny():
    cfg = MODELS.get("smollm2-135m_test")
    return cfg, init(jax.random.PRNGKey(0), cfg)


def test_measure_decode_times_core_generate_minus_prefill(tiny, monkeypatch):
    """Decode time = t(generate n+1 tokens) - t(generate 1 token): a fake generate that
    sleeps 5 ms + 10 ms per token gives 10 ms per step whatever the constant part
    (the band allows a few ms of scheduler jitter on a loaded machine)."""
    import time

    cfg, params = tiny
    calls = []
    real = perf.gen.generate

    def fake(p, c, prompts, *, max_new_tokens):
        calls.append((len(prompts), len(prompts[0]), max_new_tokens))
        time.sleep(0.005 + 0.010 * max_new_tokens)
        return real(p, c, prompts, max_new_tokens=1).tokens

    monkeypatch.setattr(perf.gen, "generate", fake)
    r = perf.measure_decode(params, cfg, batch=2, prompt_len=16, new_tokens=10, repeats=3)
    assert {c[2] for c in calls} == {1, 11} and all(c[:2] == (2, 16) for c in calls)
    assert 8.5 <= r["ms_per_step"] <= 13.0
    assert r["tok_s"] == pytest.approx(2 * 1000 / r["ms_per_step"], rel=1e-9)


def test_measure_decode_rejects_zero_new_tokens(tiny):
    cfg, params = tiny
    with pytest.raises(ValueError, match="new_tokens must be >= 1"):
        perf.measure_decode(params, cfg, batch=1, prompt_len=16, new_tokens=0)


def test_hf_anchor_is_outside_the_library():
    import pathlib

    import jaxlm

    root = pathlib.Path(jaxlm.__file__).parent
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if any(s in p.read_text() for s in ("import torch", "from transformers",
                                                     "import transformers"))]
    assert offenders == ["offload/hive.py"], offenders
