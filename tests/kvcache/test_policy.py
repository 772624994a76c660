"""Policies as pure functions: exact kept sets on hand-made scores, the frozen key set
of the reference code, re-entry in paper mode, GQA pooling, Gumbel scores, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.kvcache import policy as P

P_LEN, T_NEW = 10, 4
SCORES = np.array([5, 1, 9, 2, 8, 3, 7, 0, 6, 4], np.float32)


def _kept(policy, scores=SCORES, plen=P_LEN):
    """Prefill selection on one (layer, row, head) with hand-made scores."""
    pp = P.resolve_rows([policy], [plen], T_NEW, P.keyformer_variants([policy]))
    pos = jnp.arange(plen, dtype=jnp.int32)[None, None, None]
    score = jnp.asarray(scores[:plen])[None, None, None]
    rand = jnp.asarray(np.random.default_rng(0).random(plen), jnp.float32)[None, None, None]
    prio = P.priority(score, pos, jnp.array([plen - 1]), pp, rand, use_cap=False)
    idx, valid = P.select(prio, pos, pp.cap - 1, plen)
    idx, valid = np.asarray(idx)[0, 0, 0], np.asarray(valid)[0, 0, 0]
    return set(idx[valid].tolist())


@pytest.mark.parametrize(
    "policy,expected",
    [
        # C = 5 -> keep 4 (the 5th slot takes the first generated token)
        (P.Policy("h2o", 0.5), {9, 2, 4, 6}),  # w=2: {9} protected + top-3 scores
        (P.Policy("keyformer", 0.5), {2, 4, 6, 8}),  # w=1: top-4 scores
        # reference: w=2, candidates stop at P-w=8 (8 is neither kept nor a candidate)
        (P.Policy("keyformer", 0.5, mode="reference", window=2), {9, 2, 4, 6}),
        (P.Policy("keyformer", 0.5, mode="reference", window=3), {8, 9, 2, 4}),
        (P.Policy("streaming", 0.5, sinks=2), {0, 1, 8, 9}),
        (P.Policy("window", 0.5), {6, 7, 8, 9}),
        (P.Policy("tova", 0.5), {2, 4, 6, 8}),
        (P.Policy("full"), set(range(10))),
        (P.Policy("h2o", 7), {9, 8, 6, 2, 4, 0}),  # absolute budget, w=3 -> {8,9} + top 4
    ],
)
def test_prefill_kept_set(policy, expected):
    assert _kept(policy) == expected


def test_random_policy_keeps_budget_and_protects_window():
    got = _kept(P.Policy("random", 0.5, window=2))
    assert len(got) == 4 and 9 in got


def test_snapkv_pooling_matches_numpy():
    rng = np.random.default_rng(1)
    obs = rng.random((1, 2, 1, 6, 12)).astype(np.float32)  # [L, B, K, W, S]
    pols = [P.Policy("snapkv", 0.5, window=4, snap_kernel=3),
            P.Policy("snapkv", 0.5, window=3, snap_kernel=5)]
    pp = P.resolve_rows(pols, [12, 12], T_NEW)
    got = np.asarray(P.snap_scores(jnp.asarray(obs), pp))
    for b, (rows, ker) in enumerate([(3, 3), (2, 5)]):
        s = obs[0, b, 0, -rows:].sum(0)
        pad = np.pad(s, ker // 2)
        want = np.array([pad[i:i + ker].sum() / ker for i in range(12)])
        np.testing.assert_allclose(got[0, b, 0], want, rtol=1e-5)


def test_snapkv_kept_set_uses_pooled_scores():
    # one strong column at 3; pooling (kernel 3) spreads it to 2 and 4
    plen = 12
    pol = P.Policy("snapkv", 0.5, window=3, snap_kernel=3)  # C=6, keep 5: {10, 11} + 3
    pp = P.resolve_rows([pol], [plen], T_NEW)
    obs = np.zeros((1, 1, 1, 4, plen), np.float32)
    obs[..., 3] = 1.0
    obs[..., 7] = 0.2
    score = P.snap_scores(jnp.asarray(obs), pp)
    pos = jnp.arange(plen, dtype=jnp.int32)[None, None, None]
    prio = P.priority(score, pos, jnp.array([plen - 1]), pp, use_cap=False)
    idx, valid = P.select(prio, pos, pp.cap - 1, plen)
    assert set(np.asarray(idx)[0, 0, 0][np.asarray(valid)[0, 0, 0]].tolist()) == {2, 3, 4, 10, 11}


def test_choose_slot_evicts_lowest_outside_window_oldest_on_tie():
    pol = P.Policy("h2o", 6, window=2)
    pp = P.resolve_rows([pol], [10], T_NEW)
    pos = jnp.array([[[[0, 7, 3, 9, 5, 8]]]], jnp.int32)
    score = jnp.array([[[[2.0, 0.1, 1.0, 0.0, 1.0, 0.0]]]])
    # newest written = 9 (cur_pos), window 2 protects pos >= 9: slot 3 (score 0) protected
    slot = P.choose_slot(P.priority(score, pos, jnp.array([9]), pp), pos)
    assert int(slot[0, 0, 0]) == 5  # pos 8, score 0.0 (pos 9 with 0.0 is protected)
    score = score.at[..., 1].set(-1.0)
    slot = P.choose_slot(P.priority(score, pos, jnp.array([9]), pp), pos)
    assert int(slot[0, 0, 0]) == 1
    # ties -> oldest position
    score = jnp.array([[[[1.0, 0.5, 0.5, 0.0, 0.5, 0.9]]]])
    slot = P.choose_slot(P.priority(score, pos, jnp.array([9]), pp), pos)
    assert int(slot[0, 0, 0]) == 2  # pos 3 is the oldest among score 0.5
    # empty slots are filled first; slots beyond the row's C are never used
    pos2 = pos.at[..., 4].set(-1)
    slot = P.choose_slot(P.priority(score, pos2, jnp.array([9]), pp), pos2)
    assert int(slot[0, 0, 0]) == 4


def test_pool_heads_gqa_sum_and_layer_mean():
    rng = np.random.default_rng(2)
    x = rng.random((2, 2, 6, 5)).astype(np.float32)  # [L, B, H=6, S], K=2 -> groups of 3
    got = np.asarray(P.pool_heads(jnp.asarray(x), 2, jnp.array([False, True])))
    want0 = x[:, 0].reshape(2, 2, 3, 5).sum(2)
    want1 = np.repeat(x[:, 1].mean(1, keepdims=True), 2, axis=1)
    np.testing.assert_allclose(got[:, 0], want0, rtol=1e-6)
    np.testing.assert_allclose(got[:, 1], want1, rtol=1e-6)


def test_gumbel_softmax_equals_logit_formula():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2, 3, 7)).astype(np.float64)  # [L, B, S]
    logits[:, 1, 5:] = -np.inf  # masked slots
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs = probs / probs.sum(-1, keepdims=True)
    keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(3))
    tau = jnp.array([1.0, 1.5, 2.0])
    got = np.asarray(P.gumbel_softmax(jnp.asarray(probs[:, :, None], jnp.float32), tau,
                                      jnp.array([True, True, False]), keys))[:, :, 0]
    zeta = np.stack([np.asarray(jax.random.gumbel(keys[b], (2, 1, 7))) for b in range(3)], 1)
    zeta[:, 2] = 0.0
    z = (np.where(np.isfinite(logits), logits, -1e30) + zeta[:, :, 0]) / np.asarray(tau)[None, :,
                                                                                          None]
    want = np.exp(z - z.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert np.all(got[:, 1, 5:] == 0.0)


# --------------------------------------------------------------------------- decode simulation
@jax.jit
def _sim_step(score, spos, slot, probs, pp, step, cur):
    """One decode step of the pure policy functions on one (layer, row, head)."""
    cap = spos.shape[-1]
    written = (jnp.arange(cap) == slot)[None, None, None]
    inc = P.increments(probs[None, None, None], pp, 1, step)
    sc = P.observe(score[None, None, None], written, inc, pp)
    prio = P.priority(sc, spos[None, None, None], cur[None], pp)
    return sc[0, 0, 0], P.choose_slot(prio, spos[None, None, None])[0, 0, 0]


def _simulate(policy, plen, steps, bias_newest, seed=0, noise=False):
    """Drives the pure policy functions with synthetic attention (no model).

    Logits are random; with ``bias_newest`` the newest 10 tokens get +4, i.e.
    decode attention strongly favours recent tokens. Returns the kept positions
    after prefill and after every step.
    """
    rng = np.random.default_rng(seed)
    pp = P.resolve_rows([policy], [plen], steps, P.keyformer_variants([policy]))
    cap = int(pp.cap[0])
    total = plen + steps
    x_all = rng.normal(size=(total + 1, total)).astype(np.float32)
    # prefill: causal softmax column sums (H2O-style), one head
    xp = np.where(np.tril(np.ones((plen, plen))) > 0, x_all[:plen, :plen], -np.inf)
    pr = np.exp(xp - xp.max(-1, keepdims=True))
    pr /= pr.sum(-1, keepdims=True)
    score0 = pr.sum(0)
    pos = jnp.arange(plen, dtype=jnp.int32)[None, None, None]
    prio = P.priority(jnp.asarray(score0)[None, None, None], pos, jnp.array([plen - 1]), pp,
                      use_cap=False)
    idx, valid = P.select(prio, pos, pp.cap - 1, cap)
    idx, valid = np.asarray(idx)[0, 0, 0], np.asarray(valid)[0, 0, 0]
    spos = np.where(valid, idx, -1).astype(np.int32)
    sscore = np.where(valid, score0[idx], 0.0).astype(np.float32)
    slot = int(P.choose_slot(P.priority(jnp.asarray(sscore)[None, None, None],
                                        jnp.asarray(spos)[None, None, None],
                                        jnp.array([plen - 1]), pp),
                             jnp.asarray(spos)[None, None, None])[0, 0, 0])
    history = [set(spos[spos >= 0].tolist())]
    for t in range(steps):
        cur = plen + t
        spos[slot] = cur
        valid = spos >= 0
        x = x_all[cur, np.maximum(spos, 0)] + bias_newest * (spos > cur - 10)
        x = np.where(valid, x, -np.inf)
        pr = np.exp(x - x.max())
        pr /= pr.sum()
        sc, sl = _sim_step(jnp.asarray(sscore), jnp.asarray(spos), jnp.int32(slot),
                           jnp.asarray(pr, jnp.float32), pp, jnp.int32(t + 1), jnp.int32(cur))
        sscore, slot = np.array(sc), int(sl)
        kept = set(spos[spos >= 0].tolist())
        kept.discard(int(spos[slot]))  # evicted before the next token attends
        history.append(kept)
    return history, pp


def _reference_numpy(plen, steps, kv_cache, recent, bias_newest, seed=0):
    """The authors' mask bookkeeping (spec section 1.1, step 6) in NumPy, H2O-style scores."""
    rng = np.random.default_rng(seed)
    total = plen + steps
    x_all = rng.normal(size=(total + 1, total)).astype(np.float32)
    c = plen * kv_cache // 100
    w = c * recent // 100
    k = c - w
    xp = np.where(np.tril(np.ones((plen, plen))) > 0, x_all[:plen, :plen], -np.inf)
    pr = np.exp(xp - xp.max(-1, keepdims=True))
    pr /= pr.sum(-1, keepdims=True)
    score = pr.sum(0)
    n = plen
    mask = np.ones(n + 1, bool)
    tm = np.zeros(n + 1, bool)
    tm[-w:] = True
    tm[np.argsort(-score[: n - w], kind="stable")[:k]] = True
    mask = mask & tm
    score = score * mask[:-1]
    history = [set(np.flatnonzero(mask[:-1]).tolist())]
    for t in range(steps):
        cur = n
        x = x_all[cur, : n + 1] + bias_newest * (np.arange(n + 1) > cur - 10)
        x = np.where(mask, x, -np.inf)
        pr = np.exp(x - x.max())
        pr /= pr.sum()
        score = np.concatenate([score, [0.0]]) + pr * mask
        n += 1
        mask = np.concatenate([mask, [True]])
        tm = np.zeros(n + 1, bool)
        tm[-w:] = True
        tm[np.argsort(-score[: n - w], kind="stable")[:k]] = True
        mask = mask & tm
        score = score * mask[:-1]
        history.append(set(np.flatnonzero(mask[:-1]).tolist()))
    return history, w


