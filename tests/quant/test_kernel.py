"""The C++ kernel (jax.ffi): same numerics as the numpy reference of its quantized arithmetic,
close to the f32 product, gradients, dispatch, and the fallback when the extension is absent."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm import quant as Q

ROOT = pathlib.Path(__file__).parents[2]
needs_kernel = pytest.mark.skipif(
    not Q.kernel_available(), reason=f"kernel extension: {Q.kernel_status()['reason']}"
)

# (M, K, N): decode shapes, small batch, M above the 16-row register block, N not a multiple
# of the 8-row thread chunk
SHAPES = [(1, 576, 1536), (1, 1536, 19), (1, 96, 7), (3, 1536, 576), (16, 64, 40), (5, 96, 13), (19, 128, 33)]


def _kernel_calls(hlo_text: str) -> int:
    return hlo_text.count("@jaxlm_qmm(")


def _check_against_reference(y, x, w, act_bits=16):
    ref, scale = Q.reference_matmul_np(x, w, act_bits)
    nb = w.K // Q.BLOCK
    err = np.abs(np.asarray(y, np.float64) - ref)
    assert np.all(err <= (3 * nb + 8) * 2.0**-23 * scale), (err / np.maximum(scale, 1e-30)).max()
    f32 = x.astype(np.float64) @ Q.dequantize_rows_np(w).astype(np.float64).T
    rel_rms = np.sqrt(np.mean((np.asarray(y) - f32) ** 2) / np.mean(f32**2))
    # activation rounding: 8 bits ~0.3-1% of the output; 16 bits ~1/258 of that
    assert rel_rms < (2e-2 if act_bits == 8 else 2e-4), rel_rms


@needs_kernel
@pytest.mark.parametrize("fmt", Q.FORMATS)
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_kernel_equals_reference_arithmetic(fmt, m, k, n):
    rng = np.random.default_rng(m * 1000 + n)
    w = Q.quantize_weight(rng.standard_normal((k, n)).astype(np.float32), fmt)
    x = rng.standard_normal((m, k)).astype(np.float32) * 3.0
    x[0, :32] = 0.0  # an all-zero activation block (scale 0)
    for threads, bits in ((1, 16), (2, 16), (3, 16), (2, 8)):
        y = jax.jit(lambda a, b, t=threads, ab=bits: Q.kernel_matmul(a, b, num_threads=t, act_bits=ab))(x, w)
        assert y.shape == (m, n) and y.dtype == jnp.float32
        _check_against_reference(y, x, w, bits)


@needs_kernel
def test_kernel_rank3_weight_and_zero_input():
    rng = np.random.default_rng(5)
    w = Q.quantize_weight(rng.standard_normal((3, 64, 96)).astype(np.float32), "q4_1", n_in=2)
    x = rng.standard_normal((2, 3, 64)).astype(np.float32)
    y = Q.kernel_matmul(x, w)
    assert y.shape == (2, 96)
    _check_against_reference(np.asarray(y), x.reshape(2, -1), w)
    np.testing.assert_array_equal(np.asarray(Q.kernel_matmul(np.zeros_like(x), w)), 0.0)


@needs_kernel
def test_gradient_uses_dequantized_transpose_and_weights_refuse():
    rng = np.random.default_rng(6)
    w = Q.quantize_weight(rng.standard_normal((64, 48)).astype(np.float32), "q8_0")
    x = rng.standard_normal((2, 64)).astype(np.float32)
    g = rng.standard_normal((2, 48)).astype(np.float32)
    gx = jax.grad(lambda a: jnp.sum(Q.kernel_matmul(a, w) * g))(x)
    np.testing.assert_allclose(np.asarray(gx), g @ Q.dequantize_rows_np(w), rtol=1e-5, atol=1e-5)
    wj = jax.tree.map(jnp.asarray, w)
    with pytest.raises(Q.QuantError, match="not defined"):
        jax.grad(lambda d: jnp.sum(Q.kernel_matmul(x, wj.replace(d=d))))(wj.d.astype(jnp.float32).astype(jnp.float16))


@needs_kernel
def test_auto_dispatch_kernel_for_decode_xla_for_prefill():
    rng = np.random.default_rng(7)
    w = Q.quantize_weight(rng.standard_normal((64, 40)).astype(np.float32), "q4_0")
    x1 = jnp.asarray(rng.standard_normal((1, 4, 64)), jnp.float32)
    x2 = jnp.asarray(rng.standard_normal((2, 20, 64)), jnp.float32)
    assert Q.choose_impl(x1, w) == "kernel" and Q.choose_impl(x2, w) == "xla"
    np.testing.assert_array_equal(np.asarray(jax.jit(Q.matmul)(x1, w)), np.asarray(Q.kernel_matmul(x1, w)))
    assert "jaxlm_qmm" not in jax.jit(Q.matmul).lower(x2, w).as_text()
    assert _kernel_calls(jax.jit(Q.matmul).lower(x1, w).as_text()) == 1


_CHILD = r"""
import json, numpy as np, jax
from jaxlm import quant as Q
rng = np.random.default_rng(8)
w = Q.quantize_weight(rng.standard_normal((96, 37)).astype(np.float32), "q4_1")
x = rng.standard_normal((3, 96)).astype(np.float32)
st = Q.kernel_status()
out = {"status": st, "impl": Q.choose_impl(x, w)}
y = np.asarray(jax.jit(Q.matmul)(x, w))
out["y"] = y.tolist()
if st["available"]:
    ref, scale = Q.reference_matmul_np(x, w)
    out["ok"] = bool(np.all(np.abs(y - ref) <= (3 * 3 + 8) * 2.0**-23 * scale))
