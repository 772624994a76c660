"""Logits processors in the generation loop: bias, constraints, per-row finish, no recompile."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

import pytest

from jaxlm.core import MODELS, init, init_cache
from jaxlm.core import generate as gen
from jaxlm.core.generate import LogitBias, SamplingConfig, generate, sample_logits


@pytest.fixture(scope="module")
def model():
    cfg = MODELS.get("smollm2-135m_test")
    return cfg, init(jax.random.PRNGKey(0), cfg)


@struct.dataclass
class ForceSequence:
    """Allows only targets[row, step]; finishes a row after lens[row] tokens."""

    targets: jax.Array  # [B, N]
    lens: jax.Array  # [B]
    name: str = struct.field(pytree_node=False, default="force")

    def init(self, batch):
        return jnp.zeros((batch,), jnp.int32)

    def apply(self, state, logits):
        want = jnp.take_along_axis(self.targets, jnp.minimum(state, self.targets.shape[1] - 1)[:, None], 1)
        ids = jnp.arange(logits.shape[-1])[None]
        return jnp.where(ids == want, logits, -jnp.inf)

    def advance(self, state, tokens):
        return state + 1

    def finished(self, state):
        return state >= self.lens


def _reference_loop(params, cfg, prompt, n, key, sampling, bias=None):
    """Step-by-step decode with the public prefill/decode_step and the same keys."""
    toks, mask = gen.pad_prompts([prompt], 0, 16)
    cache = init_cache(cfg, 1, toks.shape[1] + n)
    logits, cache = gen.prefill(params, cfg, jnp.asarray(toks), jnp.asarray(mask), cache)
    out = []
    for step in range(n):
        if bias is not None:
            logits = logits + bias
        tok = sample_logits(logits, jax.random.fold_in(key, step), sampling)
        out.append(int(tok[0]))
        logits, cache = gen.decode_step(params, cfg, tok, cache)
    return out


def test_no_processor_is_bit_for_bit_the_plain_loop(model):
    cfg, params = model
    key = jax.random.PRNGKey(3)
    s = SamplingConfig(temperature=0.9, top_k=40, top_p=0.9)
    prompt = [5, 17, 3, 99]
    out = generate(params, cfg, [prompt], max_new_tokens=6, key=key, sampling=s)
    assert list(np.asarray(out.tokens[0])) == _reference_loop(params, cfg, prompt, 6, key, s)
    zero = LogitBias(jnp.zeros((1, cfg.vocab_size), jnp.float32))
    with_zero = generate(params, cfg, [prompt], max_new_tokens=6, key=key, sampling=s, processor=zero)
    np.testing.assert_array_equal(np.asarray(with_zero.tokens), np.asarray(out.tokens))


def test_logit_bias_is_per_row_and_matches_a_biased_reference(model):
    cfg, params = model
    prompts = [[5, 17, 3], [9, 8, 7, 6]]
    free = generate(params, cfg, prompts, max_new_tokens=5)
    rng = np.random.default_rng(0)
    bias = rng.normal(0.0, 0.5, (2, cfg.vocab_size)).astype(np.float32)
    bias[0, int(free.tokens[0, 0])] = -np.inf  # forbid row 0's greedy first token only
    out = generate(params, cfg, prompts, max_new_tokens=5, processor=LogitBias(jnp.asarray(bias)))
    assert int(out.tokens[0, 0]) != int(free.tokens[0, 0])
    for i, p in enumerate(prompts):
        ref = _reference_loop(params, cfg, p, 5, jax.random.PRNGKey(0), SamplingConfig(), bias[i : i + 1])
        assert list(np.asarray(out.tokens[i])) == ref
    assert list(np.asarray(out.lengths)) == [5, 5]
    with pytest.raises(ValueError, match="one bias row per prompt"):
        generate(params, cfg, prompts, max_new_tokens=2, processor=LogitBias(jnp.asarray(bias[:1])))


@pytest.mark.parametrize(
    "sampling",
    [SamplingConfig(), SamplingConfig(temperature=1.3), SamplingConfig(temperature=1.0, top_k=50),
     SamplingConfig(temperature=1.0, top_p=0.95), SamplingConfig(temperature=0.7, top_k=5, top_p=0.5)],
)
def test_constraint_and_per_row_finish_under_every_sampler(model, sampling):
    cfg, params = model
    targets = jnp.array([[11, 12, 13, 14, 15, 16], [21, 22, 23, 24, 25, 26], [31, 32, 33, 34, 35, 36]])
    lens = jnp.array([2, 6, 4])
    out = generate(params, cfg, [[1, 2], [3, 4, 5], [6]], max_new_tokens=6, key=jax.random.PRNGKey(7),
                   sampling=sampling, processor=ForceSequence(targets, lens), pad_id=0)
    assert list(np.asarray(out.lengths)) == [2, 6, 4]
    toks = np.asarray(out.tokens)
    for i, n in enumerate([2, 6, 4]):
        assert list(toks[i, :n]) == list(np.asarray(targets[i, :n]))
        assert all(t == 0 for t in toks[i, n:])


def test_stop_token_still_wins_and_already_finished_rows_emit_nothing(model):
    cfg, params = model
    targets = jnp.array([[11, 12, 7, 14], [21, 22, 23, 24]])
    out = generate(params, cfg, [[1, 2], [3]], max_new_tokens=4, stop_ids=[7],
                   processor=ForceSequence(targets, jnp.array([4, 0])))
    assert list(np.asarray(out.lengths)) == [2, 0]
    assert list(np.asarray(out.tokens[0])) == [11, 12, 0, 0]


def test_new_processor_values_do_not_recompile(model):
    cfg, params = model
    gen._generate.clear_cache()
    for seed in range(3):
        bias = jax.random.normal(jax.random.PRNGKey(seed), (2, cfg.vocab_size))
        generate(params, cfg, [[1, 2, 3], [4]], max_new_tokens=3, processor=LogitBias(bias))
    targets = jnp.arange(12).reshape(2, 6) + 100
    for lens in ([1, 2], [3, 3]):
        generate(params, cfg, [[1, 2, 3], [4]], max_new_tokens=3,
                 processor=ForceSequence(targets, jnp.array(lens)))
    assert gen._generate._cache_size() == 2  # one per processor type, none per value


def test_top_p_and_top_k_never_pick_minus_inf_entries():
    logits = jax.random.normal(jax.random.PRNGKey(0), (3, 64)) * 3.0
    allowed = np.zeros((3, 64), bool)
    allowed[0, [1, 5]] = True
    allowed[1, [63]] = True
    allowed[2, :40:3] = True
    masked = jnp.where(jnp.asarray(allowed), logits, -jnp.inf)
    keys = jax.random.split(jax.random.PRNGKey(1), 300)
    for s in (SamplingConfig(temperature=1.0, top_p=0.99), SamplingConfig(temperature=2.0, top_p=0.3),
              SamplingConfig(temperature=1.0, top_k=10), SamplingConfig(temperature=1.0, top_k=10, top_p=0.9),
              SamplingConfig(temperature=5.0)):
        draws = np.asarray(jax.vmap(lambda k: sample_logits(masked, k, s))(keys))
        for row in range(3):
            assert allowed[row, draws[:, row]].all(), (s, row)
    assert list(np.asarray(sample_logits(masked, keys[0], SamplingConfig()))) == [
        int(np.where(allowed[r], np.asarray(logits[r]), -np.inf).argmax()) for r in range(3)]