@pytest.mark.parametrize("bias", [0.0, 4.0])
def test_reference_mode_matches_authors_mask_and_freezes_key_set(bias):
    plen, steps = 40, 30  # kv_cache=50, recent=30 -> C=20, w=6 (the spec's simulation)
    ref_hist, w = _reference_numpy(plen, steps, 50, 30, bias)
    pol = P.Policy("keyformer", 0.5, window=w, mode="reference", noise=False)
    ours, _ = _simulate(pol, plen, steps, bias)
    for t, (a, b) in enumerate(zip(ours, ref_hist, strict=True)):
        assert a == b, f"step {t}: ours {sorted(a)} vs reference {sorted(b)}"
    keys0 = {p for p in ours[0] if p < plen - w}
    for kept in ours:
        assert {p for p in kept if p < plen - w} == keys0  # frozen key set
        assert not any(p >= plen and p < max(kept) - w + 1 for p in kept)  # no generated keys


def test_paper_mode_lets_tokens_leaving_the_window_become_keys():
    plen, steps, w = 40, 30, 6
    pol = P.Policy("keyformer", 0.5, window=w, mode="paper", noise=False)
    hist, _ = _simulate(pol, plen, steps, bias_newest=4.0)
    keys0 = {p for p in hist[0] if p < plen - w}
    final = hist[-1]
    newest = max(final)
    generated_keys = {p for p in final if plen <= p <= newest - w}
    assert generated_keys, "no generated token outside the window was kept as a key"
    assert {p for p in final if p < plen - w} != keys0
    # same logits in reference mode: nothing outside the window re-enters
    ref, _ = _simulate(P.Policy("keyformer", 0.5, window=w, mode="reference", noise=False),
                       plen, steps, bias_newest=4.0)
    assert not {p for p in ref[-1] if plen <= p <= max(ref[-1]) - w}


