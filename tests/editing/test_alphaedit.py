"""AlphaEdit: the null-space projection (exact on preserved keys) and edits on a tiny model."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from jaxlm.core import MODELS, init
from jaxlm.editing import alphaedit, hooks, memit
from jaxlm.editing import cov as cov_lib  # noqa: I001
from jaxlm.editing import value as value_lib
from jaxlm.editing.requests import ByteTokenizer, EditRequest
from jaxlm.editing.value import ValueConfig

TOK = ByteTokenizer()
CTX = ("{}", "Well then. {}")
REQ = EditRequest("The capital of {} is", "France", "V")
REQ2 = EditRequest("The capital of {} is", "Norway", "Q")


def test_update_leaves_preserved_keys_unchanged():
    rng = np.random.default_rng(0)
    f, d, n0 = 40, 12, 25
    k0 = rng.normal(size=(n0, f)) * rng.uniform(0.5, 3.0, size=f)  # preserved keys, rank 25
    c = k0.T @ k0 / n0
    p, dim = alphaedit.null_space_projector(c, 1e-8)
    assert dim == f - n0
    np.testing.assert_allclose(p @ p, p, atol=1e-10)
    k, r = rng.normal(size=(3, f)), rng.normal(size=(3, d))
    kp = rng.normal(size=(2, f))
    for prev in (None, kp.T @ kp):
        dw = alphaedit.alphaedit_update(k, r, p, prev, 0.5)
        scale = np.abs(k0).max() * np.abs(dw).max() * f
        assert np.abs(k0 @ dw).max() < 1e-12 * scale
        # the paper's form (P M + l2 I)^-1 P K^T R is the same matrix
        m = k.T @ k + (0 if prev is None else prev)
        np.testing.assert_allclose(
            dw, np.linalg.solve(p @ m + 0.5 * np.eye(f), p @ k.T @ r), atol=1e-10)
    # the check can fail: MEMIT's unprojected least squares moves the preserved outputs
    dw_memit = memit.memit_update(k, r, None, 0.5)
    assert np.abs(k0 @ dw_memit).max() > 1e-2
    # with little regularisation, the new keys reach their residuals inside the null space
    dw = alphaedit.alphaedit_update(k, r, p, None, 1e-9)
    np.testing.assert_allclose(k @ dw, r, rtol=1e-5, atol=1e-5 * np.abs(r).max())
    with pytest.raises(ValueError, match="rtol"):
        alphaedit.null_space_projector(c, 0.0)
    with pytest.raises(ValueError, match="P must be"):
        alphaedit.alphaedit_update(k[:, :-1], r, p, None, 1.0)


@pytest.fixture(scope="module")
def tiny3():
    cfg = dataclasses.replace(MODELS.get("smollm2-135m_test"), n_layers=3)
    return cfg, hooks.as_jax(init(jax.random.PRNGKey(5), cfg))


def test_edit_reaches_target_and_keeps_preserved_outputs(tiny3):
    cfg, params = tiny3
    # preserved keys: 48 tokens of text (rank <= 48 < d_ff = 128: an exact null space)
    # (C in float64 from the captured keys, so its zero eigenvalues are zero to ~1e-16)
    chunks = cov_lib.token_chunks(TOK, 48, 16)
    pos = np.broadcast_to(np.arange(chunks.shape[1], dtype=np.int32), chunks.shape)
    k0 = np.asarray(hooks.capture(params, cfg, chunks, pos, layer=1, site="mlp_hidden"),
                    np.float64).reshape(-1, cfg.d_ff)
    covs = {1: k0.T @ k0 / len(k0)}
    vc = ValueConfig(steps=6, weight_decay=0.0, clamp_norm_factor=1e6)
    hp = alphaedit.AlphaEditConfig(layers=(1,), value=vc, null_rtol=1e-10, l2=1e-6)
    st0 = alphaedit.init_state(covs, hp)
    assert st0.proj[1][1] >= cfg.d_ff - chunks.size
    new, st1, info = alphaedit.alphaedit_edit(params, cfg, TOK, [REQ], hp, st0, contexts=CTX)
    # outputs of the edited MLP on the preserved tokens (k0 @ W): unchanged to float32
    # tolerance, i.e. relative to the magnitude of the summed terms |k0| @ |W_new|
    before = np.asarray(hooks.capture(params, cfg, chunks, pos, layer=1, site="mlp_out"))
    after = np.asarray(hooks.capture(new, cfg, chunks, pos, layer=1, site="mlp_out"))
    w_new = np.abs(np.asarray(new["layers"][1]["mlp"]["w_down"], np.float64))
    f32_scale = (np.abs(k0) @ w_new).max()
    assert np.abs(after - before).max() < 1e-5 * f32_scale
    # ... while the edit reaches its target: the residual at the subject's last token
    # (mean over contexts, what MEMIT/AlphaEdit solve for) moves by the optimised delta
    assert np.abs(info.deltas[0]).max() > 1e-2
    sites = (("resid_post", 1),)
    h0 = value_lib.subject_activations(params, cfg, TOK, [REQ], CTX, sites)[sites[0]].mean(1)
    h1 = value_lib.subject_activations(new, cfg, TOK, [REQ], CTX, sites)[sites[0]].mean(1)
    np.testing.assert_allclose(h1 - h0, info.deltas, rtol=1e-3,
                               atol=1e-3 * np.abs(info.deltas).max())
    # sequential: the state accumulates the edited keys; inputs are unchanged
    assert st0.n_edits == 0 and not st0.prev_kk[1].any()
    np.testing.assert_allclose(st1.prev_kk[1], info.keys[1].T @ info.keys[1])
    new2, st2, _ = alphaedit.alphaedit_edit(new, cfg, TOK, [REQ2], hp, st1, contexts=CTX)
    assert st2.n_edits == 2 and st1.n_edits == 1
    after2 = np.asarray(hooks.capture(new2, cfg, chunks, pos, layer=1, site="mlp_out"))
    w_new = np.abs(np.asarray(new2["layers"][1]["mlp"]["w_down"], np.float64))
    assert np.abs(after2 - before).max() < 1e-5 * (np.abs(k0) @ w_new).max()
    with pytest.raises(ValueError, match="init_state"):
        alphaedit.alphaedit_edit(params, cfg, TOK, [REQ],
                                 dataclasses.replace(hp, layers=(0,)), st0, contexts=CTX)
