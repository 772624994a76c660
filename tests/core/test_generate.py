"""Generation: greedy equals step-by-step argmax, no retrace, padding, sampling, scoring."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.core import MODELS, init, init_cache
from jaxlm.core import generate as gen
from jaxlm.core.generate import SamplingConfig, generate, sample_logits, score
from tests._reference import full_recompute_logits, greedy_by_full_recompute


@pytest.fixture(scope="module")
def model():
    cfg = MODELS.get("smollm2-135m_test")
    return cfg, init(jax.random.PRNGKey(0), cfg)


def _greedy_reference(params, cfg, prompt, n):
    return greedy_by_full_recompute(params, cfg, prompt, n)


def test_greedy_matches_full_recompute(model):
    cfg, params = model
    prompt = [5, 17, 3, 99, 42]
    out = generate(params, cfg, [prompt], max_new_tokens=8)
    assert list(np.asarray(out.tokens[0])) == _greedy_reference(params, cfg, prompt, 8)
    assert int(out.lengths[0]) == 8


def test_left_padded_batch_equals_individual_runs(model):
    cfg, params = model
    prompts = [[1, 2, 3], [9, 8, 7, 6, 5, 4, 3], [11]]
    batch = generate(params, cfg, prompts, max_new_tokens=6)
    for i, p in enumerate(prompts):
        single = generate(params, cfg, [p], max_new_tokens=6)
        assert list(np.asarray(batch.tokens[i])) == list(np.asarray(single.tokens[0]))


def test_stop_tokens_and_lengths(model):
    cfg, params = model
    prompt = [5, 17, 3]
    free = _greedy_reference(params, cfg, prompt, 6)
    stop = free[2]
    out = generate(params, cfg, [prompt], max_new_tokens=6, stop_ids=[stop], pad_id=0)
    n = free.index(stop)
    assert int(out.lengths[0]) == n
    assert list(np.asarray(out.tokens[0, :n])) == free[:n]
    assert all(int(t) == 0 for t in out.tokens[0, n:])


def test_decode_loop_does_not_retrace(model):
    cfg, params = model
    counted = chex.assert_max_traces(gen.decode_step, n=1)
    step = jax.jit(counted, static_argnames=("cfg",))
    cache = init_cache(cfg, 2, 16)
    tok = jnp.array([1, 2], jnp.int32)
    for _ in range(5):
        logits, cache = step(params, cfg, tok, cache)
        tok = jnp.argmax(logits, -1).astype(jnp.int32)
    # the generate loop compiles once per (batch, bucket, max_new) and reuses it
    gen._generate.clear_cache()
    generate(params, cfg, [[1, 2, 3]], max_new_tokens=4)
    generate(params, cfg, [[4, 5, 6, 7]], max_new_tokens=4)
    assert gen._generate._cache_size() == 1


def test_sampling_is_seeded_and_respects_top_k():
    logits = jax.random.normal(jax.random.PRNGKey(0), (4, 50))
    s = SamplingConfig(temperature=1.0, top_k=3)
    a = sample_logits(logits, jax.random.PRNGKey(1), s)
    b = sample_logits(logits, jax.random.PRNGKey(1), s)
    assert (a == b).all()
    top3 = jax.lax.top_k(logits, 3)[1]
    draws = jax.vmap(lambda k: sample_logits(logits, k, s))(jax.random.split(jax.random.PRNGKey(2), 64))
    assert bool(jnp.all(jnp.any(draws[..., None] == top3[None], axis=-1)))


def test_top_p_keeps_the_nucleus():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    s = SamplingConfig(temperature=1.0, top_p=0.7)  # nucleus = {0, 1}
    draws = jax.vmap(lambda k: sample_logits(logits, k, s))(jax.random.split(jax.random.PRNGKey(0), 200))
    assert set(np.asarray(draws).ravel().tolist()) == {0, 1}


def test_score_equals_summed_token_logprobs(model):
    cfg, params = model
    prompt, conts = [3, 4, 5], [[6], [7, 8, 9]]
    total, per_tok = score(params, cfg, prompt, conts)
    for c, tot, pt in zip(conts, total, per_tok):
        lp = jax.nn.log_softmax(full_recompute_logits(params, cfg, prompt + c), -1)
        ref = [float(lp[len(prompt) - 1 + j, tok]) for j, tok in enumerate(c)]
        np.testing.assert_allclose(pt, ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(tot, sum(ref), rtol=1e-5, atol=1e-5)


def test_prompt_longer_than_context_is_a_clear_error(model):
    cfg, params = model
    with pytest.raises(ValueError, match="exceeds the model context"):
        generate(params, cfg, [[1] * (cfg.max_seq_len - 4)], max_new_tokens=32)
    with pytest.raises(ValueError, match="at least one token"):
        generate(params, cfg, [[]], max_new_tokens=2)
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(temperature=-1)


def test_key_mask_and_positions_equal_a_masked_full_recompute(model):
    """generate(positions, key_mask) == greedy by full forwards with the same positions and
    a key bias over the masked prompt slots (generated tokens never masked)."""
    cfg, params = model
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, 256, 9).tolist(), rng.integers(1, 256, 6).tolist()]
    masks = [rng.random(9) > 0.3, rng.random(6) > 0.3]
    pos = [list(range(2, 11)), list(range(6))]
    out = generate(params, cfg, prompts, max_new_tokens=5, positions=pos,
                   key_mask=[m.tolist() for m in masks])
    for i, (p, m, ps) in enumerate(zip(prompts, masks, pos)):
        seq, sp, keep = list(p), list(ps), list(m)
        for _ in range(5):
            logits = full_recompute_logits(params, cfg, seq, positions=sp, keep=keep)[-1]
            seq.append(int(jnp.argmax(logits)))
            sp.append(sp[-1] + 1)
            keep.append(True)
        assert list(np.asarray(out.tokens[i])) == seq[len(p):]
    with pytest.raises(ValueError, match="key_mask needs one entry per prompt token"):
        generate(params, cfg, prompts, max_new_tokens=2, key_mask=[[True], [True]])
