import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.core import MODELS, apply, init
from jaxlm.interpret import attention, faithfulness, lens, probes


def _causal(rng, layers, t):
    a = np.tril(rng.random((layers, t, t)) + 0.1)
    return a / a.sum(-1, keepdims=True)


def test_rollout_on_hand_made_attention():
    # one layer: R = 0.5 A + 0.5 I
    a = np.array([[[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]]])
    r = attention.rollout(a)
    np.testing.assert_allclose(r, 0.5 * a[0] + 0.5 * np.eye(3))
    rng = np.random.default_rng(0)
    heads = rng.random((3, 2, 4, 4)) * np.tril(np.ones((4, 4)))
    heads /= heads.sum(-1, keepdims=True)
    mean = heads.mean(1)
    ref = np.eye(4)
    for layer in mean:
        m = 0.5 * layer + 0.5 * np.eye(4)
        ref = m @ ref
    np.testing.assert_allclose(attention.rollout(heads), ref, rtol=1e-12)
    np.testing.assert_allclose(attention.rollout(heads).sum(-1), 1.0)
    with pytest.raises(ValueError, match="attn must be"):
        attention.rollout(np.ones((2, 3)))


def test_flow_on_hand_made_attention():
    rng = np.random.default_rng(1)
    a = _causal(rng, 1, 4)
    m = 0.5 * a[0] + 0.5 * np.eye(4)
    # single layer: the flow from j to the last output is the one edge's capacity
    np.testing.assert_allclose(attention.flow(a), m[-1], atol=1e-5)
    # two layers, path graph: flow(j) = min-cut of the two-hop paths j -> i -> 3
    a2 = _causal(rng, 2, 3)
    m2 = 0.5 * a2 + 0.5 * np.eye(3)[None]
    fl = attention.flow(a2, query=2)
    # token 0 reaches output 2 through i = 0, 1, 2 (disjoint paths): sum of min(capacities)
    ref0 = sum(min(m2[0, i, 0], m2[1, 2, i]) for i in range(3))
    assert fl[0] == pytest.approx(ref0, abs=1e-5)


def test_attention_maps_and_logit_lens():
    cfg = MODELS.get("smollm2-135m_test")
    params = init(jax.random.PRNGKey(0), cfg)
    toks = np.array([9, 8, 7, 6, 5])
    maps = attention.attention_maps(params, cfg, toks)
    assert maps.shape == (cfg.n_layers, cfg.n_heads, 5, 5)
    np.testing.assert_allclose(maps.sum(-1), 1.0, rtol=1e-5)
    assert np.all(np.triu(maps, 1) == 0)
    lp = lens.logit_lens(params, cfg, toks)
    ref = jax.nn.log_softmax(apply(params, cfg, jnp.asarray(toks)[None]).logits[0, -1])
    np.testing.assert_allclose(lp[-1], np.asarray(ref), atol=1e-5)
    assert lp.shape == (cfg.n_layers + 1, cfg.vocab_size)
    assert not np.allclose(lp[0], lp[-1], atol=1e-3)


def test_logistic_probe_matches_sklearn():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)) * np.array([1, 2, 3, 0.5, 1, 1]) + 1.0
    y = (x @ rng.normal(size=6) + rng.normal(size=200) > 1.0).astype(float)
    probe = probes.fit_logistic(x, y, l2=2.0)
    z = StandardScaler().fit_transform(x)
    sk = LogisticRegression(C=0.5, tol=1e-10, max_iter=10000).fit(z, y)
    np.testing.assert_allclose(np.asarray(probe.w), sk.coef_[0], rtol=1e-3, atol=1e-4)
    assert float(probe.b) == pytest.approx(sk.intercept_[0], rel=1e-3, abs=1e-4)
    # per-layer vmap gives the same as one-at-a-time
    xl = np.stack([x, x[:, ::-1] * 2.0])
    pl = probes.fit_logistic_layers(xl, y, l2=2.0)
    np.testing.assert_allclose(np.asarray(pl.w[0]), np.asarray(probe.w), rtol=1e-4, atol=1e-6)
    acc = probes.accuracy(probes.predict_logit(pl, xl), y)
    assert acc.shape == (2,) and acc[0] == pytest.approx(acc[1]) and acc[0] > 0.8
    assert probes.auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    with pytest.raises(ValueError, match="labels"):
        probes.fit_logistic(x, y * 2)


