"""LoRA adapters: identity at init, merged == applied, frozen base, orbax round trip, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxlm.core import MODELS, apply, init
from jaxlm.train import OptimConfig, create_state, lm_loss_fn, make_optimizer, make_train_step
from jaxlm.train import lora as L

CFG = MODELS.get("smollm2-135m_test")


@pytest.fixture(scope="module")
def base():
    return init(jax.random.key(0), CFG)


def _tokens(seed, b=2, t=12):
    return jax.random.randint(jax.random.key(seed), (b, t), 0, CFG.vocab_size)


def _randomize_b(lr, seed):
    """Adapters with non-zero b (a fresh one is the identity)."""
    flat = traverse_util.flatten_dict(lr.weights, sep="/")
    out = {}
    for i, (k, v) in enumerate(sorted(flat.items())):
        out[k] = (0.05 * jax.random.normal(jax.random.key(seed + i), v.shape)
                  if k.endswith("/b") else v)
    return lr.replace(weights=traverse_util.unflatten_dict(out, sep="/"))


def test_default_targets_cover_attention_and_mlp(base):
    lr = L.init_lora(jax.random.key(1), base, CFG, rank=4, alpha=8)
    want = {f"layers/{i}/{m}" for i in range(CFG.n_layers)
            for m in ("attn/wq", "attn/wk", "attn/wv", "attn/wo", "mlp/w_up", "mlp/w_down",
                      "mlp/w_gate")}
    assert set(lr.paths()) == want
    a = lr.weights["layers"]["0"]["attn"]["wo"]["a"]
    b = lr.weights["layers"]["0"]["attn"]["wo"]["b"]
    assert a.shape == (CFG.n_heads * CFG.head_dim, 4) and b.shape == (4, CFG.d_model)
    assert lr.scale == 2.0


def test_zero_b_gives_exactly_the_base_output(base):
    lr = L.init_lora(jax.random.key(1), base, CFG, rank=4)
    x = _tokens(3)
    np.testing.assert_array_equal(np.asarray(apply(L.apply_lora(base, lr), CFG, x).logits),
                                  np.asarray(apply(base, CFG, x).logits))


def test_merged_equals_applied_and_a_float64_reference(base):
    lr = _randomize_b(L.init_lora(jax.random.key(2), base, CFG, rank=3, alpha=6), 100)
    x = _tokens(4)
    merged = L.merge(base, lr)
    ref = apply(L.apply_lora(base, lr), CFG, x).logits
    out = apply(merged, CFG, x).logits
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5,
                               atol=1e-5 * float(jnp.max(jnp.abs(ref))))
    # the merged weight is W + (alpha/r) a @ b, checked in float64 numpy
    w = np.asarray(base["layers"][1]["attn"]["wo"], np.float64)
    ab = lr.weights["layers"]["1"]["attn"]["wo"]
    want = w + 2.0 * (np.asarray(ab["a"], np.float64) @ np.asarray(ab["b"], np.float64)
                      ).reshape(w.shape)
    got = np.asarray(merged["layers"][1]["attn"]["wo"], np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    # untouched leaves are the base's
    assert merged["embed"] is base["embed"] or np.array_equal(merged["embed"], base["embed"])
    assert not np.allclose(np.asarray(out), np.asarray(apply(base, CFG, x).logits))


def test_train_step_changes_only_adapters_and_loss_drops(base):
    lr = L.init_lora(jax.random.key(5), base, CFG, rank=4, alpha=8,
                     targets=(r"layers/1/attn/w[qv]$", r"mlp/w_down$"))
    assert lr.paths() == ["layers/0/mlp/w_down", "layers/1/attn/wq", "layers/1/attn/wv",
                          "layers/1/mlp/w_down"]
    x = _tokens(6, b=2, t=16)
    batch = {"inputs": x[:, :-1], "targets": x[:, 1:],
             "mask": jnp.ones_like(x[:, 1:]).at[:, :8].set(0)}
    tx, lr_fn = make_optimizer(OptimConfig(name="adamw", lr=3e-2, warmup_steps=0,
                                           weight_decay=0.0, clip_norm=1.0), 20)
    loss_fn = L.lora_loss_fn(lm_loss_fn(CFG), base, lr)
    state = create_state(lr.weights, tx)
    step = jax.jit(L.lora_train_step(lm_loss_fn(CFG), tx, lr, lr_fn=lr_fn))
    before = jax.tree.map(np.asarray, base)
    losses = []
    w0 = jax.tree.map(np.asarray, state.params)
    for k in range(15):
        state, m = step(state, batch, jax.random.key(0), base)
        losses.append(float(m["loss"]))
        if k == 0:  # the same step as make_train_step over a closure on the base
            s2, m2 = jax.jit(make_train_step(loss_fn, tx, lr_fn=lr_fn))(
                create_state(lr.weights, tx), batch, jax.random.key(0))
            jax.tree.map(lambda a, b: np.testing.assert_allclose(
                np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7), state.params, s2.params)
    assert losses[-1] < 0.85 * losses[0], losses
    # the base did not move; every adapter did (b starts at zero, a gets gradient after it)
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, base))
    moved = jax.tree.map(lambda a, b: bool(np.any(a != np.asarray(b))), w0, state.params)
    assert all(jax.tree.leaves(moved))
    # the state holds the adapters only
    assert jax.tree.structure(state.params) == jax.tree.structure(lr.weights)
    trained = lr.replace(weights=state.params)
    ev = lm_loss_fn(CFG)(L.merge(base, trained), batch, None)[0]
    np.testing.assert_allclose(float(ev), float(loss_fn(state.params, batch, None)[0]),
                               rtol=1e-5)


def test_gradient_of_frozen_base_is_absent(base):
    lr = _randomize_b(L.init_lora(jax.random.key(7), base, CFG, rank=2), 9)
    x = _tokens(8)
    batch = {"inputs": x[:, :-1], "targets": x[:, 1:]}
    loss_fn = L.lora_loss_fn(lm_loss_fn(CFG), base, lr)
    g = jax.grad(lambda w: loss_fn(w, batch, None)[0])(lr.weights)
    assert jax.tree.structure(g) == jax.tree.structure(lr.weights)
    assert all(float(jnp.abs(v).max()) > 0 for v in jax.tree.leaves(g))


def test_orbax_round_trip(base, tmp_path):
    lr = _randomize_b(L.init_lora(jax.random.key(3), base, CFG, rank=4, alpha=4,
                                  targets=(r"attn/wq$",)), 50)
    L.save_lora(tmp_path / "ad", lr, step=7, extra={"note": "t"})
    back = L.load_lora(tmp_path / "ad")
    assert (back.rank, back.alpha, back.targets) == (4, 4.0, (r"attn/wq$",))
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, lr.weights),
                 jax.tree.map(np.asarray, back.weights))
    assert L.read_lora_meta(tmp_path / "ad")["extra"] == {"note": "t"}


def test_corrupt_or_missing_file_is_a_clear_error(base, tmp_path):
    with pytest.raises(L.LoraError, match="no LoRA adapter folder"):
        L.load_lora(tmp_path / "nothing")


@pytest.mark.parametrize("kw,msg", [
    ({"rank": 0}, "rank must be a positive int"),
    ({"rank": 2.0}, "rank must be a positive int"),
    ({"rank": 10_000}, "exceeds min"),
    ({"targets": ("attn/w_query$",)}, "matches no weight matrix"),
    ({"targets": ("embed",)}, "matches no weight matrix"),
    ({"targets": ("attn/w[",)}, "not a valid regex"),
    ({"targets": "attn/wq"}, "sequence of regexes"),
    ({"alpha": 0.0}, "alpha must be > 0"),
])
def test_bad_arguments_are_refused(base, kw, msg):
    with pytest.raises(L.LoraError, match=msg):
        L.init_lora(jax.random.key(0), base, CFG, **kw)


def test_quantized_base_is_refused(base):
    from jaxlm.quant import quantize_params

    q = quantize_params(base, CFG, "int8")
    with pytest.raises(L.LoraError, match="dequantize_params"):
        L.init_lora(jax.random.key(0), q, CFG, rank=2)


def test_adapters_for_another_model_are_refused(base):
    lr = L.init_lora(jax.random.key(0), base, CFG, rank=2, targets=(r"layers/1/attn/wq$",))
    other = dict(base, layers=base["layers"][:1])
    with pytest.raises(L.LoraError, match="another model"):
        L.apply_lora(other, lr)
