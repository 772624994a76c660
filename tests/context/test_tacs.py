import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.context import data as D
from jaxlm.context import detect, metrics, select
from jaxlm.core import MODELS, apply, init
from jaxlm.core.generate import generate
from tests._reference import greedy_by_full_recompute


@pytest.fixture(scope="module")
def model():
    cfg = MODELS.get("smollm2-135m_test")
    params = init(jax.random.PRNGKey(0), cfg)
    params = jax.tree.map(lambda x: x * 3.0 if x.ndim >= 2 else x, params)  # sharper attention
    return cfg, params


@pytest.mark.parametrize("mode", ["keep", "compress"])
def test_mask_removes_span_exactly(model, mode):
    cfg, params = model
    rng = np.random.default_rng(0)
    toks = rng.integers(1, cfg.vocab_size, (2, 12)).astype(np.int32)
    drop = np.zeros((2, 12), bool)
    drop[0, 3:6] = True
    drop[1, 7:9] = True
    pos, bias = select.masked_inputs(np.tile(np.arange(12), (2, 1)), drop, mode)
    logits, _ = select.forward(params, cfg, toks, pos, bias)
    for b in range(2):
        keep = ~drop[b]
        kept_pos = np.arange(12)[keep] if mode == "keep" else np.arange(keep.sum())
        ref = apply(params, cfg, jnp.asarray(toks[b, keep])[None],
                    positions=jnp.asarray(kept_pos)[None]).logits[0, -1]
        np.testing.assert_allclose(np.asarray(logits[b]), np.asarray(ref), atol=2e-5, rtol=1e-5)
    full, _ = select.forward(params, cfg, toks, np.tile(np.arange(12), (2, 1)))
    assert not np.allclose(np.asarray(full), np.asarray(logits), atol=1e-3)


def test_masked_greedy_equals_deleting_the_span(model):
    cfg, params = model
    ids = [5, 9, 13, 200, 201, 202, 17, 33, 41]
    drop = np.zeros(len(ids), bool)
    drop[3:6] = True
    kept = [t for t, d in zip(ids, drop, strict=True) if not d]
    ref = generate(params, cfg, [kept], max_new_tokens=6, key=jax.random.PRNGKey(0))
    out = select.masked_greedy(params, cfg, ids, drop, max_new_tokens=6, mode="compress")
    assert out == [int(x) for x in np.asarray(ref.tokens[0])]
    # keep mode: greedy by full recomputation with the original (gapped) positions
    pos = [i for i in range(len(ids)) if not drop[i]]
    want = greedy_by_full_recompute(params, cfg, kept, 6, positions=pos)
    out = select.masked_greedy(params, cfg, ids, drop, max_new_tokens=6, mode="keep")
    assert out == want
    with pytest.raises(ValueError, match="position mode"):
        select.masked_inputs(np.zeros((1, 3), int), np.zeros((1, 3), bool), "delete")


def test_ta_ur_da_on_hand_made_table():
    origin = [True, True, True, True, False, False, False]
    correct = [True, False, True, True, True, False, False]
    m = metrics.ta_ur_da(origin, correct, n_boot=200)
    assert m["UR"] == pytest.approx(0.75) and m["TA"] == pytest.approx(1 / 3)
    assert m["DA"] == pytest.approx((0.75 + 1 / 3) / 2)
    assert m["n_ta"] == 3 and m["n_ur"] == 4
    assert m["DA_lo"] <= m["DA"] <= m["DA_hi"]
    # "always trust context" vs "ignore context" both score 0.5 in the right setting
    assert metrics.ta_ur_da([True, False], [False, True])["DA"] == pytest.approx(0.5)
    pr = metrics.mask_precision_recall([1, 1, 0, 0], [1, 0, 1, 0])
    assert pr == {"precision": 0.5, "recall": 0.5}
    with pytest.raises(ValueError, match="equal shape"):
        metrics.ta_ur_da([True], [True, False])


def test_smoothing_and_detector_on_synthetic_features():
    assert detect.smooth_forward(np.array([0, 0, 1, 1, 1, 0, 0]), 3).tolist() == [
        False, True, True, True, False, False, False]
    assert detect.smooth_forward(np.array([1, 0]), 1).tolist() == [True, False]
    rng = np.random.default_rng(0)
    fact = D.Fact("X", "Y", "Z", 1, 2)

    def make(label):
        p = D.Prompt(tuple(range(10)), ((1, 5), (5, 9)), (label, 1 - label), (3, 7), fact)
        f = rng.normal(size=(4, 10, 8)).astype(np.float32)
        lab, w = p.token_labels()
        f[2, :, 0] += 3.0 * (2 * lab - 1) * w  # layer 2 carries the truth signal
        return p, f

    tr = [make(i % 2) for i in range(40)]
    va = [make(i % 2) for i in range(20)]
    det = detect.train([f for _, f in tr], [p for p, _ in tr], [f for _, f in va],
                       [p for p, _ in va], detect.DetectorConfig(top_layers=1, min_votes=1,
                                                                 window=1, l2=1.0))
    assert det.layers["token"][0] == 2 and det.layers["sentence"][0] == 2
    assert det.val_acc["sentence"][2] > 0.95 and det.val_acc["sentence"][0] < 0.8
    p, f = make(1)
    np.testing.assert_array_equal(detect.drop_mask(det, f, p, "sentence"), detect.oracle_drop(p))
    tok = detect.drop_mask(det, f, p, "token")
    assert tok[5:9].mean() > 0.7 and tok[1:5].mean() < 0.3 and not tok[0] and not tok[9]
    assert detect.all_drop(p)[1:9].all() and not detect.all_drop(p)[0]


def test_prompt_spans_with_real_tokenizer():
    from jaxlm.weights import WeightsError, locate, tokenizer_from_gguf

    try:
        path = locate("smollm2-135m-instruct")
    except WeightsError as e:
        pytest.skip(str(e))
    tok = tokenizer_from_gguf(path)
    facts = D.build_facts(tok, seed=0)
    firsts = [f.answer_id for f in facts]
    assert len(set(firsts)) == len(firsts) and all(f.answer_id != f.foil_id for f in facts)
    f = facts[0]
    p = D.make_prompt(tok, f, [(f.capital, 1), (f.foil, 0)])
    (s0, e0), (s1, e1) = p.sent_spans
    assert tok.decode(p.ids[s0:e0]).strip() == D.statement(f.country, f.capital)
    assert tok.decode(p.ids[s1:e1]).strip() == D.statement(f.country, f.foil)
    assert tok.decode(p.ids[p.object_starts[1]:e1]).strip() == f.foil + "."
    assert tok.decode(p.ids).endswith(f"The capital of {f.country} is")
    a, b, c = D.entity_split(list(range(10)), (0.5, 0.2, 0.3))
    assert sorted(a + b + c) == list(range(10)) and len(a) == 5 and len(b) == 2
