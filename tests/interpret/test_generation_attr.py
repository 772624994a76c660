import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.core import MODELS, apply, init
from jaxlm.interpret import attribution as A
from jaxlm.interpret import faithfulness as F


@pytest.fixture(scope="module")
def tiny():
    cfg = MODELS.get("gptj-tiny_test")  # untied embeddings: d f / d E[tok] sums position grads
    return cfg, init(jax.random.PRNGKey(4), cfg)


def test_generation_attribution_rows_match_embedding_gradients(tiny):
    cfg, params = tiny
    prompt = np.array([3, 9, 27, 81, 5])
    res = A.generation_attribution(params, cfg, prompt, max_new_tokens=3)
    g = len(res.generated)
    assert g == 3 and res.scores.shape == (3, 7)
    assert res.argmax_agrees.all()  # the decode loop's greedy tokens are the forward's argmax
    # log p(y | ctx) and its gradient w.r.t. the embedding table by a full forward; ctx is
    # right-padded to one length (one compile): causal attention keeps the pads after the
    # last context slot out of its logits and their gradients exactly zero
    T = len(prompt) + g

    @jax.jit
    def val_grad(embed, toks, last, y):
        def f(embed):
            lg = apply(dict(params, embed=embed), cfg, toks[None]).logits[0, last]
            return jax.nn.log_softmax(lg)[y]

        return jax.value_and_grad(f)(embed)

    for j in range(g):
        ctx = np.concatenate([prompt, res.generated[:j]])
        row = res.scores[j]
        assert np.isfinite(row[: len(ctx)]).all() and np.isnan(row[len(ctx):]).all()
        y = int(res.generated[j])
        padded = np.zeros(T, np.int32)
        padded[: len(ctx)] = ctx
        val, ge = val_grad(params["embed"], jnp.asarray(padded), len(ctx) - 1, y)
        assert abs(float(val) - res.f[j]) < 1e-4 * max(1.0, abs(float(val)))
        for tok in np.unique(ctx):  # sum over positions of one id = E[id] . dF/dE[id]
            want = float(jnp.dot(params["embed"][tok], ge[tok]))
            got = float(row[: len(ctx)][ctx == tok].sum())
            assert abs(got - want) < 1e-4 * max(1.0, np.abs(row[: len(ctx)]).max())
    assert res.prompt_scores().shape == (3, 5)


def test_generation_attribution_ig_and_given_tokens(tiny):
    cfg, params = tiny
    prompt = np.array([3, 9, 27, 81])
    res = A.generation_attribution(params, cfg, prompt, max_new_tokens=0, generated=[11, 12],
                                   method="integrated_gradients", ig_steps=16)
    assert res.scores.shape == (2, 5) and res.scores[0, 0] == 0.0  # first token held
    ig = A.integrated_gradients(params, cfg, np.array([3, 9, 27, 81, 11]), 12, steps=16,
                                keep_mask=np.array([1, 0, 0, 0, 0], bool))
    np.testing.assert_allclose(res.scores[1], ig.scores, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="method must be"):
        A.generation_attribution(params, cfg, prompt, max_new_tokens=1, method="lrp")
    with pytest.raises(ValueError, match="kind='contrast'"):
        A.generation_attribution(params, cfg, prompt, max_new_tokens=1, kind="contrast")


def test_answer_mass():
    s = np.array([5.0, -1.0, 2.0, 1.0])
    gold = np.array([False, False, True, False])
    assert F.answer_mass(s, gold) == pytest.approx(2 / 9)
    keep = np.array([True, False, False, False])
    assert F.answer_mass(s, gold, keep_mask=keep) == pytest.approx(2 / 4)
    assert np.isnan(F.answer_mass(np.zeros(4), gold))
    with pytest.raises(ValueError, match="no token outside keep_mask"):
        F.answer_mass(s, keep, keep_mask=keep)
