"""GSPMD data-parallel / FSDP and the shard_map step give the same parameters on 4 devices."""

import chex
import jax
import numpy as np
import pytest

from jaxlm.core import init
from jaxlm.train import parallel
from jaxlm.train import checkpoint as C
from jaxlm.train.optim import make_optimizer
from jaxlm.train.presets import get_config
from jaxlm.train.state import create_state
from jaxlm.train.step import lm_loss_fn, make_train_step

STEPS = 3


def _setup():
    # SGD + momentum: Adam's first steps are ~sign(g), which turns float reordering noise in
    # near-zero gradients into visible differences; the plain update keeps the check tight.
    cfg = get_config("tiny_test", ["optim.name=sgd", "optim.lr=0.5"])
    tx, lr_fn = make_optimizer(cfg.optim, 10)
    loss_fn = lm_loss_fn(cfg.model)
    params = jax.device_get(init(jax.random.key(7), cfg.model))
    rng = np.random.default_rng(8)
    batches = []
    for _ in range(STEPS):
        t = rng.integers(0, 257, size=(8, 17)).astype(np.int32)
        batches.append({"inputs": t[:, :-1], "targets": t[:, 1:]})
    return cfg, tx, lr_fn, loss_fn, params, batches


def _run(kind, fsdp=1):
    assert jax.device_count() == 4
    cfg, tx, lr_fn, loss_fn, params, batches = _setup()
    mesh = parallel.make_mesh(-1, fsdp)
    abstract = jax.eval_shape(lambda p: create_state(p, tx), params)
    sh = parallel.state_shardings(abstract, mesh, fsdp=fsdp > 1, model=cfg.model)
    state = jax.jit(lambda p: create_state(p, tx), out_shardings=sh)(params)
    if kind == "gspmd":
        step = parallel.gspmd_step(make_train_step(loss_fn, tx, lr_fn=lr_fn, grad_accum=2),
                                   mesh, sh)
    else:
        step = parallel.shard_map_step(
            make_train_step(loss_fn, tx, lr_fn=lr_fn, grad_accum=2,
                            axis_name=parallel.BATCH_AXES), mesh)
    rng = jax.device_put(jax.random.key(0), parallel.replicated(mesh))
    losses = []
    for b in batches:
        state, m = step(state, parallel.global_batch(b, mesh), rng)
        losses.append(float(m["loss"]))
        assert float(m["tokens"]) == 8 * 16
    return state, losses, mesh


@pytest.fixture(scope="module")
def runs():
    return {k: _run(*k) for k in [("gspmd", 1), ("shard_map", 1), ("gspmd", 2)]}


def test_gspmd_and_shard_map_match(runs):
    (s1, l1, _), (s2, l2, _) = runs[("gspmd", 1)], runs[("shard_map", 1)]
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    chex.assert_trees_all_close(jax.device_get(s1.params), jax.device_get(s2.params),
                                rtol=1e-5, atol=1e-6)
    assert int(s1.step) == int(s2.step) == STEPS


def test_fsdp_shards_params_and_matches(runs):
    (s1, l1, _), (s3, l3, mesh) = runs[("gspmd", 1)], runs[("gspmd", 2)]
    wq = s3.params["layers"][0]["attn"]["wq"]
    assert wq.sharding.spec == jax.sharding.PartitionSpec("fsdp", None, None)
    assert wq.addressable_shards[0].data.shape == (16, 4, 8)
    mu = s3.opt_state[1].trace["layers"][0]["mlp"]["w_down"]  # momentum follows its param
    assert mu.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")
    np.testing.assert_allclose(l1, l3, rtol=1e-5)
    chex.assert_trees_all_close(jax.device_get(s1.params), jax.device_get(s3.params),
                                rtol=1e-5, atol=1e-6)


def test_checkpoint_restores_onto_other_sharding(runs, tmp_path):
    s1, _, _ = runs[("gspmd", 1)]
    _, _, mesh = runs[("gspmd", 2)]
    with C.Checkpointer(tmp_path, keep=1) as ck:
        ck.save(3, s1, {"data": {"epoch": 0, "index": 3}}, force=True)
    abstract = jax.eval_shape(lambda s: s, s1)
    sh = parallel.state_shardings(abstract, mesh, fsdp=True)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, sh)
    with C.Checkpointer(tmp_path, read_only=True) as ck:
        restored, meta = ck.restore(target)
    assert meta["data"]["index"] == 3
    w = restored.params["layers"][1]["mlp"]["w_up"]
    assert w.sharding.spec == jax.sharding.PartitionSpec("fsdp", None)
    chex.assert_trees_all_equal(jax.device_get(restored), jax.device_get(s1))


def test_mesh_and_batch_errors():
    with pytest.raises(ValueError, match="mesh_fsdp=3 does not divide"):
        parallel.make_mesh(-1, 3)
    with pytest.raises(ValueError, match="needs 2 devices, found 4"):
        parallel.make_mesh(2, 1)
    with pytest.raises(ValueError, match="not divisible by 4 devices x grad_accum 2"):
        parallel.check_batch(12, parallel.make_mesh(), 2)


def test_every_weight_is_sharded_by_its_declared_logical_axes():
    from jaxlm.core.params import ParamInfo, param_spec

    cfg = get_config("tiny_test", ["optim.name=sgd"])
    mesh = parallel.make_mesh(-1, 2)
    abstract = jax.eval_shape(lambda: init(jax.random.key(0), cfg.model))
    sh = parallel.tree_shardings(abstract, mesh, parallel.FSDP_RULES, cfg.model)
    infos = jax.tree.leaves(param_spec(cfg.model), is_leaf=lambda x: isinstance(x, ParamInfo))
    for info, s in zip(infos, jax.tree.leaves(sh), strict=True):
        want = tuple("fsdp" if (a == "embed" and d % 2 == 0) else None
                     for a, d in zip(info.logical_axes, info.shape))
        assert tuple(s.spec) + (None,) * (len(want) - len(s.spec)) == want, info
    other = {"w": jax.ShapeDtypeStruct((4, 4), np.float32)}  # not a jaxlm.core model
    st = parallel.state_shardings(type("S", (), {"params": other})(), mesh, fsdp=True)
    assert all(x.spec == jax.sharding.PartitionSpec() for x in jax.tree.leaves(st))
