"""Editing's activation reads go through ``core.run_blocks(capture=...)``; these tests pin
them to the old path (closures that wrote ``intervene`` activations into dicts, kept
here as the reference) on fixed inputs of a tiny random model: keys, values, pooled
embeddings, key second moments and whole edits agree to float32 tolerance."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.core import MODELS, apply, init
from jaxlm.editing import baselines, hooks, memit, rome
from jaxlm.editing import cov as cov_lib
from jaxlm.editing import value as value_lib
from jaxlm.editing.requests import ByteTokenizer, EditRequest, encode_prompt
from jaxlm.editing.value import ValueConfig

TOK = ByteTokenizer()
CTX = ("{}", "Well then. {}")
REQS = (EditRequest("The capital of {} is", "France", "V"),
        EditRequest("The capital of {} is", "Norway", "Q"))


@pytest.fixture(scope="module")
def tiny():
    cfg = dataclasses.replace(MODELS.get("smollm2-135m_test"), n_layers=3)
    return cfg, hooks.as_jax(init(jax.random.PRNGKey(7), cfg))


def _close(a, b, rtol=1e-5):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * max(np.abs(b).max(), 1e-30))


# ---- the old closure path (reference) ----

@functools.partial(jax.jit, static_argnames=("cfg", "sites"))
def _old_subject_acts(params, tokens, positions, idx, *, cfg, sites):
    store = {}
    rows = jnp.arange(tokens.shape[0])

    def iv(site, layer, act):
        if (site, layer) in sites:
            store[(site, layer)] = act[rows, idx]
        return act

    apply(params, cfg, tokens, positions=positions, last_logits_only=True, intervene=iv)
    return tuple(store[s] for s in sites)


@functools.partial(jax.jit, static_argnames=("cfg", "layer"))
def _old_pooled(params, tokens, positions, *, cfg, layer):
    store = {}

    def iv(site, lay, act):
        if site == "resid_post" and lay == layer:
            store["h"] = act
        return act

    apply(params, cfg, tokens, positions=positions, last_logits_only=True, intervene=iv)
    mask = (positions >= 0).astype(jnp.float32)[..., None]
    v = (store["h"] * mask).sum(1) / mask.sum(1)
    return v / jnp.linalg.norm(v, axis=-1, keepdims=True)


@functools.partial(jax.jit, static_argnames=("cfg", "layers"))
def _old_moments(params, tokens, *, cfg, layers):
    store = {}

    def iv(site, layer, act):
        if site == "mlp_hidden" and layer in layers:
            store[layer] = act
        return act

    apply(params, cfg, tokens, last_logits_only=True, intervene=iv)
    outs = []
    for layer in layers:
        k = store[layer].reshape(-1, store[layer].shape[-1]).astype(jnp.float32)
        outs.append(k.T @ k)
    return jnp.stack(outs)


def _old_site_and_key(params, cfg, batch, layer, site):
    """Site activation and key at the subject's last token, via a full-forward closure."""
    store = {}
    rows = jnp.arange(batch.tokens.shape[0])
    subj = jnp.asarray(batch.subj)

    def iv(s, lay, act):
        if lay == layer and s == "mlp_hidden":
            store["k"] = act[rows, subj]
        if lay == layer and s == site:
            store["a"] = act[rows, subj]
        return act

    apply(params, cfg, jnp.asarray(batch.tokens), positions=jnp.asarray(batch.positions),
          intervene=iv)
    return store["a"], store["k"]


# ---- equality of the capture path with the reference ----

def test_subject_activations_equal_closure_path(tiny):
    cfg, params = tiny
    sites = (("mlp_hidden", 0), ("resid_post", 1), ("mlp_out", 1))
    got = value_lib.subject_activations(params, cfg, TOK, REQS, CTX, sites, chunk=8)
    encs = [encode_prompt(TOK, r.template, r.subject, c) for r in REQS for c in CTX]
    toks, pos, _ = hooks.pad_batch([e.ids for e in encs], multiple=16, rows=8)
    idx = np.zeros((8,), np.int32)
    idx[: len(encs)] = [e.subject_last for e in encs]
    ref = _old_subject_acts(params, jnp.asarray(toks), jnp.asarray(pos), jnp.asarray(idx),
                            cfg=cfg, sites=sites)
    for s, r in zip(sites, ref, strict=True):
        _close(got[s], np.asarray(r)[: len(encs)].reshape(len(REQS), len(CTX), -1))
        assert np.abs(got[s]).max() > 0


