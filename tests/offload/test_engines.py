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

from .test_swap import ZERO_GRAD, _max_rel, _setup


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
    ("thread", "auto", "host-eager"), ("dispatch", "pinned_host", "host-at-sync")])
def test_modes_match_resident(prefetch, host_memory, opt_mode):
    cfg, params, batches = _setup()
    tx = optax.adamw(1e-2, weight_decay=0.1) if opt_mode == "host-eager" else optax.sgd(0.5)
    tr = swap.SwapTrainer(cfg, params, tx, [1, 2, 3], prefetch=prefetch,
                          host_memory=host_memory, opt_mode=opt_mode)
    ref_step = swap.make_resident_step(cfg, tx)
    p, s = params, tx.init(params)
    for b in batches[:2]:
        st = tr.step(b)
        p, s, ref_loss = ref_step(p, s, b)
        assert abs(st.loss - float(ref_loss)) < 1e-5
        assert st.h2d_bytes == 2 * sum(tr.sub_bytes) - tr.sub_bytes[-1]
    assert _max_rel(tr.params(), p, skip=ZERO_GRAD) < 1e-5
    if host_memory == "pinned_host":
        assert all(x.sharding.memory_kind == "pinned_host" for x in jax.tree.leaves(tr.pinned))
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
