"""The packed scorer equals the per-candidate full forward (and equalled the forks it replaced)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.core import MODELS, init
from jaxlm.core.score import bucket_len, prefill_prefix, score_packed
from jaxlm.core.transformer import cast_params, stack_layers
from jaxlm.llm.packing import empty_packed, pack_candidates
from tests._reference import full_recompute_logits


def _packed(cfg, shared=0, seed=0, g=3, t=48, n=24):
    """Fixed random requests packed the way RecScorer/LocalBackend do; the first
    ``shared`` prompt tokens are common to all rows and left out of the rows."""
    rng = np.random.default_rng(seed)
    common = rng.integers(1, cfg.vocab_size, shared).tolist()
    reqs = []
    for _ in range(g):
        p = common + rng.integers(1, cfg.vocab_size, int(rng.integers(3, 9))).tolist()
        cs = [rng.integers(1, cfg.vocab_size, int(rng.integers(1, 5))).tolist()
              for _ in range(int(rng.integers(1, 5)))]
        reqs.append((p, cs))
    toks, pos, seg, pred, tgt = empty_packed(g, t, n, 0)
    spans = []
    for i, (p, cs) in enumerate(reqs):
        own = p[shared:]
        toks[i, :len(own)], pos[i, :len(own)], seg[i, :len(own)] = own, shared + np.arange(len(own)), 0
        sp, _, _ = pack_candidates(toks, pos, seg, pred, tgt, i, cs, slot=len(own),
                                   first_pos=len(p), anchor=len(own) - 1)
        spans.append(sp)
    return reqs, common, (toks, pos, seg, pred, tgt), spans


def _reference(params, cfg, reqs):
    """Per-token log-probs of every candidate from a full forward of prompt + candidate
    (right-padded to one length: one compile per model, see tests/_reference.py)."""
    out = []
    for p, cs in reqs:
        row = []
        for c in cs:
            lp = np.asarray(jax.nn.log_softmax(full_recompute_logits(params, cfg, p + c), -1))
            row.append(np.array([lp[len(p) - 1 + j, tok] for j, tok in enumerate(c)]))
        out.append(row)
    return out


@pytest.mark.parametrize("name", ["smollm2-135m_test", "gptj-tiny_test", "mpt-tiny_test",
                                  "cerebras-gpt-tiny_test"])
@pytest.mark.parametrize("shared", [0, 6])
@pytest.mark.parametrize("fast", [False, True])
def test_score_packed_equals_full_forward(name, shared, fast):
    cfg = MODELS.get(name)
    params = init(jax.random.PRNGKey(0), cfg)
    reqs, common, arrs, spans = _packed(cfg, shared)
    ref = _reference(params, cfg, reqs)
    p = stack_layers(params) if fast else params
    prefix = prefill_prefix(p, jnp.asarray([common]), cfg=cfg, scan=fast) if shared else None
    lp = np.asarray(score_packed(p, *map(jnp.asarray, arrs), prefix, cfg=cfg, scan=fast,
                                 chunk=16 if fast else None))
    for i, sp in enumerate(spans):
        for (a, b), r in zip(sp, ref[i], strict=True):
            np.testing.assert_allclose(lp[i, a:b], r, rtol=1e-5, atol=1e-5)


def test_bf16_policy_scores_close_to_f32():
    cfg = MODELS.get("smollm2-135m_test")
    params = init(jax.random.PRNGKey(0), cfg)
    reqs, _, arrs, spans = _packed(cfg)
    ref = np.asarray(score_packed(params, *map(jnp.asarray, arrs), cfg=cfg))
    bcfg = dataclasses.replace(cfg, matmul_dtype="bfloat16", attn_dtype="bfloat16")
    bp = stack_layers(cast_params(params, bcfg))
    lp = np.asarray(score_packed(bp, *map(jnp.asarray, arrs), cfg=bcfg, scan=True, chunk=16))
    mask = np.zeros_like(lp, bool)
    for i, sp in enumerate(spans):
        mask[i, sp[0][0]:sp[-1][1]] = True
    err = np.abs(lp - ref)[mask].max()
    assert 0 < err < 0.05 * np.abs(ref[mask]).max()


def test_bucket_len():
    assert [bucket_len(n, 8) for n in (1, 8, 9, 200, 256, 257, 600)] == [8, 8, 16, 256, 256, 512, 768]
    assert [bucket_len(n, 32, multiple=32) for n in (1, 32, 33)] == [32, 32, 64]
    with pytest.raises(ValueError, match="n must be > 0"):
        bucket_len(0)