def test_tail_site_and_key_equal_full_forward_closure(tiny):
    cfg, params = tiny
    hp = ValueConfig(steps=2)
    batch = value_lib.build_delta_batch(TOK, REQS[0], CTX, hp)
    for layer, site in ((0, "mlp_out"), (1, "resid_post")):
        lens = (batch.positions >= 0).sum(1)
        tail_len = int((lens - batch.subj).max())
        st = hooks.tail_state(params, cfg, batch.tokens, batch.positions, batch.subj,
                              start=layer, tail_len=tail_len)
        sub = hooks.tail_params(params, layer)
        b = {"pred_tail": jnp.asarray(batch.pred - batch.subj[:, None])}
        act, key, _ = value_lib._site_and_ref(sub, st, b, cfg=cfg, start=layer, site=site)
        a_ref, k_ref = _old_site_and_key(params, cfg, batch, layer, site)
        _close(act, a_ref, 2e-5)
        _close(key, k_ref, 2e-5)


def test_pooled_embeddings_equal_closure_path(tiny):
    cfg, params = tiny
    texts = ["The capital of France is Paris.", "Norway", "a b c d e f g h i j k"]
    got = baselines.embed_texts(params, cfg, TOK, texts, layer=1, batch=4)
    toks, pos, _ = hooks.pad_batch([TOK.encode(t) for t in texts], rows=4)
    ref = _old_pooled(hooks.truncate(params, 2), jnp.asarray(toks), jnp.asarray(pos), cfg=cfg,
                      layer=1)
    _close(got, np.asarray(ref)[: len(texts)])


def test_key_moments_equal_closure_path(tiny):
    cfg, params = tiny
    got = cov_lib.key_second_moments(params, cfg, TOK, (0, 1), n_tokens=256, seq_len=32,
                                     batch=4)
    chunks = cov_lib.token_chunks(TOK, 256, 32)
    acc = sum(np.asarray(_old_moments(params, jnp.asarray(chunks[i : i + 4]), cfg=cfg,
                                      layers=(0, 1)), np.float64)
              for i in range(0, len(chunks), 4))
    for j, lay in enumerate((0, 1)):
        _close(got[lay], acc[j] / chunks.size, 1e-5)


def test_whole_edits_match_closure_path_keys(tiny):
    """ROME's k* and MEMIT's update use the captured keys: both equal the values the
    old closure path gives for the same (fixed) inputs."""
    cfg, params = tiny
    hp = rome.RomeConfig(layer=1, value=ValueConfig(steps=3))
    _, info = rome.rome_edit(params, cfg, TOK, REQS[0], hp, contexts=CTX)
    encs = [encode_prompt(TOK, REQS[0].template, REQS[0].subject, c) for c in CTX]
    toks, pos, _ = hooks.pad_batch([e.ids for e in encs], multiple=16, rows=8)
    idx = np.zeros((8,), np.int32)
    idx[: len(encs)] = [e.subject_last for e in encs]
    (k_ref,) = _old_subject_acts(params, jnp.asarray(toks), jnp.asarray(pos),
                                 jnp.asarray(idx), cfg=cfg, sites=(("mlp_hidden", 1),))
    _close(info.k_star, np.asarray(k_ref, np.float64)[: len(encs)].mean(0), 2e-5)
    # MEMIT's first layer: keys and residuals read on the unedited model, so its update is
    # the closed form on the closure-path keys with R = delta / (number of layers)
    mh = memit.MemitConfig(layers=(0, 1), value=ValueConfig(steps=2), use_cov=False)
    _, minfo = memit.memit_edit(params, cfg, TOK, list(REQS), mh, contexts=CTX)
    encs = [encode_prompt(TOK, r.template, r.subject, c) for r in REQS for c in CTX]
    toks, pos, _ = hooks.pad_batch([e.ids for e in encs], multiple=16, rows=8)
    idx = np.zeros((8,), np.int32)
    idx[: len(encs)] = [e.subject_last for e in encs]
    (k0,) = _old_subject_acts(params, jnp.asarray(toks), jnp.asarray(pos), jnp.asarray(idx),
                              cfg=cfg, sites=(("mlp_hidden", 0),))
    keys = np.asarray(k0, np.float64)[: len(encs)].reshape(len(REQS), len(CTX), -1).mean(1)
    ref = memit.memit_update(keys, minfo.deltas / 2, None, mh.mom2_weight)
    assert np.abs(minfo.deltas).max() > 1e-3  # the optimisation moved
    _close(minfo.delta_w[0], ref, 1e-4)


def test_ft_step_is_owned_by_the_caller(tiny):
    cfg, _ = tiny
    assert not hasattr(baselines, "_ft_step_fn")  # no module-level (lru) cache any more
    step = baselines.make_ft_step(cfg, 0, 1e-3)
    with pytest.raises(ValueError, match="make_ft_step"):
        baselines.ft_edit(None, cfg, TOK, REQS[0], baselines.FTConfig(layer=1, lr=1e-3),
                          step=step)
