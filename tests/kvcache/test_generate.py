"""The evicting cache inside the model: equivalence with full attention, original RoPE
positions, per-row independence, one compilation for every policy."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm import kvcache as kv
from jaxlm.core import MODELS, apply, init
from jaxlm.core.generate import generate as core_generate
from jaxlm.kvcache import engine as kvgen

T_NEW = 10
S = 48  # one cache capacity (and prompt bucket) for every test: compiled loops are shared
_apply = jax.jit(apply, static_argnums=1)


def _gen(params, cfg, prompts, pols, **kw):
    kw.setdefault("capacity", S)
    return kv.generate(params, cfg, prompts, pols, max_new_tokens=T_NEW, bucket=S,
                       return_logits=True, **kw)


def _model(name):
    # larger init so greedy outputs are not one repeated token
    cfg = dataclasses.replace(MODELS.get(name), init_std=0.3)
    return cfg, init(jax.random.PRNGKey(1), cfg)


@pytest.fixture(scope="module")
def model():
    return _model("smollm2-135m_test")  # GQA: 3 query heads per KV head


@pytest.fixture(scope="module", params=["smollm2-135m_test", "gptj-tiny_test", "mpt-tiny_test"])
def any_model(request):
    return _model(request.param)  # rope (half), partial interleaved rope, alibi


def _prompts(lens, seed=0):
    rng = np.random.default_rng(seed)
    return [list(map(int, rng.integers(3, 250, n))) for n in lens]


def test_budget_covering_sequence_equals_full_attention(model):
    cfg, params = model
    prompts = _prompts([37, 29])
    ref = core_generate(params, cfg, prompts, max_new_tokens=T_NEW)
    ref_toks = np.asarray(ref.tokens)
    assert len(set(ref_toks[0].tolist())) > 1  # a non-degenerate reference
    for pol in [kv.Policy("full"), kv.Policy("h2o", 37 + T_NEW),
                kv.Policy("keyformer", 37 + T_NEW)]:
        out = _gen(params, cfg, prompts, pol)
        np.testing.assert_array_equal(np.asarray(out.tokens), ref_toks)
        # logits of the whole continuation against one causal forward (float64-free check)
        seq = [p + ref_toks[i].tolist() for i, p in enumerate(prompts)]
        for i, s in enumerate(seq):
            lg = _apply(params, cfg, jnp.asarray([s])).logits[0]
            want = np.asarray(lg[len(prompts[i]) - 1: len(s) - 1])
            np.testing.assert_allclose(np.asarray(out.logits[i]), want, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("name", ["streaming", "window"])
def test_positions_preserved_for_rope(any_model, name):
    """Teacher-forced logits with eviction equal one full forward whose row p may only
    see the tokens the policy kept at that step: keys keep their original positions."""
    cfg, params = any_model
    plen, sinks = 30, (3 if name == "streaming" else 0)
    pol = kv.Policy(name, 12, sinks=sinks)
    prompt = _prompts([plen], seed=3)[0]
    forced = np.asarray(_prompts([T_NEW], seed=4)[0])[None]
    out = _gen(params, cfg, [prompt], pol, forced=forced)
    seq = prompt + forced[0].tolist()
    n = len(seq)
    bias = np.zeros((n, n), np.float32)
    cap = 12
    for p in range(plen, n):  # query at position p sees sinks + the cap - sinks newest
        keep = set(range(sinks)) | set(range(p - (cap - sinks) + 1, p + 1))
        drop = [j for j in range(p + 1) if j not in keep]
        bias[p, drop] = -1e9
    lg = _apply(params, cfg, jnp.asarray([seq]), attn_bias=jnp.asarray(bias)[None, None]).logits
    want = np.asarray(lg[0, plen - 1: n - 1])
    np.testing.assert_allclose(np.asarray(out.logits[0]), want, atol=2e-4, rtol=2e-4)
    # the cache holds original positions: sinks + the cap - sinks newest
    pos = np.asarray(out.state.cache.pos)[:, 0]  # [L, K, S]
    last = n - 2  # the final decode step consumed forced[T-2]
    expect = set(range(sinks)) | set(range(last - (cap - sinks) + 1, last + 1))
    for row in pos.reshape(-1, pos.shape[-1]):
        assert set(row[row >= 0].tolist()) == expect


def test_batched_rows_are_independent(model):
    cfg, params = model
    prompts = _prompts([41, 26], seed=5)
    pols = [kv.Policy("keyformer", 0.5, seed=1), kv.Policy("keyformer", 0.5, mode="reference")]
    together = _gen(params, cfg, prompts, pols)
    for i in range(2):
        alone = _gen(params, cfg, [prompts[i]], pols[i])
        np.testing.assert_array_equal(np.asarray(together.tokens[i]), np.asarray(alone.tokens[0]))
        a = np.sort(np.asarray(together.state.cache.pos[:, i]), axis=-1)
        b = np.sort(np.asarray(alone.state.cache.pos[:, 0]), axis=-1)
        np.testing.assert_array_equal(a, b)
    # selections differ per row and per (layer, KV head) for score-based policies
    pos = np.asarray(together.state.cache.pos[:, 0])  # [L, K, S]
    sets = {tuple(sorted(r[r >= 0].tolist())) for r in pos.reshape(-1, pos.shape[-1])}
    assert len(sets) > 1 or cfg.n_layers * cfg.n_kv_heads == 1


def test_one_compilation_for_all_policies(model):
    cfg, params = model
    prompts = _prompts([40, 40], seed=6)
    kvgen._decode.clear_cache()
    for pols in ([kv.Policy("h2o", 0.5)] * 2,
                 [kv.Policy("keyformer", 0.5), kv.Policy("streaming", 0.25)],
                 [kv.Policy("tova", 0.75), kv.Policy("snapkv", 0.5)],
                 [kv.Policy("random", 0.5), kv.Policy("window", 0.3)]):
        _gen(params, cfg, prompts, pols)
    assert kvgen._decode._cache_size() == 1


def test_cache_budget_constant_during_decoding(model):
    cfg, params = model
    prompts = _prompts([40, 32], seed=7)
    pols = [kv.Policy("keyformer", 0.5), kv.Policy("tova", 0.25)]
    out = _gen(params, cfg, prompts, pols)
    pos = np.asarray(out.state.cache.pos)
    caps = np.asarray(out.capacities)
    assert caps.tolist() == [20, 8]
    for b in range(2):
        filled = (pos[:, b] >= 0).sum(-1)
        assert np.all(filled == caps[b])  # C - 1 kept + the last generated token
        assert np.all(pos[:, b, :, caps[b]:] == -1)  # slots beyond this row's C never used
    # the newest generated token is always present
    assert np.all((pos == (np.asarray(out.state.cache.next_pos) - 1)[None, :, None, None])
                  .any(-1))


def test_generate_rejects_bad_inputs(model):
    cfg, params = model
    prompts = _prompts([20], seed=8)
    with pytest.raises(ValueError, match="exceeds the cache capacity"):
        kv.generate(params, cfg, prompts, kv.Policy("h2o", 100), max_new_tokens=4, capacity=16)
    with pytest.raises(ValueError, match="exceeds the cache capacity"):
        kv.generate(params, cfg, prompts, kv.Policy("h2o", 0.5), max_new_tokens=4, capacity=5)
    with pytest.raises(ValueError, match="policies for"):
        kv.generate(params, cfg, prompts, [kv.Policy("h2o", 0.5)] * 2, max_new_tokens=4)
