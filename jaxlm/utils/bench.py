"""Benchmark helpers: timing after warm-up, medians, machine facts, JSON output.

Every ``experiments/bench_*.py`` writes ``runs/bench/<name>.json`` as
``{"machine": {...}, "results": {...}, "targets": [...]}`` with one target per
number its issue names (see DESIGN.md).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np


@dataclasses.dataclass
class Target:
    name: str
    measured: float
    target: float
    op: str  # ">=" or "<="

    @property
    def met(self) -> bool:
        if self.op == ">=":
            return self.measured >= self.target
        if self.op == "<=":
            return self.measured <= self.target
        raise ValueError(f"Target.op must be '>=' or '<=', got {self.op!r}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "measured": float(self.measured),
            "target": float(self.target),
            "op": self.op,
            "met": bool(self.met),
        }


def block(x: Any) -> Any:
    """Waits for every array in a pytree (jax.block_until_ready for any leaf)."""
    import jax

    return jax.block_until_ready(x)


def time_fn(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Times ``fn()`` (which must block on its result) after ``warmup`` calls.

    Returns:
        dict with ``median``, ``min``, ``max`` seconds and ``repeats``.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {
        "median": statistics.median(times),
        "min": min(times),
        "max": max(times),
        "repeats": repeats,
    }


def memory_bandwidth_gbs(nbytes: int = 256 * 2**20, repeats: int = 5) -> float:
    """Measured copy bandwidth (read + write bytes / s) with numpy, in GB/s."""
    src = np.random.default_rng(0).random(nbytes // 8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    t = time_fn(lambda: np.copyto(dst, src), repeats=repeats, warmup=1)["median"]
    return 2 * src.nbytes / t / 1e9


def matmul_peak_gflops(n: int = 1024, dtype: str = "float32", repeats: int = 5) -> float:
    """Measured dense matmul throughput of the default JAX backend, in GFLOP/s."""
    import jax
    import jax.numpy as jnp

    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(k1, (n, n), dtype)
    b = jax.random.normal(k2, (n, n), dtype)
    f = jax.jit(lambda a, b: a @ b)
    t = time_fn(lambda: f(a, b).block_until_ready(), repeats=repeats, warmup=2)["median"]
    return 2 * n**3 / t / 1e9


_ISA_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
              "avx512_bf16", "amx_tile", "asimd", "sve")


def cpu_model(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> dict[str, Any]:
    """The CPU's model name and the vector-ISA flags a kernel's speed depends on, read from
    ``/proc/cpuinfo`` (empty where that file is absent): the same 2-core budget on two hosts
    of different CPU generations gives different anchors, so records name the CPU."""
    try:
        text = pathlib.Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return {}
    out: dict[str, Any] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and "cpu_model" not in out:
            out["cpu_model"] = value.strip()
        elif key in ("flags", "Features") and "cpu_isa" not in out:
            have = set(value.split())
            out["cpu_isa"] = [f for f in _ISA_FLAGS if f in have]
    return out


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        **cpu_model(),
    }
    try:
        import jax

        info["jax"] = jax.__version__
        info["backend"] = jax.default_backend()
        info["devices"] = [str(d) for d in jax.devices()]
        info["device_kind"] = jax.devices()[0].device_kind
    except Exception as e:  # pragma: no cover - informative only
        info["jax_error"] = repr(e)
    return info


def write_bench(
    name: str,
    results: dict[str, Any],
    targets: list[Target],
    *,
    out_dir: str | os.PathLike = "runs/bench",
) -> pathlib.Path:
    """Writes ``<out_dir>/<name>.json`` and prints the targets table."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    payload = {
        "machine": machine_info(),
        "results": results,
        "targets": [t.as_dict() for t in targets],
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_jsonable))
    tmp.replace(path)
    print(format_targets(targets))
    print(f"wrote {path}")
    return path


def format_targets(targets: list[Target]) -> str:
    lines = [f"{'target':<48} {'measured':>12} {'op':>3} {'target':>10}  met"]
    for t in targets:
        lines.append(
            f"{t.name:<48} {t.measured:>12.4g} {t.op:>3} {t.target:>10.4g}  {'yes' if t.met else 'NO'}"
        )
    return "\n".join(lines)


def _jsonable(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)
