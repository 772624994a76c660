"""Tests for jaxlm.agents.recsys (data, splits, candidates, metrics, prompting, baselines)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from jaxlm.agents.recsys import (
    DataFormatError, DemoPool, ItemKNN, Markov, PromptConfig, SynthConfig, build_prompt,
    generate_synthetic, leave_one_out, load_ml1m, load_recbole, make_candidates, parse_ranking,
    random_floor, rank_metrics, scramble_titles, score_candidates, write_ml1m)
from jaxlm.agents.recsys.data import clean_title
from jaxlm.llm import ScriptedBackend

SMALL = SynthConfig(n_users=80, n_items=96, min_len=8, max_len=16, seed=3)


@pytest.fixture(scope="module")
def data():
    return generate_synthetic(SMALL)


@pytest.fixture(scope="module")
def split(data):
    return leave_one_out(data)


def _ref_metrics(scores, gt, k):
    order = sorted(range(len(scores)), key=lambda j: -scores[j])
    r = order.index(gt)
    return float(r < k), (1.0 / np.log2(r + 2) if r < k else 0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rank_metrics_match_reference(seed):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=20)
    gt = int(rng.integers(20))
    m = rank_metrics(s, gt, (1, 5, 10))
    for k in (1, 5, 10):
        hr, ndcg = _ref_metrics(list(s), gt, k)
        assert m[f"HR@{k}"] == hr
        assert m[f"NDCG@{k}"] == pytest.approx(ndcg)


def test_ties_give_random_floor():
    f = random_floor(20)
    assert f["HR@1"] == pytest.approx(0.05) and f["HR@5"] == pytest.approx(0.25)
    assert f["NDCG@5"] == pytest.approx(np.mean([1 / np.log2(r + 2) if r < 5 else 0
                                                 for r in range(20)]))
    with pytest.raises(ValueError, match="empty candidate"):
        rank_metrics([], 0)


def test_clean_title():
    assert clean_title("Matrix, The (1999)") == ("The Matrix", 1999)
    assert clean_title("Heat (1995)") == ("Heat", 1995)


def test_ml1m_roundtrip_and_errors(tmp_path, data):
    root = write_ml1m(data, tmp_path / "ml")
    back = load_ml1m(root)
    assert back.sequences == data.sequences
    assert back.titles == data.titles
    assert (root / "users.dat").exists()
    with pytest.raises(DataFormatError, match=r"movies\.dat.*MovieID::Title"):
        load_ml1m(tmp_path / "nowhere")
    (root / "ratings.dat").write_text("1::2::5::100\n1;3;4;200\n")
    with pytest.raises(DataFormatError, match=r"ratings\.dat line 2.*UserID::MovieID"):
        load_ml1m(root)


def test_recbole_formats(tmp_path):
    (tmp_path / "lastfm.item").write_text("item_id:token\tartist_name:token_seq\na\tBeatles\n"
                                          "b\tBlur\nc\tCan\n")
    (tmp_path / "lastfm.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n"
                                           "u1\tb\t2\nu1\ta\t1\nu1\tc\t3\n")
    d = load_recbole(tmp_path, "lastfm")
    assert d.domain == "music"
    assert [d.titles[i] for i in d.sequences[1]] == ["Beatles", "Blur", "Can"]
    (tmp_path / "Games.item").write_text("item_id:token\ttitle:token_seq\nx\tZelda\ny\tMario\n")
    (tmp_path / "Games.test.inter").write_text(
        "user_id:token\titem_id_list:token_seq\titem_id:token\n7\tx y\tx\n")
    g = load_recbole(tmp_path, "Games")
    assert g.domain == "game" and [g.titles[i] for i in g.sequences[1]] == ["Zelda", "Mario",
                                                                             "Zelda"]
    (tmp_path / "bad.item").write_text("item_id:token\ttitle:token_seq\nx\n")
    with pytest.raises(DataFormatError, match=r"bad\.item line 2"):
        load_recbole(tmp_path, "bad")


def test_generator_structure(data):
    w = data.world
    stay = seq_pairs = sequel = sequel_opp = 0
    for seq in data.sequences.values():
        for a, b in zip(seq[:-1], seq[1:], strict=True):
            seq_pairs += 1
            stay += w.item_genre[a - 1] == w.item_genre[b - 1]
            s = w.next_sequel[a - 1]
            if s >= 0 and (s + 1) not in seq[: seq.index(b)]:
                sequel_opp += 1
                sequel += b == s + 1
    assert stay / seq_pairs > 0.5  # vs 1/8 without structure
    assert sequel_opp > 0 and sequel / sequel_opp > 0.3
    p = w.next_probs(0, [0, 1])
    assert p.sum() == pytest.approx(1.0) and p[0] == 0 and p[1] == 0
    s = scramble_titles(data)
    assert s.sequences == data.sequences and all(s.titles[i] != data.titles[i] for i in s.titles)


def test_split_and_candidates(data, split):
    u = split.users[0]
    seq = data.sequences[u]
    assert split.test[u] == seq[-1] and split.valid[u] == seq[-2]
    assert split.train[u] == seq[:-2] and split.test_hist[u] == seq[:-1]
    c, g = make_candidates(data, split.test[u], split.test_hist[u], 20,
                           np.random.default_rng(0))
    assert len(c) == len(set(c)) == 20 and c[g] == split.test[u]
    assert not set(c) & (set(split.test_hist[u]) - {split.test[u]})
    with pytest.raises(ValueError, match="n_candidates"):
        make_candidates(data, split.test[u], [], 1)
    with pytest.raises(ValueError, match="negatives"):
        make_candidates(data, split.test[u], [], 500)


def test_aggregated_demo_interleaves_most_recent(data, split):
    pool = DemoPool(data, split, PromptConfig("aggregated", k=2))
    u1, u2 = pool.users[:2]
    d = pool.aggregated_demo([u1, u2])
    h1, h2 = split.train[u1][-10:], split.train[u2][-10:]
    expect = []
    for t in range(25):
        for h in (h1, h2):
            if len(h) - 1 - t >= 0:
                expect.append(h[len(h) - 1 - t])
    assert d.history == expect[::-1]
    assert d.answer[:2] == [split.valid[u1], split.valid[u2]]
    assert sorted(d.answer) == sorted(d.candidates) and len(d.candidates) == 20
    # most recent items everywhere; the repo toggle reproduces the oldest-items bug
    long = next(v for v in pool.users if len(split.train[v]) > 10)
    assert pool.single_demo(long).history == split.train[long][-10:]
    bug = DemoPool(data, split, PromptConfig("nearest", repo_faithful=True))
    assert bug.single_demo(long).history == split.train[long][:10]


def test_similarity_selection_excludes_self(data, split):
    pool = DemoPool(data, split, PromptConfig("nearest", k=3))
    u = pool.users[5]
    sel = pool.select(u, split.train[u], "nearest", 3)
    assert u not in sel and len(sel) == 3
    v = pool.users[9]  # a different user with u's exact recent history is found first
    assert pool.similar(-1, split.train[v], 1) == [v]
    assert pool.select(u, [], "zero", 1) == []
    rec = pool.select(u, [], "recency", 4)  # latest validation interactions, self excluded
    vt = sorted((data.times[v][-2] for v in pool.users if v != u), reverse=True)
    assert [data.times[v][-2] for v in rec] == vt[:4] and u not in rec
    r1, r2 = pool.select(u, [], "random", 3), pool.select(u, [], "random", 3)
    assert r1 == r2 and len(set(r1)) == 3 and u not in r1  # seeded per user
    assert len(pool.demos_for(u, split.train[u])) == 3
    with pytest.raises(ValueError, match="strategy"):
        PromptConfig("nope")


def test_prompt_and_scoring(data, split):
    u = split.users[1]
    c, g = make_candidates(data, split.test[u], split.test_hist[u], 20,
                           np.random.default_rng(1))
    pool = DemoPool(data, split, PromptConfig("nearest", k=1))
    p = build_prompt(data, split.test_hist[u][-10:], c, pool.demos_for(u, split.test_hist[u]))
    assert p.startswith("Demonstration Examples:") and p.endswith("Answer:\n")
    assert "John's Movie Profile" in p and f"'0. {data.titles[c[0]]}'" in p
    target = data.titles[c[g]]
    b = ScriptedBackend(scorer=lambda pre, cont: -1.0 if "John" in pre and cont.strip() == target
                        else -5.0 - 0.1 * len(cont))
    v = score_candidates(b, p, [data.titles[i] for i in c])
    assert all(int(np.argmax(v[k])) == g for k in ("sum", "mean", "pmi"))
    assert rank_metrics(v["pmi"], g)["NDCG@1"] == 1.0
    with pytest.raises(ValueError, match="empty"):
        score_candidates(b, p, [])
    with pytest.raises(ValueError, match="empty"):
        build_prompt(data, [1], [])


def test_parse_ranking():
    titles = ["Heat", "Toy Story", "Alien"]
    s, n = parse_ranking("1. Toy Story\n2. Something else\n3. heat\n", titles)
    assert n == 2 and list(s) == [2.0, 3.0, -10000.0]


def test_classic_baselines_beat_random(data, split):
    knn, mk = ItemKNN(split, max(data.titles)), Markov(split)
    res = {"knn": [], "markov": []}
    for u in split.users:
        c, g = make_candidates(data, split.test[u], split.test_hist[u], 20,
                               np.random.default_rng(u))
        res["knn"].append(rank_metrics(knn.score(split.test_hist[u], c), g)["NDCG@10"])
        res["markov"].append(rank_metrics(mk.score(split.test_hist[u], c), g)["NDCG@10"])
    floor = random_floor(20)["NDCG@10"]
    assert np.mean(res["knn"]) > floor + 0.1 and np.mean(res["markov"]) > floor + 0.05


def test_experiment_scripted(tmp_path):
    from experiments.llmsrec.experiment import QUICK, run_experiment

    cfg = dataclasses.replace(QUICK, synth=SMALL, n_test=6, sasrec_steps=0,
                              methods=("zero", "aggregated:2"), scrambled_methods=("zero",))
    res = run_experiment(ScriptedBackend(), cfg, tmp_path)
    names = [r["method"] for r in res["table"]]
    assert names == ["random", "popularity", "markov", "item-kNN", "oracle", "zero",
                     "aggregated:2", "zero (scrambled)"]
    by = {r["method"]: r for r in res["table"]}
    assert by["random"]["NDCG@10"] == pytest.approx(random_floor(10)["NDCG@10"])
    assert by["aggregated:2"]["prompt tokens"] > by["zero"]["prompt tokens"]
    assert (tmp_path / "llmsrec_syn.json").exists() and (tmp_path / "llmsrec_ndcg10.png").exists()
    # methods on a user subset are paired with the full-set methods on the common users
    cfg = dataclasses.replace(cfg, methods=("zero",), subset_methods=("nearest:1",),
                              n_subset_users=3, scrambled_methods=())
    res = run_experiment(ScriptedBackend(), cfg, tmp_path)
    by = {r["method"]: r for r in res["table"]}
    assert by["zero"]["n"] == 6 and by["nearest:1"]["n"] == 3
    assert "nearest:1 - zero" in res["paired"] and (tmp_path / "partial.json").exists()


def test_sasrec_learns(split, data):
    from jaxlm.agents.recsys.sasrec import SASRecConfig, train_sasrec

    m = train_sasrec(split, max(data.titles), SASRecConfig(max_len=8, d_model=32, n_layers=1,
                                                           batch=32, steps=25, lr=1e-2))
    assert np.mean(m.losses[-5:]) < np.mean(m.losses[:5]) - 0.3
    u = split.users[0]
    s = m.score(split.test_hist[u], [1, 2, 3])
    assert s.shape == (3,) and np.isfinite(s).all()


@pytest.fixture(scope="module")
def tiny_local():
    import jax

    from jaxlm.core import MODELS, init
    from jaxlm.llm.local import ByteTokenizer, LocalBackend

    cfg = MODELS.get("smollm2-135m_test")
    return LocalBackend(cfg=cfg, params=init(jax.random.PRNGKey(0), cfg),
                        tokenizer=ByteTokenizer(), name="tiny")


@pytest.mark.parametrize("rows,min_shared,engine", [(2, 8, "core"), (1, 10**6, "core"),
                                                    (2, 8, "fast"), (1, 10**6, "fast"),
                                                    (2, 8, "fast-bf16")])
def test_rec_scorer_matches_plain_scoring(tiny_local, rows, min_shared, engine):
    """Packed rows, the shared-prefix KV cache (broadcast to the rows) and padding give the
    same log-probs as scoring each (prompt, continuation) on its own; the fast engine
    (layer scan, block-causal chunks of 16 slots so rows span several chunks) also matches
    ``jaxlm.core.generate.score``."""
    from jaxlm.agents.recsys.scoring import RecScorer
    from jaxlm.core.generate import score

    rng = np.random.default_rng(rows)
    demo = "Demo: the user liked " + " ".join(rng.choice(list("abcdefgh"), 12)) + ".\n"
    prompts = [demo + f"John watched {i} {'xyz'[: 1 + i % 3]}.\nAnswer:\n1." for i in range(5)]
    prompts.append("Other prompt\n1.")  # its own group: no shared prefix with the rest
    conts = [[f" T{j}{'q' * int(rng.integers(1, 5))}\n" for j in range(int(rng.integers(1, 4)))]
             for _ in prompts]
    bf16 = engine == "fast-bf16"  # bf16 matmul inputs (f32 accumulation): looser tolerance
    dt = "bfloat16" if bf16 else "float32"
    sc = RecScorer.from_backend(tiny_local, rows=rows, len_step=32, min_shared=min_shared,
                                engine=engine[:4], chunk=16, row_buckets=rows == 1,
                                mm_dtype=dt, attn_dtype=dt)
    out = sc.score(prompts, conts, groups=[0] * 5 + [1])
    refs = tiny_local.score_many(list(zip(prompts, conts, strict=True)))
    tol = 2e-2 if bf16 else 1e-4
    for i, (ref, (s, n), p, cs) in enumerate(zip(refs, out, prompts, conts, strict=True)):
        np.testing.assert_allclose(s, [r.sum_logprob for r in ref], rtol=tol, atol=tol)
        assert list(n) == [r.n_tokens for r in ref]
        if engine != "core" and i in (4, 5):  # a shared-prefix row and the outlier
            tok = tiny_local.tokenizer
            gs, _ = score(tiny_local.params, tiny_local.cfg, tok.encode(p, add_bos=None),
                          [tok.encode(c, add_bos=None) for c in cs])
            np.testing.assert_allclose(s, gs, rtol=tol, atol=tol)
    if min_shared < 100:
        assert sc.stats.shared_saved == (len(demo) + len("John watched ")) * 4
    with pytest.raises(ValueError, match="need >= 1 token"):
        sc.score(["p"], [[]])
