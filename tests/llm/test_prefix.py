"""Prompt-prefix KV reuse: cached scoring equals uncached substrate scoring."""

import jax
import numpy as np
import pytest

from jaxlm.core import MODELS, init
from jaxlm.core.generate import score as core_score
from jaxlm.llm.local import ByteTokenizer, LocalBackend
from jaxlm.llm.prefix import PrefixScorer


@pytest.fixture(scope="module")
def model():
    cfg = MODELS.get("smollm2-135m_test")
    return cfg, init(jax.random.PRNGKey(11), cfg)


def _check(params, cfg, reqs, got):
    for (pre, conts), g in zip(reqs, got, strict=True):
        tot, per = core_score(params, cfg, list(pre), [list(c) for c in conts])
        np.testing.assert_allclose([x.sum() for x in g], tot, rtol=1e-4, atol=1e-4)
        for a, c in zip(g, per, strict=True):
            np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-4)


def test_cached_scores_equal_uncached_over_appended_steps(model):
    """Two 'games' whose prompts grow by (action, observation) turns, each step with a
    per-step tail (dropped next step) and random candidates; then a truncated history
    (re-encode), and a third unrelated prompt that must evict the least recently used."""
    cfg, params = model
    rng = np.random.default_rng(0)
    sc = PrefixScorer(params, cfg, n_slots=2, capacity=256, min_reuse=4)
    heads = [rng.integers(1, 256, 20), rng.integers(1, 256, 27)]
    hist = [list(h) for h in heads]
    turns: list[list[np.ndarray]] = [[], []]

    def step(g):
        turn = rng.integers(1, 256, rng.integers(3, 12))
        turns[g].append(turn)
        hist[g] += turn.tolist()
        tail = rng.integers(1, 256, rng.integers(2, 6)).tolist()  # "valid actions" tail
        conts = [rng.integers(1, 256, rng.integers(1, 5)).tolist() for _ in range(3)]
        return (hist[g] + tail, conts)

    for _ in range(3):
        reqs = [step(1), step(0)]  # order differs from the rows' order
        _check(params, cfg, reqs, sc.score(reqs))
    assert sc.stats["reused_tokens"] > sc.stats["new_tokens"] * 0.5
    reencodes = sc.stats["reencodes"]
    # truncation: game 0 keeps its head and only its last turn (sliding history)
    hist[0] = heads[0].tolist() + turns[0][-1].tolist()
    reqs = [step(0), step(1)]
    _check(params, cfg, reqs, sc.score(reqs))
    sc.score([step(1)])  # game 0's row is now the least recently used
    # a new prompt sharing nothing replaces the least recently used row
    other = (rng.integers(1, 256, 40).tolist(), [[5, 6], [7]])
    _check(params, cfg, [other], sc.score([other]))
    assert sc.stats["reencodes"] >= reencodes + 1
    reqs = [step(1)]  # game 1's row survived
    before = sc.stats["new_tokens"]
    _check(params, cfg, reqs, sc.score(reqs))
    assert sc.stats["new_tokens"] - before < len(reqs[0][0]) // 2
    assert sc.stats["compiles"] <= 6
    with pytest.raises(ValueError, match="n_slots"):
        sc.score([other, other, other])


def test_local_backend_prefix_path_matches_plain(model):
    cfg, params = model
    tok = ByteTokenizer()
    plain = LocalBackend(cfg=cfg, params=params, tokenizer=tok, memo_size=0)
    cached = LocalBackend(cfg=cfg, params=params, tokenizer=tok, prefix_slots=3,
                          prefix_capacity=256, prefix_min_tokens=16)
    prompt = "In a kitchen. "
    for k in range(3):
        prompt += f"> e\nRoom {k}. "
        reqs = [(prompt + "Valid: e, look", ["e", "look", "take coin"]),
                ("short", ["a", "b"])]  # short prefix: plain packed path
        a, b = plain.score_many(reqs), cached.score_many(reqs)
        for x, y in zip(a, b, strict=True):
            assert [r.n_tokens for r in x] == [r.n_tokens for r in y]
            np.testing.assert_allclose([r.sum_logprob for r in x],
                                       [r.sum_logprob for r in y], rtol=1e-4, atol=1e-4)
    assert cached.prefix.stats["requests"] == 3
    assert cached.prefix.stats["reused_tokens"] > 0
    hits = cached.stats["memo_hits"]
    again = cached.score_many(reqs + reqs[:1])  # identical requests come from the memo
    assert cached.stats["memo_hits"] == hits + 3 and len(again) == 3
    assert [r.sum_logprob for r in again[2]] == [r.sum_logprob for r in again[0]]
    fresh = [("A new room. Valid: e, w", ["e", "w"])] * 2  # repeated within one call
    both = cached.score_many(fresh)
    assert cached.stats["memo_hits"] == hits + 4
    assert [r.sum_logprob for r in both[0]] == [r.sum_logprob for r in both[1]]
    assert [r.sum_logprob for r in again[0]] == [r.sum_logprob for r in b[0]]
