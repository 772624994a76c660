"""Host memory placement, copy engines and per-phase telemetry for the swap executor.

Host memory (``choose_host_memory``). What a backend supports is *detected* from
``device.addressable_memories()``, never assumed:

* ``pinned_host``: the compute device lists a ``pinned_host`` memory (GPU/TPU; the CPU
  backend lists it too, see below). Master parameters and optimizer state stay on the
  CPU backend (the host optimizer runs there); a working-copy mirror of every sub-model
  lives in ``pinned_host`` memory of the compute device, refreshed after each host update,
  and loads are ``pinned_host -> device`` copies (DMA on a GPU, at full PCIe bandwidth).
* ``cpu``: master copy on the CPU backend device (pageable host RAM; numpy-backed), loads
  are ``jax.device_put`` to the compute device (pageable: staged by the runtime on a GPU).

The CPU backend lists ``device``, ``pinned_host`` and ``unpinned_host``, but all three are
the same RAM: ``pinned_host`` is accepted when asked for (so the code path is tested on
CPU), while ``auto`` picks ``cpu`` there because pinning buys nothing.

Copy engines (``CopyEngine``): one worker thread per direction, the analogue of a GPU's
copy streams. On a CPU "device" (a second CPU device of the same process) a load is a real
``numpy`` memcpy into a 64-byte-aligned staging slot followed by a zero-copy
``jax.device_put`` of that slot, so the memcpy runs on the copy thread (numpy releases the
GIL) while XLA computes on the main thread. On a GPU the copy thread calls
``jax.device_put`` and waits for it, which leaves the main thread free to dispatch compute.

Telemetry (``Timeline``): ``(lane, sub-model, t0, t1)`` events for the lanes ``h2d``,
``compute``, ``d2h``, ``update`` and ``stall`` (main thread waiting for a load), summaries
per phase (drawn as a Gantt chart by ``experiments/atom/plots.plot_timeline``).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import jax
import numpy as np

HOST_MEMORY = ("auto", "pinned_host", "cpu")
ALIGN = 64  # bytes; XLA:CPU aliases numpy buffers aligned to this (zero-copy device_put)


def memory_kinds(device: jax.Device) -> tuple[str, ...]:
    """Memory kinds the device can address (``()`` if the runtime cannot tell)."""
    try:
        return tuple(m.kind for m in device.addressable_memories())
    except Exception:  # older runtimes / devices without memories API
        return ()


@dataclasses.dataclass(frozen=True)
class HostMemory:
    """Where the swap executor keeps the host copy that loads read from.

    Attributes:
        kind: "pinned_host" or "cpu".
        kinds: the memory kinds the compute device lists.
        note: one line saying why this placement was chosen.
    """

    kind: str
    kinds: tuple[str, ...]
    note: str


def choose_host_memory(compute: jax.Device, prefer: str = "auto") -> HostMemory:
    """Detects host-memory support on ``compute`` and picks the placement.

    Args:
        compute: the compute device.
        prefer: "auto" (pinned_host on an accelerator that lists it, else cpu),
            "pinned_host" (error if not listed), or "cpu".

    Returns:
        HostMemory.

    Raises:
        ValueError: unknown ``prefer`` or ``pinned_host`` asked for but not supported.
    """
    if prefer not in HOST_MEMORY:
        raise ValueError(f"host_memory must be one of {HOST_MEMORY}, got {prefer!r}")
    kinds = memory_kinds(compute)
    has = "pinned_host" in kinds
    if prefer == "pinned_host":
        if not has:
            raise ValueError(
                f"host_memory='pinned_host': {compute} ({compute.platform}) lists memory kinds "
                f"{list(kinds)}, no pinned_host; use host_memory='cpu' (or 'auto')")
        note = "pinned_host requested and listed by the device"
        if compute.platform == "cpu":
            note += " (CPU backend: pinned_host is the same RAM as device memory)"
        return HostMemory("pinned_host", kinds, note)
    if prefer == "cpu":
        return HostMemory("cpu", kinds, "cpu requested (master copy on the CPU backend)")
    if has and compute.platform != "cpu":
        return HostMemory("pinned_host", kinds, f"{compute.platform} lists pinned_host")
    if compute.platform == "cpu":
        why = (f"CPU backend lists {list(kinds)}, but every kind is the same RAM: pinning buys "
               "nothing, numpy/CPU-backend master copy used")
    else:
        why = f"{compute.platform} lists {list(kinds)} (no pinned_host): pageable host copy"
    return HostMemory("cpu", kinds, why)


def sharding(device: jax.Device, kind: str | None = None) -> jax.sharding.Sharding:
    """Single-device sharding, optionally in a given memory kind."""
    if kind is None:
        return jax.sharding.SingleDeviceSharding(device)
    return jax.sharding.SingleDeviceSharding(device, memory_kind=kind)


def default_kind(device: jax.Device) -> str | None:
    """The device's default memory kind ("device" on CPU and GPU; None if not reported)."""
    try:
        return device.default_memory().kind
    except Exception:  # runtimes without the memories API
        return None