def test_budget_stays_constant_and_window_protected():
    pol = P.Policy("h2o", 0.5)
    hist, pp = _simulate(pol, 30, 20, bias_newest=0.0)
    cap, w = int(pp.cap[0]), int(pp.window[0])
    for t, kept in enumerate(hist[1:]):
        cur = 30 + t
        assert len(kept) == cap - 1
        assert set(range(cur + 2 - w, cur + 1)) <= kept


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(name="h2o", budget=0.0), "fraction must be in"),
        (dict(name="h2o", budget=1.5), "fraction must be in"),
        (dict(name="h2o", budget=1), "slot count must be >= 2"),
        (dict(name="nope"), "Policy.name"),
        (dict(name="keyformer", mode="beam"), "Policy.mode"),
        (dict(name="h2o", recent=1.0), "recent"),
        (dict(name="snapkv", snap_kernel=4), "snap_kernel"),
    ],
)
def test_bad_policy_specs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        P.Policy(**kwargs)


def test_budgets_larger_than_cache_or_too_small_raise():
    assert int(P.resolve_rows([P.Policy("h2o", 100)], [50], 10).cap[0]) == 60  # clamped
    with pytest.raises(ValueError, match="no evictable slot"):
        P.resolve_rows([P.Policy("streaming", 0.1)], [40], 10)  # C=4, sinks 4
    with pytest.raises(ValueError, match="was not computed at prefill"):
        P.resolve_rows([P.Policy("keyformer", 0.5, seed=3)], [40], 10, variants=[(0, 1.0, True)])
