"""Copy engines, host-memory detection, telemetry and the in-graph scan-offload variant."""

import dataclasses

import jax
import numpy as np
import optax
import pytest

from jaxlm.core import MODELS
from jaxlm.offload import engines as eng
from jaxlm.offload import scan_offload as so
from jaxlm.offload import stages as stg
from jaxlm.offload import swap

from .test_swap import ZERO_GRAD, _max_rel, _setup, _steps_match_resident


@dataclasses.dataclass
class _Mem:
    kind: str


@dataclasses.dataclass
class _FakeDevice:
    """A device whose runtime lists only some memory kinds (e.g. an old GPU runtime)."""

    platform: str
    kinds: tuple[str, ...]

    def addressable_memories(self):
        return [_Mem(k) for k in self.kinds]


def test_host_memory_detection():
    dev = jax.devices()[1]
    kinds = eng.memory_kinds(dev)
    assert "pinned_host" in kinds and "device" in kinds  # what the CPU backend lists
    auto = eng.choose_host_memory(dev)
    assert auto.kind == "cpu" and "same RAM" in auto.note  # pinning buys nothing on CPU
    assert eng.choose_host_memory(dev, "pinned_host").kind == "pinned_host"
    gpu = _FakeDevice("gpu", ("device", "pinned_host"))
    assert eng.choose_host_memory(gpu).kind == "pinned_host"
    old = _FakeDevice("gpu", ("device",))
    fb = eng.choose_host_memory(old)
    assert fb.kind == "cpu" and "no pinned_host" in fb.note  # explicit fallback
    with pytest.raises(ValueError, match="no pinned_host"):
        eng.choose_host_memory(old, "pinned_host")
    with pytest.raises(ValueError, match="host_memory must be"):
        eng.choose_host_memory(dev, "nvme")


def test_cpu_copy_is_a_real_copy():
    host, dev = jax.devices()[0], jax.devices()[1]
    rng = np.random.default_rng(1)
    tree = {"a": jax.device_put(rng.normal(size=(33, 7)).astype(np.float32), host),
            "b": jax.device_put(rng.integers(0, 9, (5,)).astype(np.int32), host)}
    arena = eng.StagingArena(eng.ALIGN * 8 + 33 * 7 * 4 + 5 * 4, 2)
    out = eng.cpu_copy(tree, dev, arena, slot=1)
    for k in tree:
        assert out[k].devices() == {dev}
        np.testing.assert_array_equal(np.asarray(out[k]), np.asarray(tree[k]))
        assert not np.shares_memory(np.asarray(out[k]), np.asarray(tree[k]))
    assert eng.zero_copy_supported(dev) in (True, False)
    assert eng.aligned_empty((3, 5), np.float32).ctypes.data % eng.ALIGN == 0


@pytest.mark.parametrize("prefetch,host_memory,opt_mode", [
    ("thread", "auto", "host-eager"), ("dispatch", "pinned_host", "host-at-sync"),
    # the H200 run's failing path: pinned mirror, copy engines, per-sub-model host update
    ("thread", "pinned_host", "host-eager")])
def test_modes_match_resident(prefetch, host_memory, opt_mode):
    cfg, params, batches = _setup()
    tx = optax.adamw(1e-2, weight_decay=0.1) if opt_mode == "host-eager" else optax.sgd(0.5)
    tr = swap.SwapTrainer(cfg, params, tx, [1, 2, 3], prefetch=prefetch,
                          host_memory=host_memory, opt_mode=opt_mode)
    for st in _steps_match_resident(tr, cfg, tx, params, batches[:2]):
        assert st.h2d_bytes == 2 * sum(tr.sub_bytes) - tr.sub_bytes[-1]
    if host_memory == "pinned_host":
        assert all(x.sharding.memory_kind == "pinned_host" for x in jax.tree.leaves(tr.pinned))
        assert not tr.notes  # the pinned D2H hop (device -> pinned_host -> host) was used
    # master params and optimizer state stay in the host's default memory, typed as such
    space = eng.check_one_space((tr.master, tr.opt_state), "state")
    assert space[0] == str(tr.host) and space[1] == "device" and "host" not in space[2]
    tr.close()


