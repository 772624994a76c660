"""Swap executor: same parameters as all-resident training; stage functions equal the model."""

import jax
import numpy as np
import optax
import pytest

from jaxlm.core import MODELS, init
from jaxlm.offload import stages as stg
from jaxlm.offload import swap
from jaxlm.train.optim import make_optimizer
from jaxlm.train.presets import OptimConfig
from jaxlm.utils.config import apply_overrides


def _setup(n_layers=2, seed=0):
    cfg = apply_overrides(MODELS.get("gptj-tiny_test"), [f"n_layers={n_layers}"])
    params = init(jax.random.key(seed), cfg)
    rng = np.random.default_rng(seed)
    batches = [{"inputs": rng.integers(0, cfg.vocab_size, (2, 16)).astype(np.int32),
                "targets": rng.integers(0, cfg.vocab_size, (2, 16)).astype(np.int32)}
               for _ in range(3)]
    return cfg, params, batches


def _max_rel(a, b, skip=()):
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    out = 0.0
    for (path, x), y in zip(la, lb):
        if any(s in jax.tree_util.keystr(path) for s in skip):
            continue
        x, y = np.asarray(x), np.asarray(y)
        out = max(out, float(np.max(np.abs(x - y)) / (np.max(np.abs(y)) + 1e-12)))
    return out


# The key bias gets a mathematically zero gradient (softmax is shift-invariant), so its
# gradient is pure round-off and Adam turns round-off into lr-sized steps: not comparable.
ZERO_GRAD = ("'bk'",)


def test_split_merge_roundtrip_and_stage_grads():
    cfg, params, batches = _setup()
    per = stg.split_params(params, cfg)
    assert len(per) == cfg.n_layers + 2
    assert _max_rel(stg.merge_params(per), params) == 0.0
    # staged forward/backward equals monolithic jax.grad
    cuts = [1, 3]
    step = swap.make_staged_resident_step(cfg, cuts)
    loss, grads = step(stg.group(per, cuts), batches[0])
    ref_loss, ref_g = jax.value_and_grad(stg.full_loss)(params, cfg, batches[0])
    assert abs(float(loss) - float(ref_loss)) < 1e-6
    g_full = stg.merge_params([p for gk in grads for p in gk])
    assert _max_rel(g_full, ref_g) < 1e-5


def _steps_match_resident(tr, cfg, tx, params, batches, tol=1e-5):
    """Steps `tr` and the all-resident train step side by side; yields each swap StepStats.

    Asserts equal losses every step and equal parameters (relative `tol`) at the end.
    """
    ref_step = swap.make_resident_step(cfg, tx)
    p, s = params, tx.init(params)
    for b in batches:
        st = tr.step(b)
        p, s, ref_loss = ref_step(p, s, b)
        assert abs(st.loss - float(ref_loss)) < 1e-5
        yield st
    assert _max_rel(tr.params(), p, skip=ZERO_GRAD) < tol


@pytest.mark.parametrize("opt_mode,cuts", [("host-eager", [1, 2, 3]), ("host-at-sync", [1, 3])])
def test_swap_matches_resident(opt_mode, cuts):
    cfg, params, batches = _setup()
    if opt_mode == "host-eager":
        tx = optax.adamw(1e-2, weight_decay=0.1)  # per-leaf: exact per sub-model
    else:  # the substrate's chain with global-norm clipping (couples all sub-models) and
        # momentum SGD (no Adam normalisation to amplify round-off): bit-level agreement
        tx, _ = make_optimizer(OptimConfig(name="sgd", lr=0.5, warmup_steps=1, clip_norm=0.05,
                                           weight_decay=0.1), 10)
    trainer = swap.SwapTrainer(cfg, params, tx, cuts, opt_mode=opt_mode)
    assert trainer.num_submodels == len(cuts) + 1
    assert trainer.dev != trainer.host  # 4 fake CPU devices: real copies
    tol = 1e-5 if opt_mode == "host-eager" else 1e-6  # f32 round-off (Adam amplifies it)
    for st in _steps_match_resident(trainer, cfg, tx, params, batches, tol):
        # every sub-model is loaded twice except the last (resident through backward)
        assert st.h2d_bytes == 2 * sum(trainer.sub_bytes) - trainer.sub_bytes[-1]
    moved = _max_rel(trainer.params(), params)
    assert moved > 1e-3  # the params did change


def test_no_prefetch_same_result():
    cfg, params, batches = _setup(n_layers=2)
    tx = optax.adam(1e-2)
    a = swap.SwapTrainer(cfg, params, tx, [1, 2, 3], prefetch=True)
    b = swap.SwapTrainer(cfg, params, tx, [1, 2, 3], prefetch=False)
    for bt in batches[:2]:
        a.step(bt)
        b.step(bt)
    assert _max_rel(a.params(), b.params()) == 0.0


def test_bad_input():
    cfg = MODELS.get("smollm2-135m_test")
    with pytest.raises(ValueError, match="tie_embeddings=False"):
        stg.make_submodels(cfg, [1])
    cfg, params, _ = _setup(n_layers=2)
    with pytest.raises(ValueError, match="strictly increasing"):
        stg.make_submodels(cfg, [2, 2])
    with pytest.raises(ValueError, match="opt_mode"):
        swap.SwapTrainer(cfg, params, optax.sgd(0.1), [1], opt_mode="gpu")


def test_resident_step_is_the_plain_gradient_step():
    """make_resident_step (built on jaxlm.train.make_train_step) equals a hand-written
    value_and_grad + optax update on fresh random batches, over three steps."""
    cfg, params, batches = _setup(seed=5)
    tx = optax.sgd(0.3, momentum=0.9)  # no Adam normalisation: round-off stays round-off
    step = swap.make_resident_step(cfg, tx)
    p, s = params, tx.init(params)
    rp, rs = params, tx.init(params)
    for b in batches:
        p, s, loss = step(p, s, b)
        ref_loss, g = jax.value_and_grad(stg.full_loss)(rp, cfg, b)
        u, rs = tx.update(g, rs, rp)
        rp = optax.apply_updates(rp, u)
        assert abs(float(loss) - float(ref_loss)) <= 1e-5 * abs(float(ref_loss))
    assert _max_rel(p, rp) < 1e-5
    assert _max_rel(p, params) > 1e-4  # the parameters did move
