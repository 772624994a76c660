"""Metric writing (JSON-lines + TensorBoard), the NaN check, FLOPs/MFU and honest progress.

Only process 0 writes. Metrics stay on device until a log step; ``check_finite``
then stops the run with the step number when the loss or a norm is NaN/Inf.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import time
from typing import Any

import jax

from jaxlm.core import ModelConfig
from jaxlm.utils.cli import UserError


class NonFiniteError(UserError, FloatingPointError):
    """The loss or a norm became NaN/Inf."""


def check_finite(metrics: dict[str, float], step: int, last_ok: int | None = None) -> None:
    """Raises NonFiniteError naming the step when any host metric is NaN or Inf.

    Args:
        metrics: host floats of one log step.
        step: the step they belong to.
        last_ok: the last logged step whose metrics were finite (narrows the range).
    """
    bad = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        since = f" (finite at step {last_ok})" if last_ok is not None else ""
        raise NonFiniteError(
            f"non-finite {', '.join(bad)} at step {step}{since}: "
            f"{', '.join(f'{k}={metrics[k]}' for k in bad)}. Lower optim.lr, raise "
            "optim.warmup_steps or keep optim.clip_norm > 0, then restart (the run resumes "
            "from the last checkpoint in --workdir)."
        )


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 x matmul params + the attention term.

    ``6 * (L * (attention projections + MLP) + d_model * vocab)`` counts the
    forward and backward matmuls (the LM head included, embedding gathers and
    norms excluded) and ``12 * L * H * Dh * T`` the score and value products
    (PaLM appendix B convention, no causal discount).
    """
    d, h, kv, hd, f = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff
    proj = 2 * d * h * hd + 2 * d * kv * hd
    mlp = (3 if cfg.mlp == "swiglu" else 2) * d * f
    matmul_params = cfg.n_layers * (proj + mlp) + d * cfg.vocab_size
    return 6.0 * matmul_params + 12.0 * cfg.n_layers * h * hd * seq_len


class MetricWriter:
    """Writes scalars to ``<workdir>/metrics.jsonl`` and (optionally) TensorBoard events.

    A run that resumes at step ``start`` first cuts the file back to the rows of steps
    ``<= start`` (rewritten atomically), so the rows logged between the last checkpoint
    and a kill are not repeated; a partial last line left by a kill is dropped.

    Args:
        workdir: run folder.
        tensorboard: also write TensorBoard events under ``<workdir>/tb``.
        enabled: False on every process but 0 (nothing is written).
        start: the step this run starts from (rows after it are dropped).
    """

    def __init__(self, workdir: str | pathlib.Path, *, tensorboard: bool = True,
                 enabled: bool | None = None, start: int | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self._tb = None
        self._f = None
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if start is not None:
            truncate_jsonl(self.path, start)
        self._f = open(self.path, "a")
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tb"))

    def write(self, step: int, scalars: dict[str, Any], prefix: str = "") -> None:
        """Appends one JSON line ``{"step": step, **scalars}`` and the TB scalars."""
        if not self.enabled:
            return
        row = {"step": int(step)}
        row.update({f"{prefix}{k}": _py(v) for k, v in scalars.items()})
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, int(step))

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def truncate_jsonl(path: str | pathlib.Path, last_step: int) -> int:
    """Keeps the rows of ``path`` with ``step <= last_step``; returns how many were dropped.

    The kept rows go to a temporary file that replaces ``path`` in one ``os.replace``,
    so a kill during the rewrite leaves either the old or the new file. Lines that do
    not parse (a row cut short by a kill) are dropped too.
    """
    p = pathlib.Path(path)
    if not p.exists():
        return 0
    keep, dropped = [], 0
    for line in p.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            ok = int(row["step"]) <= last_step
        except (ValueError, KeyError, TypeError):
            ok = False
        if ok:
            keep.append(line)
        else:
            dropped += 1
    if dropped:
        tmp = p.with_name(p.name + ".tmp")
        with open(tmp, "w") as f:
            f.write("".join(ln + "\n" for ln in keep))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    return dropped


def read_jsonl(path: str | pathlib.Path) -> list[dict[str, Any]]:
    """All rows of a metrics.jsonl file."""
    p = pathlib.Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def _py(v: Any) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


class Progress:
    """Throughput and ETA that exclude compilation, evals and checkpoint saves.

    Call ``start(step)`` after the first (compiling) step has finished, ``pause()``
    / ``resume()`` around evals and saves, and ``report(step)`` at log steps
    (after the metrics are on the host, so the device work is done).

    Args:
        total_steps: steps of the whole run.
        tokens_per_step: global tokens per optimizer step.
        flops_per_token: from ``flops_per_token`` (0: no MFU).
        peak_gflops: measured matmul peak of all devices together (0: no MFU).
        elapsed: seconds of timed training carried over from earlier runs.
    """

    def __init__(self, total_steps: int, tokens_per_step: int, flops_per_token: float = 0.0,
                 peak_gflops: float = 0.0, elapsed: float = 0.0):
        self.total = total_steps
        self.tokens_per_step = tokens_per_step
        self.fpt = flops_per_token
        self.peak = peak_gflops
        self.prior = elapsed
        self._t0: float | None = None
        self._step0 = 0
        self._paused = 0.0
        self._pause_at: float | None = None

    def start(self, step: int) -> None:
        self._t0 = time.perf_counter()
        self._step0 = step
        self._paused = 0.0

    def pause(self) -> None:
        if self._pause_at is None:
            self._pause_at = time.perf_counter()

    def resume(self) -> None:
        if self._pause_at is not None:
            self._paused += time.perf_counter() - self._pause_at
            self._pause_at = None

    @property
    def elapsed(self) -> float:
        """Timed training seconds, this run plus the carried-over ones."""
        if self._t0 is None:
            return self.prior
        return self.prior + time.perf_counter() - self._t0 - self._paused

    def report(self, step: int) -> dict[str, float]:
        """steps/s, tokens/s, MFU, ETA seconds and percent done since ``start``."""
        if self._t0 is None or step <= self._step0:
            return {"percent": 100.0 * step / self.total}
        dt = time.perf_counter() - self._t0 - self._paused
        sps = (step - self._step0) / max(dt, 1e-9)
        tps = sps * self.tokens_per_step
        out = {
            "steps_per_s": sps,
            "tokens_per_s": tps,
            "eta_s": (self.total - step) / max(sps, 1e-9),
            "percent": 100.0 * step / self.total,
        }
        if self.fpt and self.peak:
            out["mfu"] = tps * self.fpt / (self.peak * 1e9)
        return out


def format_eta(seconds: float) -> str:
    s = int(max(seconds, 0))
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"