def home_sharding(device: jax.Device) -> jax.sharding.Sharding:
    """Sharding in the device's *default* memory kind, spelled out explicitly.

    Always copy with this (never ``jax.device_put(x, device)`` with a bare ``Device``):
    JAX keeps the *source's* memory space in the result's type when the destination names
    no memory kind, so a ``pinned_host`` array put on a bare device is typed
    ``float32<host>`` while its buffer sits in default memory, and the next jitted op that
    mixes it with a default-memory array fails with "memory_space of all inputs passed to
    `add` must be the same" (seen on an H200, jax 0.11.2; reproduced on CPU, jax 0.12).
    """
    return sharding(device, default_kind(device))


def memory_space(x: Any) -> tuple[str, str | None, str]:
    """(device, memory kind of the buffer, memory space of the JAX type) of one leaf.

    numpy (and other non-JAX) leaves report ``("numpy", None, "host-numpy")``.
    """
    if not isinstance(x, jax.Array):
        return ("numpy", None, "host-numpy")
    sh = x.sharding
    dev = ",".join(sorted(str(d) for d in sh.device_set))
    space = str(getattr(jax.typeof(x), "memory_space", "?"))
    return (dev, sh.memory_kind, space)


def check_one_space(trees: Any, what: str) -> tuple[str, str | None, str]:
    """Checks that every leaf of ``trees`` lives in one device, memory kind and memory space.

    Args:
        trees: any pytree (e.g. ``(params, opt_state, grads)`` of one host update).
        what: names the operation in the error message.

    Returns:
        the common ``memory_space`` triple.

    Raises:
        ValueError: leaves in more than one place, listed with their paths (the clear
            version of XLA's "memory_space of all inputs ... must be the same").
    """
    seen: dict[tuple, list[str]] = {}
    for path, x in jax.tree_util.tree_leaves_with_path(trees):
        seen.setdefault(memory_space(x), []).append(jax.tree_util.keystr(path))
    if len(seen) > 1:
        lines = "; ".join(f"{k}: {len(v)} leaves, e.g. {v[0]}" for k, v in seen.items())
        raise ValueError(f"{what}: operands live in {len(seen)} different (device, memory kind, "
                         f"memory space) places ({lines}); put every operand in one memory "
                         "kind first (engines.home_sharding)")
    return next(iter(seen), ("none", None, "none"))


