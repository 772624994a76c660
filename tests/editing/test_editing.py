"""ROME / MEMIT exactness and purity on tiny random models (byte tokenizer)."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from jaxlm.core import MODELS, init
from jaxlm.editing import cov as cov_lib
from jaxlm.editing import baselines, hooks, io, memit, rome
from jaxlm.editing.requests import ByteTokenizer, EditRequest, encode_prompt, target_ids
from jaxlm.editing import value as value_lib
from jaxlm.editing.value import ValueConfig

TOK = ByteTokenizer()
CTX = ("{}", "Well then. {}")
FAST = ValueConfig(steps=4)
REQ = EditRequest("The capital of {} is", "France", "V")
REQ2 = EditRequest("The capital of {} is", "Norway", "Q")  # same shapes as REQ: no recompiles


@pytest.fixture(scope="module")
def tiny():
    cfg = MODELS.get("smollm2-135m_test")
    return cfg, hooks.as_jax(init(jax.random.PRNGKey(1), cfg))


def _w(p, layer):
    return np.asarray(p["layers"][layer]["mlp"]["w_down"], np.float64)


def test_rank_one_update_is_exact_and_local():
    rng = np.random.default_rng(0)
    f, d = 24, 8
    w, k, v = rng.normal(size=(f, d)), rng.normal(size=f), rng.normal(size=d)
    a = rng.normal(size=(f, 2 * f))
    c = a @ a.T / (2 * f)
    for cmat in (None, c):
        dw, u = rome.rank_one_update(w, k, v, cmat)
        np.testing.assert_allclose(k @ (w + dw), v, rtol=1e-12, atol=1e-12)
        assert np.linalg.matrix_rank(dw) == 1
        # keys with x . C^-1 k = 0 keep their outputs
        x = rng.normal(size=f)
        x -= (x @ u) / (u @ u) * u
        np.testing.assert_allclose(x @ (w + dw), x @ w, atol=1e-10)
    with pytest.raises(ValueError, match="need w"):
        rome.rank_one_update(w, k[:-1], v)


@pytest.mark.parametrize("preset", ["smollm2-135m_test", "gptj-tiny_test"])
@pytest.mark.parametrize("consistent", [True, False])
def test_rome_edit_hits_v_star_and_touches_nothing_else(preset, consistent):
    cfg = MODELS.get(preset)
    params = hooks.as_jax(init(jax.random.PRNGKey(2), cfg))
    before = jax.tree.map(np.array, params)
    hp = rome.RomeConfig(layer=0, value=FAST, consistent_keys=consistent)
    new, info = rome.rome_edit(params, cfg, TOK, REQ, hp, contexts=CTX)
    w1 = _w(new, 0)
    np.testing.assert_allclose(info.k_star @ w1, info.v_star, rtol=2e-5,
                               atol=2e-5 * np.abs(info.v_star).max())
    assert np.abs(info.v_star - info.k_star @ _w(params, 0)).max() > 0  # something changed
    # the key used is the context average (consistent) or the bare-prompt key (original)
    k_ctx = []
    for c in (CTX if consistent else ("{}",)):
        e = encode_prompt(TOK, REQ.template, REQ.subject, c)
        toks, pos, _ = hooks.pad_batch([e.ids])
        h = np.asarray(hooks.capture(params, cfg, toks, pos, layer=0, site="mlp_hidden"))
        k_ctx.append(h[0, e.subject_last])
    np.testing.assert_allclose(info.k_star, np.mean(k_ctx, 0), rtol=1e-5,
                               atol=1e-5 * np.abs(info.k_star).max())
    # pure: the input is unchanged; only layers[0].mlp.w_down differs
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.array, params))
    changed = io.diff_params(params, new)
    assert [r["path"] for r in changed] == ["layers/0/mlp/w_down"]
    assert changed[0]["rank"] == 1


def test_rome_with_estimated_covariance(tiny, tmp_path):
    cfg, params = tiny
    covs = cov_lib.key_second_moments(params, cfg, TOK, [0], n_tokens=512, seq_len=64,
                                      cache_dir=tmp_path)
    c = covs[0]
    assert c.shape == (cfg.d_ff, cfg.d_ff)
    np.testing.assert_allclose(c, c.T, rtol=0, atol=1e-5 * np.abs(c).max())  # float32 k^T k
    # matches an independent float64 estimate from captured keys
    chunks = cov_lib.token_chunks(TOK, 512, 64)
    k = np.asarray(hooks.capture(params, cfg, chunks, np.broadcast_to(np.arange(64), chunks.shape),
                                 layer=0, site="mlp_hidden"), np.float64).reshape(-1, cfg.d_ff)
    np.testing.assert_allclose(c, k.T @ k / len(k), rtol=1e-4, atol=1e-6 * np.abs(c).max())
    assert len(list(tmp_path.glob("cov_*.npy"))) == 1
    again = cov_lib.key_second_moments(params, cfg, TOK, [0], n_tokens=512, seq_len=64,
                                       cache_dir=tmp_path)
    np.testing.assert_array_equal(again[0], c)
    cs = cov_lib.shrink(c, 1e-2)
    hp = rome.RomeConfig(layer=0, value=FAST, use_cov=True)
    new, info = rome.rome_edit(params, cfg, TOK, REQ, hp, contexts=CTX, cov=cs)
    np.testing.assert_allclose(info.u, np.linalg.solve(cs, info.k_star), rtol=1e-8)
    np.testing.assert_allclose(info.k_star @ _w(new, 0), info.v_star, rtol=2e-5,
                               atol=2e-5 * np.abs(info.v_star).max())
    with pytest.raises(ValueError, match="needs cov"):
        rome.rome_edit(params, cfg, TOK, REQ, hp, contexts=CTX)
    # k*/v* do not depend on C: the C = I edit can reuse the optimisation exactly
    new_i, info_i = rome.rome_edit(params, cfg, TOK, REQ, dataclasses.replace(hp, use_cov=False),
                                   contexts=CTX, value=info.value)
    assert info_i.value is info.value
    dw, _ = rome.rank_one_update(_w(params, 0), info.k_star, info.v_star)
    np.testing.assert_allclose(_w(new_i, 0) - _w(params, 0), dw, atol=1e-6 * np.abs(dw).max())
    with pytest.raises(ValueError, match="other contexts"):
        rome.rome_edit(params, cfg, TOK, REQ, hp, contexts=CTX[:1], cov=cs, value=info.value)


def test_memit_update_closed_form():
    rng = np.random.default_rng(3)
    n, f, d, lam = 3, 16, 6, 0.7
    k, r = rng.normal(size=(n, f)), rng.normal(size=(n, d))
    a = rng.normal(size=(f, 3 * f))
    c = a @ a.T / (3 * f)
    dw = memit.memit_update(k, r, c, lam)
    # stationarity of  lam * tr(dW^T C dW) + ||K dW - R||^2
    np.testing.assert_allclose(lam * c @ dw + k.T @ (k @ dw - r), 0, atol=1e-10)
    # one edit: Sherman-Morrison form = scaled ROME update
    dw1 = memit.memit_update(k[:1], r[:1], c, lam)
    u = np.linalg.solve(c, k[0])
    np.testing.assert_allclose(dw1, np.outer(u, r[0]) / (lam + k[0] @ u), rtol=1e-9)


def test_memit_one_edit_one_layer_reduces_to_rome(tiny):
    cfg, params = tiny
    vc = ValueConfig(steps=4, weight_decay=0.0, clamp_norm_factor=1e6)
    c = cov_lib.shrink(np.eye(cfg.d_ff) * 0.3, 0.0)
    _, r_info = rome.rome_edit(params, cfg, TOK, REQ, rome.RomeConfig(0, vc, use_cov=True),
                               contexts=CTX, cov=c)
    for lam in (1e-6, 2.0):
        hp = memit.MemitConfig(layers=(0,), value=vc, mom2_weight=lam, use_cov=True)
        _, m_info = memit.memit_edit(params, cfg, TOK, [REQ], hp, contexts=CTX, covs={0: c})
        k = r_info.k_star
        q = k @ np.linalg.solve(c, k)
        np.testing.assert_allclose(m_info.delta_w[0], r_info.delta_w * q / (lam + q), rtol=2e-3,
                                   atol=2e-3 * np.abs(r_info.delta_w).max())


def test_memit_batch_multi_layer(tiny):
    cfg, params = tiny
    hp = memit.MemitConfig(layers=(0, 1), value=FAST, mom2_weight=0.5, use_cov=False)
    cache: dict = {}
    new, info = memit.memit_edit(params, cfg, TOK, [REQ, REQ2], hp, contexts=CTX,
                                 value_cache=cache)
    assert sorted(r["path"] for r in io.diff_params(params, new)) == [
        "layers/0/mlp/w_down", "layers/1/mlp/w_down"]
    assert info.deltas.shape == (2, cfg.d_model)
    # the cached deltas are reused (batch-independent) and give the same edit
    assert len(cache) == 2
    again, info2 = memit.memit_edit(params, cfg, TOK, [REQ, REQ2], hp, contexts=CTX,
                                    value_cache=cache)
    np.testing.assert_array_equal(info2.deltas, info.deltas)
    np.testing.assert_allclose(_w(again, 1), _w(new, 1), rtol=1e-6, atol=1e-7)
    # the batched subject activations match single-prompt captures
    acts = value_lib.subject_activations(params, cfg, TOK, [REQ, REQ2], CTX,
                                         (("mlp_hidden", 0), ("resid_post", 1)))
    for i, r in enumerate((REQ, REQ2)):
        for j, c in enumerate(CTX):
            e = encode_prompt(TOK, r.template, r.subject, c)
            toks, pos, _ = hooks.pad_batch([e.ids])
            h = np.asarray(hooks.capture(params, cfg, toks, pos, layer=1, site="resid_post"))
            np.testing.assert_allclose(acts[("resid_post", 1)][i, j], h[0, e.subject_last],
                                       rtol=1e-4, atol=1e-5)
    assert acts[("mlp_hidden", 0)].shape == (2, len(CTX), cfg.d_ff)
    with pytest.raises(ValueError, match="ascending"):
        memit.memit_edit(params, cfg, TOK, [REQ], dataclasses.replace(hp, layers=(1, 0)))
    with pytest.raises(ValueError, match="needs covs"):
        memit.memit_edit(params, cfg, TOK, [REQ], dataclasses.replace(hp, use_cov=True))


def test_sequential_edits_compose(tiny, tmp_path):
    cfg, params = tiny
    hp = rome.RomeConfig(layer=0, value=FAST)
    p1, i1 = rome.rome_edit(params, cfg, TOK, REQ, hp, contexts=CTX)
    p1_copy = jax.tree.map(np.array, p1)
    p2, i2 = rome.rome_edit(p1, cfg, TOK, REQ2, hp, contexts=CTX)
    # the composed change is the sum of the two rank-one updates (rank 2)
    np.testing.assert_allclose(_w(p2, 0) - _w(params, 0), i1.delta_w + i2.delta_w,
                               atol=1e-6 * np.abs(_w(params, 0)).max())
    assert io.diff_params(params, p2)[0]["rank"] == 2
    np.testing.assert_allclose(i2.k_star @ _w(p2, 0), i2.v_star, rtol=2e-5,
                               atol=2e-5 * np.abs(i2.v_star).max())
    jax.tree.map(np.testing.assert_array_equal, p1_copy, jax.tree.map(np.array, p1))
    # the editor closure is the same function; it is deterministic
    edit = rome.make_rome_editor(cfg, TOK, hp, contexts=CTX)
    np.testing.assert_array_equal(_w(edit(edit(params, REQ), REQ2), 0), _w(p2, 0))
    # save with orbax, restore, diff
    path = io.save_params(tmp_path / "edited", p2)
    back = io.load_params(path, p2)
    assert io.diff_params(p2, back) == []
    assert [r["path"] for r in io.diff_params(params, back)] == ["layers/0/mlp/w_down"]


def test_clear_errors(tiny):
    cfg, params = tiny
    hp = rome.RomeConfig(layer=0, value=FAST)
    with pytest.raises(ValueError, match="does not occur in prompt"):
        rome.rome_edit(params, cfg, TOK, EditRequest("The capital of France is", "Germany", "V"),
                       hp, contexts=CTX)
    with pytest.raises(ValueError, match="single-token"):
        rome.rome_edit(params, cfg, TOK, EditRequest("The capital of {} is", "France", " Vienna"),
                       hp, contexts=CTX)
    with pytest.raises(ValueError, match="out of range"):
        rome.rome_edit(params, cfg, TOK, REQ, rome.RomeConfig(layer=5), contexts=CTX)
    with pytest.raises(ValueError, match="contexts must start"):
        rome.rome_edit(params, cfg, TOK, REQ, hp, contexts=("x {}",))
    # a full prompt containing the subject works like the template
    assert EditRequest("The capital of France is", "France", "V").template == REQ.template
    assert target_ids(TOK, EditRequest("a {} b", "x", " yz"), single_token=False) == [32, 121, 122]


def test_retrieval_memory_finds_its_fact(tiny):
    cfg, params = tiny
    reqs = [REQ, REQ2, EditRequest("The language of {} is", "Peru", "X")]
    mem = baselines.build_memory(params, cfg, TOK, reqs, layer=1)
    np.testing.assert_allclose(np.linalg.norm(mem.emb, axis=1), 1.0, rtol=1e-5)
    idx, sim = baselines.retrieve(mem, params, cfg, TOK, mem.facts, layer=1)
    np.testing.assert_array_equal(idx, [0, 1, 2])
    np.testing.assert_allclose(sim, 1.0, rtol=1e-5)
    out = baselines.augment(mem, params, cfg, TOK, [REQ.text, REQ.text], layer=1)
    assert out[0] == baselines.RETRIEVAL_FORMAT.format(fact=mem.facts[idx[0]], prompt=REQ.text)
    # the scope check leaves prompts below the threshold alone
    assert baselines.augment(mem, params, cfg, TOK, [REQ.text], layer=1,
                             threshold=1.5) == [REQ.text]