def test_neuron_stats():
    cfg = MODELS.get("llama-20m_test")
    params = init(jax.random.PRNGKey(1), cfg)
    toks = np.arange(24).reshape(2, 12) + 3
    st = probes.neuron_stats(params, cfg, toks, top_k=3)
    assert st["mean"].shape == (cfg.n_layers, cfg.d_ff)
    assert st["top_index"].shape == (cfg.n_layers, cfg.d_ff, 3)
    # recompute layer 0 neuron 5 directly
    store = {}

    def hook(s, layer, act):
        if s == "mlp_hidden":
            store[layer] = act
        return act

    apply(params, cfg, jnp.asarray(toks), intervene=hook)
    a = np.asarray(store[0]).reshape(-1, cfg.d_ff)[:, 5]
    assert st["mean"][0, 5] == pytest.approx(a.mean(), rel=1e-4, abs=1e-7)
    assert st["max"][0, 5] == pytest.approx(a.max(), rel=1e-5)
    assert st["top_index"][0, 5, 0] == int(np.argmax(a))


def test_faithfulness_on_hand_made_predictor():
    # f(x) = sum of weights of tokens that are not the filler (0); argmax = 1 if f > 1.5
    wt = {0: 0.0, 1: 1.0, 2: 0.5, 3: 0.25, 4: 0.125}

    def predict(batch):
        f = np.array([sum(wt[int(t)] for t in row) for row in batch])
        return f, (f > 1.5).astype(int)

    toks = np.array([4, 1, 3, 2])
    scores = np.array([0.1, 0.9, 0.3, 0.5])  # ranks 1, 2, 3, 4 (ids)
    out = faithfulness.faithfulness_fn(predict, toks, scores, ks=(1, 2), filler_id=0)
    total = 1.875
    assert out["p"] == total
    assert out["comp@1"] == pytest.approx(1.0)
    assert out["comp@2"] == pytest.approx(1.5)
    assert out["suff@1"] == pytest.approx(total - 1.0)
    assert out["suff@2"] == pytest.approx(total - 1.5)
    assert out["aopc_comp"] == pytest.approx(1.25)
    assert out["flip"] == 1.0
    # keep_mask: token 1 never erased -> top-1 becomes token id 2
    out = faithfulness.faithfulness_fn(predict, toks, scores, ks=(1,), filler_id=0,
                                       keep_mask=np.array([0, 1, 0, 0], bool))
    assert out["comp@1"] == pytest.approx(0.5) and out["flip"] == 1.0
    pl = faithfulness.plausibility(scores, np.array([0, 1, 1, 0], bool))
    assert pl["hit@1"] == 1.0 and pl["f1"] == pytest.approx(0.5)
    assert pl["iou"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="k="):
        faithfulness.faithfulness_fn(predict, toks, scores, ks=(9,), filler_id=0)


def test_faithfulness_on_model_runs():
    cfg = MODELS.get("smollm2-135m_test")
    params = init(jax.random.PRNGKey(2), cfg)
    toks = np.array([3, 4, 5, 6, 7, 8])
    out = faithfulness.faithfulness(params, cfg, toks, 9, np.arange(6.0), filler_id=0, ks=(1, 3))
    lg = apply(params, cfg, jnp.asarray(toks)[None]).logits[0, -1]
    assert out["p"] == pytest.approx(float(jax.nn.softmax(lg)[9]), rel=1e-5)
    t2 = toks.copy()
    t2[5] = 0
    p2 = float(jax.nn.softmax(apply(params, cfg, jnp.asarray(t2)[None]).logits[0, -1])[9])
    assert out["comp@1"] == pytest.approx(out["p"] - p2, rel=1e-4, abs=1e-8)
