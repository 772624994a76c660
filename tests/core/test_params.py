"""param_spec drives init, logical axes and shape checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.core import MODELS
from jaxlm.core.params import (ParamInfo, abstract_params, check_params, infer_config, init,
                               logical_axes, param_spec)

PRESETS = ["smollm2-135m_test", "gptj-tiny_test", "mpt-tiny_test", "cerebras-gpt-tiny_test",
           "llama-20m_test"]


def _is_info(x):
    return isinstance(x, ParamInfo)


@pytest.mark.parametrize("name", PRESETS)
def test_init_follows_the_spec(name):
    cfg = MODELS.get(name)
    params = init(jax.random.PRNGKey(1), cfg)
    spec = param_spec(cfg)
    assert jax.tree.structure(spec, is_leaf=_is_info) == jax.tree.structure(params)
    for info, x in zip(jax.tree.leaves(spec, is_leaf=_is_info), jax.tree.leaves(params)):
        assert x.shape == info.shape and x.dtype == jnp.dtype(info.dtype)
        assert len(info.logical_axes) == len(info.shape)
    n = sum(x.size for x in jax.tree.leaves(params))
    assert n == cfg.num_params()
    check_params(params, cfg, "fresh init")
    inferred = infer_config(params)
    for f in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff",
              "norm", "mlp", "parallel_block", "tie_embeddings", "use_bias", "param_dtype"):
        assert getattr(inferred, f) == getattr(cfg, f), f
    assert (inferred.pos == "learned") == (cfg.pos == "learned")


def test_init_values_are_the_documented_draws():
    cfg = MODELS.get("smollm2-135m_test")
    key = jax.random.PRNGKey(5)
    p = init(key, cfg)
    keys = jax.random.split(key, cfg.n_layers + 3)
    np.testing.assert_array_equal(p["embed"], 0.02 * jax.random.normal(keys[0], p["embed"].shape))
    kq = jax.random.split(keys[3 + 1], 5)[0]
    np.testing.assert_array_equal(p["layers"][1]["attn"]["wq"],
                                  0.02 * jax.random.normal(kq, p["layers"][1]["attn"]["wq"].shape))
    wo_std = float(jnp.std(p["layers"][0]["attn"]["wo"]))
    assert 0.7 * 0.02 / 2 < wo_std < 1.3 * 0.02 / 2  # depth-scaled: std / sqrt(2 L), L = 2
    np.testing.assert_array_equal(p["final_norm"]["scale"], np.ones(cfg.d_model, np.float32))


def test_init_with_out_shardings_and_abstract_shapes():
    cfg = MODELS.get("gptj-tiny_test")
    mesh = jax.make_mesh((1,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
    sh = jax.tree.map(lambda _: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
                      abstract_params(cfg))
    p = init(jax.random.PRNGKey(0), cfg, out_shardings=sh)
    q = init(jax.random.PRNGKey(0), cfg)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(q)):
        np.testing.assert_array_equal(a, b)
    axes = logical_axes(cfg)
    assert axes["layers"][0]["attn"]["wq"] == ("embed", "heads", "head_dim")
    assert axes["lm_head"] == ("embed", "vocab")


def test_check_params_names_the_leaf_and_source():
    cfg = MODELS.get("smollm2-135m_test")
    p = init(jax.random.PRNGKey(0), cfg)
    bad = jax.tree.map(lambda x: x, p)
    bad["layers"][1]["mlp"]["w_up"] = jnp.zeros((64, 99))
    with pytest.raises(ValueError, match=r"model\.gguf: weight 'layers/1/mlp/w_up' has shape "
                                         r"\(64, 99\) float32, expected \(64, 128\) float32"):
        check_params(bad, cfg, "model.gguf")
    bad = jax.tree.map(lambda x: x, p)
    bad["embed"] = bad["embed"].astype(jnp.bfloat16)
    with pytest.raises(ValueError, match="'embed' has shape .* bfloat16, expected .* float32"):
        check_params(bad, cfg, "x")
    bad = jax.tree.map(lambda x: x, p)
    del bad["layers"][0]["attn"]["wk"]
    with pytest.raises(ValueError, match=r"ckpt: params do not match.*missing \['layers/0/attn/wk'\]"):
        check_params(bad, cfg, "ckpt")
    bad = jax.tree.map(lambda x: x, p)
    bad["lm_head"] = jnp.zeros((64, 256))
    with pytest.raises(ValueError, match=r"unexpected \['lm_head'\]"):
        check_params(bad, cfg, "ckpt")


def test_find_mismatch_and_spec_shapes_are_the_loaders_check():
    from jaxlm.core.params import find_mismatch, spec_shapes

    cfg = MODELS.get("smollm2-135m_test")
    p = init(jax.random.PRNGKey(0), cfg)
    shapes = spec_shapes(cfg)
    assert shapes["layers/1/mlp/w_up"] == (cfg.d_model, cfg.d_ff)
    assert len(shapes) == len(jax.tree.leaves(p))
    assert find_mismatch(p, cfg) is None
    half = jax.tree.map(lambda x: x.astype(jnp.bfloat16), p)
    m = find_mismatch(half, cfg)
    assert m.path == "embed" and m.got.dtype == jnp.bfloat16 and m.want.dtype == jnp.float32
    assert find_mismatch(half, cfg, dtypes=False) is None  # loaders cast; shapes only
    bad = jax.tree.map(lambda x: x, p)
    bad["layers"][0]["mlp"]["w_down"] = jnp.zeros((cfg.d_ff + 1, cfg.d_model))
    m = find_mismatch(bad, cfg, dtypes=False)
    assert (m.path, m.got.shape, m.want.shape) == (
        "layers/0/mlp/w_down", (cfg.d_ff + 1, cfg.d_model), (cfg.d_ff, cfg.d_model))