def test_update_operands_one_memory_space():
    """The invariant behind the H200 failure: no host update mixes memory spaces."""
    host, dev = jax.devices()[0], jax.devices()[1]
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 4)).astype(np.float32)
    pinned = jax.device_put(x, eng.sharding(dev, "pinned_host"))
    good = jax.device_put(pinned, eng.home_sharding(host))  # explicit memory kind
    bare = jax.device_put(pinned, host)  # bare Device: keeps the source's memory space type
    master = jax.device_put(rng.normal(size=(4, 4)).astype(np.float32), eng.home_sharding(host))
    assert eng.check_one_space((master, good), "ok") == eng.memory_space(master)
    if eng.memory_space(bare) != eng.memory_space(master):  # what jax 0.11/0.12 do
        with pytest.raises(ValueError, match="different"):
            eng.check_one_space({"p": master, "g": bare}, "host optimizer update")
    with pytest.raises(ValueError, match="operands live in 2"):
        eng.check_one_space({"p": master, "g": pinned}, "host optimizer update")
    # the trainer's own D2H path in pinned mode, then the jitted update: runs and is exact
    cfg, params, _ = _setup()
    tr = swap.SwapTrainer(cfg, params, optax.sgd(0.5), [2], prefetch="thread",
                          host_memory="pinned_host")
    g_dev = jax.device_put(tr.master[0], tr._dev_sh)
    g_host = tr._to_host(g_dev)
    assert eng.memory_space(jax.tree.leaves(g_host)[0]) == tr.host_space
    p_new, _ = tr._update(tr.master[0], tr.opt_state[0], g_host)
    for a, b in zip(jax.tree.leaves(p_new), jax.tree.leaves(tr.master[0])):
        np.testing.assert_allclose(np.asarray(a), 0.5 * np.asarray(b), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="different"):
        tr._update(tr.master[0], tr.opt_state[0], jax.device_put(g_dev, eng.sharding(
            dev, "pinned_host")))
    tr.close()


def test_thread_telemetry_covers_every_phase():
    cfg, params, batches = _setup()
    tr = swap.SwapTrainer(cfg, params, optax.adam(1e-2), [1, 2, 3], prefetch="thread")
    st = tr.step(batches[0])
    kn = tr.num_submodels
    lanes = {lane: sorted(k for ln, k, *_ in st.events if ln == lane) for lane in eng.LANES}
    assert lanes["h2d"] == sorted(list(range(kn)) + list(range(kn - 1)))  # last stays resident
    assert lanes["compute"] == lanes["h2d"]  # fwd for all + bwd for all but the last
    assert lanes["d2h"] == lanes["update"] == list(range(kn))
    for lane in ("h2d", "compute", "d2h", "update"):
        assert st.phases[f"{lane}_s"] > 0
    assert all(0 <= a <= b <= st.phases["span_s"] + 1e-9 for _, _, a, b in st.events)
    # each sub-model's update ends after its own gradient offload
    end = {(ln, k): b for ln, k, _, b in st.events if ln in ("d2h", "update")}
    assert all(end[("update", k)] >= end[("d2h", k)] for k in range(kn))
    tr.close()


def test_bad_prefetch():
    cfg, params, _ = _setup()
    with pytest.raises(ValueError, match="prefetch must be"):
        swap.SwapTrainer(cfg, params, optax.sgd(0.1), [1], prefetch="dma")


def test_scan_offload_matches_full_grad():
    cfg, params, batches = _setup()  # same shapes as test_swap: cached eager reference ops
    b = batches[1]
    dev = jax.devices()[1]
    ok, why = so.scan_offload_support(dev)
    assert ok and "same RAM" in why  # the CPU backend lists pinned_host (one RAM)
    rest, stacked = so.split_stacked(params, cfg)
    r_dev, s_host = so.place(rest, stacked, dev)
    assert all(x.sharding.memory_kind == "pinned_host" for x in jax.tree.leaves(s_host))
    loss, (g_rest, g_stacked) = so.make_scan_offload_step(cfg, dev)(r_dev, s_host, b)
    ref_loss, ref_g = jax.value_and_grad(stg.full_loss)(params, cfg, b)
    assert abs(float(loss) - float(ref_loss)) < 1e-5
    got = dict(g_rest, layers=so.unstack(g_stacked, cfg.n_layers))
    assert _max_rel(got, ref_g, skip=ZERO_GRAD) < 1e-5