def aligned_empty(shape: tuple[int, ...], dtype: Any, align: int = ALIGN) -> np.ndarray:
    """An uninitialised numpy array whose data pointer is ``align``-byte aligned."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(n + align, np.uint8)
    off = (-raw.ctypes.data) % align
    return raw[off:off + n].view(dtype).reshape(shape)


class StagingArena:
    """``slots`` aligned byte buffers ("device memory" of a CPU device), carved per load.

    The swap schedule alternates sub-model parity (k and k+1 are never in the same slot),
    so two slots give double buffering; a slot is rewritten only after the compute that
    read it has finished (the executor blocks on each compute in thread mode).
    """

    def __init__(self, slot_bytes: int, slots: int = 2):
        self.slot_bytes = slot_bytes + ALIGN * 256
        self.buf = [aligned_empty((self.slot_bytes,), np.uint8) for _ in range(slots)]

    def carve(self, slot: int, leaves: list[np.ndarray]) -> list[np.ndarray] | None:
        """Aligned views of slot ``slot`` shaped like ``leaves`` (None if they do not fit)."""
        out, off, buf = [], 0, self.buf[slot % len(self.buf)]
        for x in leaves:
            n = x.size * x.dtype.itemsize
            if off + n > buf.size:
                return None
            out.append(buf[off:off + n].view(x.dtype).reshape(x.shape))
            off += -(-n // ALIGN) * ALIGN
        return out


def cpu_copy(tree: Any, dst_device: jax.Device, arena: StagingArena | None = None,
             slot: int = 0) -> Any:
    """Real memcpy of a CPU-resident tree into aligned buffers, wrapped zero-copy on
    ``dst_device`` (a CPU device). Runs on the calling thread."""
    leaves, tdef = jax.tree.flatten(tree)
    src = [np.asarray(x) for x in leaves]
    dst = arena.carve(slot, src) if arena is not None else None
    if dst is None:
        dst = [aligned_empty(x.shape, x.dtype) for x in src]
    for d, s in zip(dst, src):
        np.copyto(d, s)
    sh = home_sharding(dst_device)
    return jax.tree.unflatten(tdef, [jax.device_put(d, sh) for d in dst])


def zero_copy_supported(device: jax.Device) -> bool:
    """Whether ``jax.device_put`` of an aligned numpy array aliases it on ``device``."""
    if device.platform != "cpu":
        return False
    x = aligned_empty((1024,), np.float32)
    x[:] = 1.0
    y = jax.device_put(x, device)
    try:
        return y.unsafe_buffer_pointer() == x.ctypes.data
    except Exception:
        return False


def pin_thread(cores: Any) -> bool:
    """Restricts the *calling thread* to ``cores`` (Linux); False where unsupported."""
    if not cores or not hasattr(os, "sched_setaffinity"):
        return False
    try:
        os.sched_setaffinity(0, set(cores))  # pid 0: the calling thread on Linux
        return True
    except OSError:
        return False


@dataclasses.dataclass(frozen=True)
class CorePartition:
    """How a CPU-only process splits its cores between "device" compute and copy engines.

    The CPU analogue of a GPU's separate copy engines: XLA's compute (and the thread that
    dispatches it) on ``compute`` cores, the copy-engine and host-update threads on ``copy``
    cores. Built by the entrypoint (``partition_cores``) *before* JAX starts, because XLA's
    CPU thread pools inherit the affinity of the thread that creates them.
    """

    compute: tuple[int, ...]
    copy: tuple[int, ...]

    def describe(self) -> str:
        return f"compute cores {list(self.compute)}, copy/host-update cores {list(self.copy)}"


def partition_cores(n_copy: int = 1) -> CorePartition | None:
    """Pins the calling (main) thread to all but ``n_copy`` of its cores; returns the split.

    Call before importing/initialising JAX (the XLA CPU client sizes and places its thread
    pools from the affinity it sees). Returns None (nothing changed) with fewer than two
    usable cores or without ``os.sched_setaffinity``.
    """
    if not hasattr(os, "sched_getaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2 or n_copy < 1:
        return None
    n_copy = min(n_copy, len(cores) - 1)
    part = CorePartition(tuple(cores[:-n_copy]), tuple(cores[-n_copy:]))
    if not pin_thread(part.compute):
        return None
    return part


def pin_process_threads(cores: Any) -> int:
    """Pins every *existing* thread of this process to ``cores`` (Linux ``/proc/self/task``).

    Use after JAX has started (``jax.devices()``) to confine XLA:CPU's worker threads to
    the compute cores: XLA parallelises fusions over its own pool and its idle workers spin,
    so pinning only the dispatching thread leaves them on every core. Threads created later
    (the copy engines) are not affected. Returns the number of threads pinned.
    """
    if not cores or not hasattr(os, "sched_setaffinity"):
        return 0
    n = 0
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return 0
    for tid in tids:
        try:
            os.sched_setaffinity(tid, set(cores))
            n += 1
        except OSError:  # the thread exited meanwhile
            pass
    return n


class CopyEngine:
    """One worker thread running copies in submission order (a copy stream).

    Args:
        name: thread-name prefix.
        cores: optional CPU cores the worker thread is pinned to (``CorePartition.copy``).
    """

    def __init__(self, name: str, cores: Any = None):
        self._ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name,
                                      initializer=pin_thread if cores else None,
                                      initargs=(tuple(cores),) if cores else ())

    def submit(self, fn, *args) -> Future:
        return self._ex.submit(fn, *args)

    def close(self) -> None:
        self._ex.shutdown(wait=True)


LANES = ("h2d", "compute", "d2h", "update", "stall")


class Timeline:
    """Thread-safe list of ``(lane, k, t0, t1)`` events (seconds since ``start``)."""

    def __init__(self):
        self.start = time.perf_counter()
        self.events: list[tuple[str, int, float, float]] = []
        self._lock = threading.Lock()

    def add(self, lane: str, k: int, t0: float, t1: float) -> None:
        with self._lock:
            self.events.append((lane, k, t0 - self.start, t1 - self.start))

    def timed(self, lane: str, k: int, fn, *args):
        """Calls ``fn(*args)``, blocks on the result and records it in ``lane``."""
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        self.add(lane, k, t0, time.perf_counter())
        return out

    def summary(self) -> dict[str, float]:
        """Total seconds per lane, the span, and the per-sub-model split."""
        out: dict[str, Any] = {f"{lane}_s": 0.0 for lane in LANES}
        per: dict[int, dict[str, float]] = {}
        for lane, k, a, b in self.events:
            out[f"{lane}_s"] += b - a
            per.setdefault(k, {l: 0.0 for l in LANES})[lane] += b - a
        out["span_s"] = max((b for *_, b in self.events), default=0.0)
        out["per_submodel"] = {k: per[k] for k in sorted(per)}
        return out