else:
    want = x.astype(np.float64) @ Q.dequantize_rows_np(w).astype(np.float64).T
    out["ok"] = bool(np.abs(y - want).max() <= 1e-5 * np.abs(want).max())
    try:
        Q.kernel_matmul(x, w)
        out["raised"] = ""
    except Q.QuantError as e:
        out["raised"] = str(e)
print(json.dumps(out))
"""


def _child(**env):
    e = dict(os.environ, JAX_PLATFORMS="cpu", **env)
    r = subprocess.run([sys.executable, "-c", _CHILD], cwd=ROOT, env=e, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_fallback_when_kernel_disabled():
    out = _child(JAXLM_DISABLE_KERNEL="1")
    assert out["status"]["available"] is False and "JAXLM_DISABLE_KERNEL" in out["status"]["reason"]
    assert out["impl"] == "xla" and out["ok"]
    assert "not available" in out["raised"] and "JAXLM_DISABLE_KERNEL" in out["raised"]


@needs_kernel
def test_scalar_path_matches_reference():
    out = _child(JAXLM_KERNEL_SCALAR="1", JAXLM_KERNEL_THREADS="3")
    assert out["status"]["isa"] == "scalar" and out["status"]["default_threads"] == 3
    assert out["impl"] == "kernel" and out["ok"]


_CHILD_PATHS = r"""
import json, numpy as np, jax
from jaxlm import quant as Q
out = {"status": Q.kernel_status(), "worst": 0.0, "cases": 0}
for fmt in Q.FORMATS:
    for m, k, n in ((2, 64, 9), (16, 96, 40), (19, 128, 33)):
        rng = np.random.default_rng(m * 100 + n)
        w = Q.quantize_weight(rng.standard_normal((k, n)).astype(np.float32), fmt)
        x = rng.standard_normal((m, k)).astype(np.float32) * 3.0
        for bits in (16, 8):
            y = np.asarray(Q.kernel_matmul(x, w, num_threads=2, act_bits=bits), np.float64)
            ref, scale = Q.reference_matmul_np(x, w, bits)
            out["worst"] = max(out["worst"], float((np.abs(y - ref) / ((3 * (k // 32) + 8) * 2.0**-23 * scale)).max()))
            out["cases"] += 1
print(json.dumps(out))
"""


@needs_kernel
@pytest.mark.parametrize("cap,isa", [("avx2", "avx2+fma+f16c"), ("scalar", "scalar")])
def test_each_instruction_set_matches_reference_for_batched_products(cap, isa):
    # in-process runs use the best path of this CPU (the AVX-512 token-lane tile for M > 1 where
    # the CPU has AVX-512 VNNI); capping the level tests the AVX2 row path and the scalar path
    e = dict(os.environ, JAX_PLATFORMS="cpu", JAXLM_KERNEL_ISA=cap)
    r = subprocess.run([sys.executable, "-c", _CHILD_PATHS], cwd=ROOT, env=e, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    if cap == "avx2" and Q.kernel_status()["isa"] == "scalar":
        isa = "scalar"  # a CPU without AVX2 stays scalar
    assert out["status"]["isa"] == isa
    assert out["cases"] == len(Q.FORMATS) * 6 and out["worst"] <= 1.0, out


def test_misspelt_isa_cap_is_an_error(monkeypatch):
    from jaxlm.quant import kernel as K

    monkeypatch.setenv(K.ISA_ENV, "AVX2")
    with pytest.raises(Q.QuantError, match="JAXLM_KERNEL_ISA='AVX2': use one of scalar, avx2, avx512"):
        K._load.__wrapped__()  # the uncached loader: the cached library stays as it is


@needs_kernel
def test_vmap_over_x():
    rng = np.random.default_rng(9)
    w = Q.quantize_weight(rng.standard_normal((64, 24)).astype(np.float32), "q4_1")
    xs = rng.standard_normal((3, 2, 64)).astype(np.float32)
    y = jax.vmap(lambda x: Q.kernel_matmul(x, w))(xs)
    for i in range(3):
        np.testing.assert_array_equal(np.asarray(y[i]), np.asarray(Q.kernel_matmul(xs[i], w)))


@needs_kernel
def test_kernel_tied_head_rows_first():
    rng = np.random.default_rng(10)
    table = rng.standard_normal((70, 96)).astype(np.float32)  # [vocab, d]
    w = Q.quantize_weight(table, "q8_0", rows_first=True)
    x = rng.standard_normal((2, 96)).astype(np.float32)
    y = Q.kernel_matmul(x, w)
    assert y.shape == (2, 70)
    _check_against_reference(np.asarray(y), x, w)


@needs_kernel
@pytest.mark.parametrize("fmt", Q.FORMATS)
@pytest.mark.parametrize("m", [1, 3, 17])
def test_fused_call_equals_separate_calls_bit_for_bit(fmt, m):
    # q/k/v-shaped weights (different widths, a rank-3 output) quantized from fresh random data
    rng = np.random.default_rng(11 + m)
    shapes = [(96, 4, 24), (96, 40), (96, 2, 8)]
    ws = [Q.quantize_weight(rng.standard_normal(s).astype(np.float32), fmt) for s in shapes]
    x = rng.standard_normal((m, 2, 96)).astype(np.float32) * 2.0
    for threads in (1, 2, 3):
        fused = jax.jit(lambda a, t=threads: Q.kernel_matmul_many(a, ws, num_threads=t))(x)
        assert _kernel_calls(jax.jit(lambda a: Q.kernel_matmul_many(a, ws)).lower(x).as_text()) == 1
        for y, w in zip(fused, ws):
            alone = Q.kernel_matmul(x, w, num_threads=threads)
            assert y.shape == (m, 2, *w.out_shape)
            np.testing.assert_array_equal(np.asarray(y), np.asarray(alone))
            _check_against_reference(np.asarray(y).reshape(m * 2, -1), x.reshape(m * 2, -1), w)


@needs_kernel
def test_fused_call_gradient_and_unused_outputs():
    rng = np.random.default_rng(12)
    ws = [Q.quantize_weight(rng.standard_normal((64, n)).astype(np.float32), "q4_1") for n in (48, 16, 16)]
    x = rng.standard_normal((2, 64)).astype(np.float32)
    gs = [rng.standard_normal((2, w.N)).astype(np.float32) for w in ws]

    def loss(a, use):
        return sum(jnp.sum(y * g) for y, g, u in zip(Q.kernel_matmul_many(a, ws), gs, use) if u)

    for use in [(1, 1, 1), (1, 0, 1), (0, 1, 0)]:
        want = sum(g @ Q.dequantize_rows_np(w) for g, w, u in zip(gs, ws, use) if u)
        gx = jax.grad(loss)(x, use)
        np.testing.assert_allclose(np.asarray(gx), want, rtol=1e-5, atol=1e-5)


@needs_kernel
def test_matmul_many_dispatch_and_fallbacks():
    rng = np.random.default_rng(13)
    a, b = (Q.quantize_weight(rng.standard_normal((64, 32)).astype(np.float32), "q8_0") for _ in range(2))
    c = Q.quantize_weight(rng.standard_normal((64, 32)).astype(np.float32), "q4_0")
    x1 = jnp.asarray(rng.standard_normal((1, 64)), jnp.float32)
    x2 = jnp.asarray(rng.standard_normal((40, 64)), jnp.float32)  # prefill-sized: XLA
    assert _kernel_calls(jax.jit(lambda x: Q.matmul_many(x, [a, b])).lower(x1).as_text()) == 1
    assert _kernel_calls(jax.jit(lambda x: Q.matmul_many(x, [a, c])).lower(x1).as_text()) == 2
    assert "jaxlm_qmm" not in jax.jit(lambda x: Q.matmul_many(x, [a, b])).lower(x2).as_text()
    for x in (x1, x2):
        for ws in ([a, b], [a, c]):
            for y, w in zip(Q.matmul_many(x, ws), ws):
                np.testing.assert_array_equal(np.asarray(y), np.asarray(Q.matmul(x, w)))
    with pytest.raises(Q.QuantError, match="one kernel format"):
        Q.kernel_matmul_many(x1, [a, c])
    d = Q.quantize_weight(rng.standard_normal((96, 32)).astype(np.float32), "q8_0")
    with pytest.raises(Q.QuantError, match="same"):
        Q.kernel_matmul_many(x1, [a, d])


@needs_kernel
def test_16_bit_activations_shrink_the_error_and_act_bits_is_checked():
    rng = np.random.default_rng(14)
    w = Q.quantize_weight(rng.standard_normal((256, 64)).astype(np.float32), "q4_1")
    x = (rng.standard_normal((1, 256)) * np.exp(rng.standard_normal((1, 256)))).astype(np.float32)
    exact = x.astype(np.float64) @ Q.dequantize_rows_np(w).astype(np.float64).T
    err = {ab: np.abs(np.asarray(Q.kernel_matmul(x, w, act_bits=ab)) - exact).max() for ab in (8, 16)}
    assert err[16] < err[8] / 50, err
    ws = [w, Q.quantize_weight(rng.standard_normal((256, 16)).astype(np.float32), "q4_1")]
    for ab in (8, 16):
        fused = Q.kernel_matmul_many(x, ws, act_bits=ab)
        for y, wi in zip(fused, ws):
            np.testing.assert_array_equal(np.asarray(y), np.asarray(Q.kernel_matmul(x, wi, act_bits=ab)))
    for bad in (0, 2, 32, True):
        with pytest.raises(Q.QuantError, match="act_bits must be 8 or 16"):
            Q.kernel_matmul(x, w, act_bits=bad)
