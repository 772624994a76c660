"""One ROME edit's k*, delta* and edited weights equal an independent computation.

The editing path prefills the frozen prefix into a KV cache and runs only a few tail
tokens through blocks ``layer..L-1`` (``hooks.tail_state`` / ``hooks.run_tail``).
The reference here runs the full sequences through plain ``jaxlm.core.apply`` with an
``intervene`` hook (no cache, no layer range, no scan) and repeats ROME's Adam loop and
rank-one update, so it shares no forward code with the hooks path.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlm.core import MODELS, apply, init
from jaxlm.editing import hooks, rome
from jaxlm.editing import value as value_lib
from jaxlm.editing.requests import ByteTokenizer, EditRequest
from jaxlm.editing.value import ValueConfig

TOK = ByteTokenizer()
CTX = ("{}", "Well then. {}")
REQ = EditRequest("The capital of {} is", "France", "V")
HP = ValueConfig(steps=5, stop_nll=0.0)


def _reference(params, cfg, layer, hp):
    """k* (mean key over contexts), bare-prompt key and delta* from full forwards."""
    batch = value_lib.build_delta_batch(TOK, REQ, CTX, hp)
    toks, pos = jnp.asarray(batch.tokens), jnp.asarray(batch.positions)
    rows = jnp.arange(toks.shape[0])
    subj, pred = jnp.asarray(batch.subj), jnp.asarray(batch.pred)

    def forward(d):
        store = {}

        def iv(site, li, act):
            if li != layer:
                return act
            if site == "mlp_hidden":
                store["k"] = act[rows, subj]
            if site == "mlp_out":
                store["a"] = act[rows, subj]
                return act.at[rows, subj].add(d.astype(act.dtype))
            return act

        logits = apply(params, cfg, toks, positions=pos, intervene=iv).logits
        lp = jax.nn.log_softmax(logits[rows[:, None], pred], axis=-1)  # [B, M, V]
        return lp, store["a"], store["k"]

    lp0, act, key = jax.jit(forward)(jnp.zeros((cfg.d_model,), jnp.float32))
    rw = batch.is_rw > 0
    keys = np.asarray(key, np.float64)[rw]
    v0 = np.asarray(act, np.float64)[rw].mean(0)
    v0_norm = jnp.float32(max(np.linalg.norm(v0), 1e-6))
    ref = lp0[:, 0]
    tgt, tmask = jnp.asarray(batch.tgt), jnp.asarray(batch.tmask)
    is_rw, is_kl = jnp.asarray(batch.is_rw), jnp.asarray(batch.is_kl)

    def loss(d):
        lp = forward(d)[0]
        tok_lp = jnp.take_along_axis(lp, tgt[..., None], axis=-1)[..., 0]
        per_row = -(tok_lp * tmask).sum(1) / jnp.maximum(tmask.sum(1), 1.0)
        nll = (per_row * is_rw).sum() / is_rw.sum()
        kl_lp = lp[:, 0]
        kl = ((jnp.exp(kl_lp) * (kl_lp - ref)).sum(-1) * is_kl).sum() / is_kl.sum()
        wd = hp.weight_decay * jnp.sqrt(jnp.sum(d * d) + 1e-12) / v0_norm**2
        return nll + hp.kl_factor * kl + wd

    grad = jax.jit(jax.grad(loss))
    opt = optax.adam(hp.lr)
    d = jnp.zeros((cfg.d_model,), jnp.float32)
    state = opt.init(d)
    for _ in range(hp.steps):
        upd, state = opt.update(grad(d), state, d)
        d = optax.apply_updates(d, upd)
        cap = hp.clamp_norm_factor * v0_norm
        nrm = jnp.linalg.norm(d)
        d = jnp.where(nrm > cap, d * (cap / jnp.maximum(nrm, 1e-12)), d)
    return keys.mean(0), keys[0], np.asarray(d, np.float64)


def _close(a, b, tol=1e-5):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.abs(b).max(), 1e-6)
    assert np.abs(a - b).max() <= tol * scale, (np.abs(a - b).max(), scale)


# a 3-layer llama edited at its middle block (prefix, edited block and a scanned rest all
# non-empty) and a 2-layer GPT-J (parallel blocks) edited at block 0
@pytest.mark.parametrize("preset,n_layers,layer", [("smollm2-135m_test", 3, 1),
                                                   ("gptj-tiny_test", 2, 0)])
def test_rome_edit_equals_full_forward_reference(preset, n_layers, layer):
    cfg = dataclasses.replace(MODELS.get(preset), n_layers=n_layers)
    params = hooks.as_jax(init(jax.random.PRNGKey(3), cfg))
    hp = rome.RomeConfig(layer=layer, value=HP, consistent_keys=True)
    new, info = rome.rome_edit(params, cfg, TOK, REQ, hp, contexts=CTX)
    k_star, k_prompt, delta = _reference(params, cfg, layer, HP)
    assert np.abs(delta).max() > 1e-3  # the optimisation moved
    _close(info.value.keys.mean(0), k_star)
    _close(info.value.keys[0], k_prompt)
    _close(info.value.delta, delta)
    w = np.asarray(params["layers"][layer]["mlp"]["w_down"], np.float64)
    dw, _ = rome.rank_one_update(w, k_star, k_star @ w + delta)
    _close(new["layers"][layer]["mlp"]["w_down"], w + dw)
    for i in range(cfg.n_layers):
        if i != layer:
            assert new["layers"][i] is params["layers"][i]


def test_stacked_params_edit_in_place_with_the_same_result():
    """A caller that owns a layer stack (``core.stack_layers``) gets the same ROME and FT-L
    edits as with listed layers, and its params come back stacked."""
    from jaxlm.core import stack_layers, unstack_layers
    from jaxlm.editing import baselines

    cfg = dataclasses.replace(MODELS.get("smollm2-135m_test"), n_layers=3)
    params = hooks.as_jax(init(jax.random.PRNGKey(4), cfg))
    stacked = stack_layers(params)
    hp = rome.RomeConfig(layer=1, value=HP, consistent_keys=True)
    new_l, info_l = rome.rome_edit(params, cfg, TOK, REQ, hp, contexts=CTX)
    new_s, info_s = rome.rome_edit(stacked, cfg, TOK, REQ, hp, contexts=CTX)
    assert isinstance(new_s["layers"], dict) and isinstance(new_l["layers"], list)
    assert np.abs(info_l.delta_w).max() > 1e-4
    _close(info_s.delta_w, info_l.delta_w)
    for a, b in zip(jax.tree.leaves(unstack_layers(new_s)), jax.tree.leaves(new_l), strict=True):
        _close(a, b)
    ft = baselines.FTConfig(layer=1, lr=1e-2, steps=3)
    step = baselines.make_ft_step(cfg, 1, 1e-2)
    ft_l, _ = baselines.ft_edit(params, cfg, TOK, REQ, ft, step=step)
    ft_s, _ = baselines.ft_edit(stacked, cfg, TOK, REQ, ft, step=step)
    assert isinstance(ft_s["layers"], dict) and isinstance(ft_l["layers"], list)
    w_l = ft_l["layers"][1]["mlp"]["w_down"]
    assert float(np.abs(np.asarray(w_l) - np.asarray(params["layers"][1]["mlp"]["w_down"])).max()) > 0
    _close(ft_s["layers"]["mlp"]["w_down"][1], w_l)