def test_scan_offload_fallback_is_explicit():
    old = _FakeDevice("gpu", ("device",))
    ok, why = so.scan_offload_support(old)
    assert not ok and "no pinned_host" in why
    with pytest.raises(so.ScanOffloadUnsupported, match="no pinned_host"):
        so.make_scan_offload_step(MODELS.get("gptj-tiny_test"), old)


def test_copy_engine_pinned_to_cores():
    import os

    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cores) < 2:
        pytest.skip("needs 2 schedulable cores")
    e = eng.CopyEngine("t", cores=(cores[-1],))
    assert e.submit(os.sched_getaffinity, 0).result() == {cores[-1]}
    e.close()
    assert os.sched_getaffinity(0) == set(cores)  # the calling thread is untouched


def test_predicted_schedule_matches_hand_computed():
    from experiments.atom import measure

    # three sub-models; events as a serial ("none") step records them
    ev = [("h2d", 0, 0.0, 1.0), ("compute", 0, 1.0, 3.0), ("h2d", 1, 3.0, 4.0),
          ("compute", 1, 4.0, 6.5), ("h2d", 2, 6.5, 8.0), ("compute", 2, 8.0, 14.0),
          ("d2h", 2, 14.0, 14.5), ("update", 2, 14.5, 15.0), ("h2d", 1, 15.0, 16.0),
          ("compute", 1, 16.0, 23.0), ("d2h", 1, 23.0, 23.5), ("update", 1, 23.5, 24.0),
          ("h2d", 0, 24.0, 25.0), ("compute", 0, 25.0, 31.0), ("d2h", 0, 31.0, 31.5),
          ("update", 0, 31.5, 32.0), ("stall", 0, 0.0, 9.0)]
    ph = measure.phase_table(ev, 3)
    assert ph["fwd"] == [2.0, 2.5, 6.0] and ph["bwd"] == [6.0, 7.0, 0.0]
    assert ph["load"] == [1.0, 1.0, 1.5] and ph["reload"] == [1.0, 1.0, 0.0]
    assert measure._fwd_ratios(ph, 3) == [2.0, 2.5 / 1.5]
    p = measure.predicted_schedule(ph)
    comp = 2 + 2.5 + 6 + 6 + 7
    assert p["t_compute_sum"] == comp and p["t_serial_sum"] == 32.0
    # H0 + max(2,1) + max(2.5,1.5) + max(6, reload_1=1) + max(7, 1, .5, .5) + max(6, 0, .5, .5)
    # + D0 + U0
    assert p["t_pred_parallel"] == 1 + 2 + 2.5 + 6 + 7 + 6 + 0.5 + 0.5
    assert p["t_pred_one_core"] == p["t_pred_parallel"]  # 1 + .5 + .5 = 2 < 7: still hidden
    assert abs(p["eta_pred_parallel"] - comp / 25.5) < 1e-12


@pytest.mark.parametrize("prefetch,host_memory", [
    ("thread", "pinned_host"), ("dispatch", "auto"), ("none", "cpu")])
def test_device_per_submodel_matches_resident(prefetch, host_memory):
    cfg, params, batches = _setup()
    tx = optax.adamw(1e-2, weight_decay=0.1)
    tr = swap.SwapTrainer(cfg, params, tx, [1, 2, 3], prefetch=prefetch,
                          host_memory=host_memory, opt_mode="device-per-submodel")
    for st in _steps_match_resident(tr, cfg, tx, params, batches[:2]):
        ns = sum(tr.state_bytes)
        assert ns > 0 and st.d2h_bytes == sum(tr.sub_bytes) + ns  # params + Adam state back
        assert st.h2d_bytes == 2 * sum(tr.sub_bytes) - tr.sub_bytes[-1] + ns
    kind = "pinned_host" if host_memory == "pinned_host" else "device"
    assert all(x.sharding.memory_kind == kind for x in jax.tree.leaves((tr.master,
                                                                        tr.opt_state)))
    if prefetch == "thread":  # the update ran on the compute device, between the computes
        assert {ln for ln, *_ in st.events} >= {"h2d", "compute", "update", "d2h"}
    with pytest.raises(ValueError, match="grad_hook"):
        tr.step(batches[0], grad_hook=lambda k, g: g)
    tr.close()
