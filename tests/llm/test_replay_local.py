"""Cassette round trip; local scoring equals the substrate; white-box tier."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.core import MODELS, apply, init
from jaxlm.core.generate import score as core_score
from jaxlm.llm import CassetteMiss, GenConfig, ReplayBackend, ScriptedBackend
from jaxlm.llm.helpers import bootstrap_ci, choose, extract_json, match_action
from jaxlm.llm.local import ByteTokenizer, LocalBackend, bucket_len


@pytest.fixture(scope="module")
def tiny():
    cfg = MODELS.get("smollm2-135m_test")
    return LocalBackend(cfg=cfg, params=init(jax.random.PRNGKey(7), cfg),
                        tokenizer=ByteTokenizer(), name="tiny")


@pytest.mark.parametrize("preset", ["smollm2-135m_test", "gptj-tiny_test", "mpt-tiny_test",
                                    "cerebras-gpt-tiny_test"])
def test_scoring_equals_substrate_logprobs(preset):
    cfg = MODELS.get(preset)
    params = init(jax.random.PRNGKey(3), cfg)
    b = LocalBackend(cfg=cfg, params=params, tokenizer=ByteTokenizer())
    rng = np.random.default_rng(0)
    reqs = []
    for _ in range(3):  # several prefixes of different lengths, batched in one call
        pre = rng.integers(1, 256, rng.integers(5, 60)).tolist()
        conts = [rng.integers(1, 256, rng.integers(1, 9)).tolist()
                 for _ in range(rng.integers(1, 6))]
        reqs.append((pre, conts))
    got = b.score_ids_batch(reqs)
    for (pre, conts), g in zip(reqs, got, strict=True):
        tot, per = core_score(params, cfg, pre, conts)
        np.testing.assert_allclose([x.sum() for x in g], tot, rtol=1e-4, atol=1e-4)
        for a, c in zip(g, per, strict=True):
            np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-4)
    assert b.stats["score_calls"] == 1  # one jitted call for all three requests


def test_scoring_chunks_when_over_budget(tiny):
    small = LocalBackend(cfg=tiny.cfg, params=tiny.params, tokenizer=tiny.tokenizer,
                         max_tokens_per_call=64)
    reqs = [("prefix number %d" % i, ["a b", "c"]) for i in range(5)]
    a = small.score_many(reqs)
    b = tiny.score_many(reqs)
    assert small.stats["score_calls"] > 1
    for x, y in zip(a, b, strict=True):
        assert [r.sum_logprob for r in x] == pytest.approx([r.sum_logprob for r in y], abs=1e-4)


def test_bucket_len():
    assert [bucket_len(n, 8) for n in (1, 8, 9, 200, 257, 700)] == [8, 8, 16, 256, 512, 768]


def test_cassette_round_trip(tiny, tmp_path):
    path = tmp_path / "c.jsonl"
    rec = ReplayBackend(path, inner=tiny)
    msgs = [{"role": "user", "content": "hello"}]
    cfg = GenConfig(max_tokens=6, temperature=1.0, seed=1)
    a1 = rec.chat(msgs, cfg)
    a2 = rec.chat(msgs, GenConfig(max_tokens=6, temperature=1.0, seed=2))
    s1 = rec.score_many([("abc", ["d", "ef"]), ("xyz", ["w"])])
    c1 = rec.complete("once upon", GenConfig(max_tokens=5))
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["backend"] == "tiny" and len(lines) == 1 + 5
    rep = ReplayBackend(path)  # no model
    assert rep.chat(msgs, cfg) == a1
    assert rep.chat(msgs, GenConfig(max_tokens=6, temperature=1.0, seed=2)) == a2
    assert rep.score_many([("abc", ["d", "ef"]), ("xyz", ["w"])]) == s1
    assert rep.complete("once upon", GenConfig(max_tokens=5)) == c1
    with pytest.raises(CassetteMiss, match="no cassette entry for chat"):
        rep.chat(msgs, cfg)  # the single recorded copy was consumed
    with pytest.raises(CassetteMiss, match="score"):
        rep.score("abc", ["zzz"])
    with pytest.raises(FileNotFoundError, match="record it first"):
        ReplayBackend(tmp_path / "missing.jsonl")


def test_whitebox_forward_and_key_mask(tiny):
    rng = np.random.default_rng(1)
    ids = rng.integers(1, 256, (2, 12))
    out = tiny.forward(ids, capture=("attn_out", "resid_post"), layers=[1])
    assert out["acts"]["attn_out"][1].shape == (2, 12, tiny.cfg.d_model)
    assert set(out["acts"]["resid_post"]) == {1}
    ref = apply(tiny.params, tiny.cfg, jnp.asarray(ids)).logits
    np.testing.assert_allclose(out["logits"], ref, atol=1e-5)
    # masking key 3: changing token 3 leaves every other position's logits unchanged
    mask = np.ones((2, 12), bool)
    mask[:, 3] = False
    ids2 = ids.copy()
    ids2[:, 3] = (ids[:, 3] + 17) % 256
    a = np.asarray(tiny.forward(ids, key_mask=mask)["logits"])
    b = np.asarray(tiny.forward(ids2, key_mask=mask)["logits"])
    keep = [i for i in range(12) if i != 3]
    np.testing.assert_allclose(a[:, keep], b[:, keep], atol=1e-5)
    assert not np.allclose(np.asarray(out["logits"])[:, 5:], a[:, 5:], atol=1e-4)
    g1 = tiny.generate_ids(ids, key_mask=mask, cfg=GenConfig(max_tokens=5))
    g2 = tiny.generate_ids(ids2, key_mask=mask, cfg=GenConfig(max_tokens=5))
    assert g1 == g2 and all(len(g) <= 5 for g in g1)
    with pytest.raises(ValueError, match="key_mask"):
        tiny.forward(ids, key_mask=np.ones((2, 5), bool))


def test_editable_params(tiny):
    edited = jax.tree.map(lambda x: x, tiny.params)
    edited["final_norm"] = jax.tree.map(lambda x: x * 3.0, edited["final_norm"])
    b2 = tiny.with_params(edited)
    a = tiny.score("hello", ["world"])[0].sum_logprob
    c = b2.score("hello", ["world"])[0].sum_logprob
    assert a != pytest.approx(c)


def test_helpers():
    b = ScriptedBackend()
    i, vals = choose(b, "there is a coin here", ["take coin", "go west now"], norm="sum")
    assert i == 0 and vals.shape == (2,)
    i, _ = choose(b, "there is a coin here", ["take coin", "go west now"], norm="pmi")
    assert i == 0
    assert extract_json('blah {"a": [1, 2]} tail') == {"a": [1, 2]}
    with pytest.raises(ValueError):
        extract_json("no json")
    adm = ["go north", "take coin", "take coin from table", "look"]
    assert match_action("> Take coin.", adm) == ("take coin", "exact")
    assert match_action("I will take coin from table now", adm) == ("take coin from table",
                                                                    "contains")
    assert match_action("go nrth", adm) == ("go north", "fuzzy")
    assert match_action("dance", adm) == (None, "none")
    m, lo, hi = bootstrap_ci([0.0, 1.0, 1.0, 0.0, 1.0])
    assert lo <= m <= hi and m == pytest.approx(0.6)


def test_finer_scoring_buckets_compute_fewer_padded_tokens_with_the_same_scores(monkeypatch):
    import jaxlm.llm.local as local_mod

    cfg = MODELS.get("smollm2-135m_test")
    params = init(jax.random.PRNGKey(5), cfg)
    rng = np.random.default_rng(1)
    reqs = [(rng.integers(1, 256, rng.integers(125, 135)).tolist(),
             [rng.integers(1, 256, rng.integers(1, 5)).tolist() for _ in range(3)])
            for _ in range(5)]
    shapes = []
    real = local_mod.score_packed

    def spy(params, toks, *a, **kw):
        shapes.append(tuple(toks.shape))
        return real(params, toks, *a, **kw)

    monkeypatch.setattr(local_mod, "score_packed", spy)
    coarse = LocalBackend(cfg=cfg, params=params, tokenizer=ByteTokenizer(), memo_size=0)
    fine = LocalBackend(cfg=cfg, params=params, tokenizer=ByteTokenizer(), memo_size=0,
                        score_rows_multiple=3, score_len_multiple=32)
    a = coarse.score_ids_batch(reqs)
    b = fine.with_params(params).score_ids_batch(reqs)  # with_params keeps the buckets
    longest = max(len(p) + sum(map(len, cs)) for p, cs in reqs)
    assert 128 < longest <= 160
    assert shapes == [(8, 256), (6, 160)]  # 5 rows: 8 (a power of two) vs 6; 256 vs 160
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose([v.sum() for v in x], [v.sum() for v in y], rtol=1e-5,
                                   atol=1e-5)
    with pytest.raises(ValueError, match="score_len_multiple"):
        LocalBackend(cfg=cfg, params=params, tokenizer=ByteTokenizer(), score_len_multiple=0)
