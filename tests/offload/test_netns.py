"""Network namespaces + tc shaping (runs only where root, iproute2, tc and netns work)."""

import os
import subprocess
import sys

import pytest

from jaxlm.offload import netns


def _support_error() -> str | None:
    try:
        netns.check_support()
    except netns.NetnsUnavailable as e:
        return str(e)
    return None


_WHY = _support_error()


@pytest.mark.skipif(_WHY is not None, reason=f"netns unavailable: {_WHY}")
def test_shaping_slows_transfer_and_everything_is_removed():
    # a leftover from a "crashed" run is found and removed by prefix
    # (a test-specific prefix: a concurrent experiment's namespaces are not touched)
    mine = f"{netns.PREFIX}t{os.getpid() % 1000}"
    stale = f"{mine}old"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    assert stale in netns.leftovers(mine)[0]
    assert netns.cleanup(mine) == 1 and stale not in netns.leftovers()[0]
    nbytes = 1_000_000
    with netns.Topology(2, rate_mbit=None, tag=f"t{os.getpid() % 1000}") as topo:
        names = [*topo.ns, topo.hub]
        assert set(names) <= set(netns.leftovers()[0])
        fast = netns.measure_transfer(topo, 0, 1, nbytes)
        topo.shape(20.0)
        slow = netns.measure_transfer(topo, 1, 0, nbytes)
    # 1 MB at 20 Mbit/s needs >= 0.4 s (the token bucket's 16 KB burst aside)
    assert slow > 0.9 * (nbytes - 16 * 1024) * 8 / 20e6, slow
    assert slow > 5 * fast, (slow, fast)
    assert nbytes * 8 / slow / 1e6 < 20 * 1.1  # never faster than the shaped rate
    assert netns.wait_gone(names)
    assert not [n for n in netns.leftovers()[1] if n.startswith(topo.base)]


@pytest.mark.skipif(_WHY is not None, reason=f"netns unavailable: {_WHY}")
def test_setup_failure_cleans_up():
    topo = netns.Topology(2, rate_mbit=10.0, tag=f"f{os.getpid() % 1000}")
    topo.shape = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom"))  # fail mid-setup
    with pytest.raises(RuntimeError, match="boom"):
        with topo:
            pass
    assert netns.wait_gone([*topo.ns, topo.hub])


def test_bad_input_and_clear_errors():
    with pytest.raises(ValueError, match="2..16"):
        netns.Topology(1)
    with pytest.raises(ValueError, match="rate_mbit"):
        netns.Topology(2, rate_mbit=0)
    with pytest.raises(ValueError, match="delay_ms"):
        netns.Topology(2, delay_ms=-1)
    # not root / no tc -> a clear message naming what is missing
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(netns.os, "geteuid", lambda: 1000)
        with pytest.raises(netns.NetnsUnavailable, match="need root"):
            netns.check_support()
    if sys.platform.startswith("linux"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(netns.os, "geteuid", lambda: 0)
            mp.setattr(netns.shutil, "which", lambda t: None if t == "tc" else "/bin/" + t)
            with pytest.raises(netns.NetnsUnavailable, match="`tc` not found"):
                netns.check_support()
