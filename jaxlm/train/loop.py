"""``train_and_evaluate(cfg, workdir)``: the training loop behind ``experiments/train_lm.py``.

Order of work: validate the config and the data (before compiling anything) ->
build the mesh, optimizer and abstract state -> pick the initial state by the
resume order (``checkpoint.plan_resume``) -> loop: step (device), and at log
steps pull the metrics, stop on NaN/Inf, write JSON-lines/TensorBoard and the
progress line; evaluate and checkpoint (with the data position and the timer)
on their schedules -> final eval, save, wait for the writes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import logging

from jaxlm.core import ModelConfig, init
from jaxlm.train import data as data_lib
from jaxlm.train import parallel
from jaxlm.train.checkpoint import (
    Checkpointer,
    CheckpointError,
    ResumePlan,
    config_changes,
    plan_resume,
    quarantine,
)
from jaxlm.train.metrics import MetricWriter, Progress, check_finite, flops_per_token, format_eta
from jaxlm.train.optim import make_optimizer
from jaxlm.train.presets import TrainConfig
from jaxlm.train.state import TrainState, create_state, init_state, num_params
from jaxlm.train.step import lm_loss_fn, make_eval_step, make_train_step
from jaxlm.utils.config import ConfigError, to_dict


@dataclasses.dataclass
class TrainResult:
    """What a run returns.

    Attributes:
        state: the final TrainState (on device).
        model_cfg: the model config trained (from the pretrained file when fine-tuning).
        history: logged train metrics, one dict per log step (this process's run only).
        evals: held-out ``{"step", "loss", "perplexity"}`` rows.
        plan: where the initial state came from.
        start_step: the step this run started at (> 0 after a resume).
        compile_s: seconds of the first (compiling) step.
        tokenizer: the tokenizer of the data (None for synthetic data).
        num_params: parameter count.
        skipped_steps: corrupt checkpoint steps passed over on resume, ``(step, reason)``.
        config_changes: accepted differences from the saved config (``allow_config_change``).
    """

    state: TrainState
    model_cfg: ModelConfig
    history: list[dict[str, float]]
    evals: list[dict[str, float]]
    plan: ResumePlan
    start_step: int
    compile_s: float
    tokenizer: Any
    num_params: int
    skipped_steps: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    config_changes: list[str] = dataclasses.field(default_factory=list)


def check_workdir(workdir: pathlib.Path) -> None:
    """Creates ``workdir`` and proves it writable; raises CheckpointError (one line) if not."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f".write_probe.{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise CheckpointError(
            f"--workdir {str(workdir)!r} is not a writable folder ({why}); pass a folder "
            "you can write to (checkpoints, metrics.jsonl and config.json go there)") from None


def _keep_old_config(path: pathlib.Path, new_text: str, start: int) -> pathlib.Path | None:
    """Renames an existing ``config.json`` whose settings differ, so it is never overwritten.

    Only the resume source (``plan``) may differ without a copy being kept.
    """
    if not path.exists():
        return None
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = None
    new = json.loads(new_text)
    if isinstance(old, dict) and {k: v for k, v in old.items() if k != "plan"} == \
            {k: v for k, v in new.items() if k != "plan"}:
        return None
    n, target = 0, path.with_name(f"config.before_step_{start}.json")
    while target.exists():
        n += 1
        target = path.with_name(f"config.before_step_{start}.{n}.json")
    os.replace(path, target)
    return target


def _pretrained(init_from: str):
    from jaxlm.weights import load

    return load(init_from)


def resolve_model(cfg: TrainConfig, init_from: str | None):
    """(model config, pretrained or None, tokenizer override or None) for the run."""
    if not init_from:
        return cfg.model, None, None
    pre = _pretrained(init_from)
    tok = None
    if pre.tokenizer is not None:
        tok = data_lib.HFTokenizer(hf=pre.tokenizer.hf, eos_id=pre.tokenizer.eos_id,
                                   name=pathlib.Path(str(init_from)).name)
    return pre.cfg, pre, tok


def _place(params: Any, shardings: Any) -> Any:
    """Host arrays -> global arrays with ``shardings`` (each process fills its own shards)."""

    def one(x, s):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])

    return jax.tree.map(one, params, shardings)


def train_and_evaluate(
    cfg: TrainConfig,
    workdir: str | pathlib.Path,
    *,
    resume_from: str | None = None,
    init_from: str | None = None,
    on_step: Callable[[int, TrainState], None] | None = None,
    quiet: bool = False,
    progress_bar: Any = None,
    allow_config_change: bool = False,
) -> TrainResult:
    """Trains ``cfg`` in ``workdir`` (resuming if it holds a checkpoint) and evaluates.

    Args:
        cfg: the run config (``presets.get_config``).
        workdir: run folder: ``checkpoints/``, ``metrics.jsonl``, ``tb/``, ``config.json``.
        resume_from: another run's workdir/checkpoints to continue from (order 2).
        init_from: pretrained name/path for params-only init (order 3); defaults to
            ``cfg.init_from``.
        on_step: ``f(step, state)`` after every step (tests use it to kill a run).
        quiet: no progress bar or log lines.
        progress_bar: a tqdm-like bar to update instead of creating one.
        allow_config_change: resume even when the saved config differs in a setting that
            changes the computation (model shape, seq_len, learning rate, seed, data);
            the old ``config.json`` is then kept as ``config.before_step_<N>.json``.

    Returns:
        TrainResult.

    Raises:
        ConfigError / ValueError: bad config, batch/device mismatch, empty corpus,
            tokenizer larger than the model vocabulary (before compiling).
        CheckpointError: every checkpoint corrupt, a mismatched checkpoint, a changed
            config (without ``allow_config_change``), or an unwritable ``workdir``.
        NonFiniteError: NaN/Inf metrics at a log step (names the step).
    """
    cfg.validate()
    workdir = pathlib.Path(workdir)
    if jax.process_index() == 0:
        check_workdir(workdir)
    init_from = init_from or cfg.init_from
    model_cfg, pre, tok_override = resolve_model(cfg, init_from)
    if cfg.data.seq_len > model_cfg.max_seq_len and model_cfg.pos == "learned":
        raise ConfigError(f"data.seq_len={cfg.data.seq_len} > model max_seq_len "
                          f"{model_cfg.max_seq_len}; lower data.seq_len")

    # ---- devices, data (all validated before compiling)
    try:
        mesh = parallel.make_mesh(cfg.mesh_data, cfg.mesh_fsdp)
        parallel.check_batch(cfg.data.batch_size, mesh, cfg.grad_accum)
    except ValueError as e:  # the mesh/batch shape does not fit the devices
        raise ConfigError(str(e)) from None
    stream = data_lib.token_stream(cfg.data, tokenizer=tok_override,
                                   synthetic_vocab=min(model_cfg.vocab_size, 64), seed=cfg.seed)
    if stream.vocab_size > model_cfg.vocab_size:
        raise ConfigError(
            f"tokenizer {cfg.data.tokenizer!r} has {stream.vocab_size} ids but "
            f"model.vocab_size={model_cfg.vocab_size}; raise model.vocab_size or lower "
            "data.vocab_size"
        )
    rows = parallel.process_rows(cfg.data.batch_size)
    it = data_lib.PackedIterator(stream.train, cfg.data.seq_len, cfg.data.batch_size,
                                 seed=cfg.seed, rows=rows)
    eval_data = data_lib.eval_batches(stream.eval, cfg.data.seq_len, cfg.data.batch_size,
                                      cfg.eval_batches, rows=rows)

    # ---- optimizer, state layout, step functions
    tx, lr_fn = make_optimizer(cfg.optim, cfg.steps)
    loss_fn = lm_loss_fn(model_cfg)
    init_fn = lambda k: init(k, model_cfg)  # noqa: E731
    abstract = jax.eval_shape(lambda k: init_state(k, init_fn, tx), jax.random.key(0))
    state_sh = parallel.state_shardings(abstract, mesh, fsdp=cfg.mesh_fsdp > 1)
    abstract_sh = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sh)
    if cfg.parallel == "shard_map":
        step_fn = parallel.shard_map_step(
            make_train_step(loss_fn, tx, lr_fn=lr_fn, grad_accum=cfg.grad_accum,
                            axis_name=parallel.BATCH_AXES), mesh)
    else:
        step_fn = parallel.gspmd_step(
            make_train_step(loss_fn, tx, lr_fn=lr_fn, grad_accum=cfg.grad_accum), mesh, state_sh)
    eval_fn = jax.jit(make_eval_step(loss_fn),
                      in_shardings=(state_sh.params, parallel.batch_sharding(mesh)),
                      out_shardings=parallel.replicated(mesh))

    # ---- initial state by the resume order
    main = jax.process_index() == 0
    plan = plan_resume(workdir, resume_from, init_from)
    meta: dict[str, Any] = {}
    root = jax.random.key(cfg.seed)
    stream_desc = json.loads(data_lib.describe(stream))
    current = {"train": to_dict(cfg), "model": to_dict(model_cfg), "stream": stream_desc}
    changes: list[str] = []
    skipped: list[tuple[int, str]] = []
    if plan.source in ("workdir", "resume_from"):
        with Checkpointer(plan.path, read_only=True) as src:
            saved = src.newest_meta()
            if saved is not None:  # compare before restoring: a shape change names its field
                changes = config_changes(
                    {"train": saved.get("config"), "model": saved.get("model"),
                     "stream": saved.get("stream")}, current)
                _refuse_changes(changes, allow_config_change, plan.path)
            state, meta, good, skipped = src.restore_newest_good(abstract_sh)
        if skipped and plan.source == "workdir":
            if jax.process_count() > 1:
                from jax.experimental import multihost_utils

                multihost_utils.sync_global_devices("jaxlm_restored")
            if main:  # keep the corrupt steps for inspection, out of the way of new saves
                quarantine(plan.path, [s for s, _ in skipped if s > good],
                           workdir / "corrupt_checkpoints")
        it.set_state(meta["data"])
    elif plan.source == "init_from":
        want = jax.tree.map(lambda a: tuple(a.shape), abstract.params)
        have = jax.tree.map(lambda a: tuple(np.shape(a)), pre.params)
        if want != have:
            raise CheckpointError(f"--init_from={init_from!r}: its params do not match the "
                                  "model config; drop the model overrides when fine-tuning")
        params = _place(pre.params, state_sh.params)
        state = jax.jit(lambda p: create_state(p, tx), out_shardings=state_sh)(params)
        del params
    else:
        state = jax.jit(lambda k: init_state(k, init_fn, tx), out_shardings=state_sh)(
            jax.random.fold_in(root, 0))
    if plan.source not in ("workdir", "resume_from") and (workdir / "config.json").exists():
        try:  # a run that died before its first checkpoint
            old = json.loads((workdir / "config.json").read_text())
        except (OSError, ValueError):
            old = {}
        old_stream = old.get("data")
        changes = config_changes(
            {"train": old.get("train"), "model": old.get("model"),
             "stream": json.loads(old_stream) if isinstance(old_stream, str) else None},
            current)
        _refuse_changes(changes, allow_config_change, workdir / "config.json")
    step_rng = jax.jit(lambda: jax.random.fold_in(root, 1),
                       out_shardings=parallel.replicated(mesh))()
    start = int(jax.device_get(state.step))

    # ---- writers, checkpoints, timing
    n_params = num_params(abstract.params)
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    fpt = flops_per_token(model_cfg, cfg.data.seq_len)
    peak = 0.0
    if cfg.measure_peak:
        from jaxlm.utils.bench import matmul_peak_gflops

        peak = matmul_peak_gflops()
        if jax.default_backend() != "cpu":  # CPU fake devices share one host's cores
            peak *= jax.device_count()
    if main:
        text = _json({"train": to_dict(cfg), "model": to_dict(model_cfg), "plan": plan.source,
                      "num_params": n_params, "flops_per_token": fpt,
                      "data": data_lib.describe(stream)})
        kept = _keep_old_config(workdir / "config.json", text, start)
        if kept is not None:
            logging.warning("warning: config.json changed (%s); the old one is kept as %s",
                            "; ".join(changes) or "bookkeeping fields only", kept.name)
        tmp = workdir / "config.json.tmp"
        tmp.write_text(text)
        os.replace(tmp, workdir / "config.json")
    writer = MetricWriter(workdir, tensorboard=cfg.tensorboard, start=start)
    ckpt = Checkpointer(workdir / "checkpoints", save_every=cfg.ckpt_every, keep=cfg.keep_ckpts)
    progress = Progress(cfg.steps, tokens_per_step, fpt, peak, elapsed=meta.get("elapsed", 0.0))
    def say(fmt: str, *args) -> None:  # progress lines on stdout, above the tqdm bar
        if quiet or not main:
            return
        from tqdm.auto import tqdm as _tqdm

        _tqdm.write(fmt % args)

    say("train: %d params, %d devices (%s), mesh %s, %s, resume=%s from step %d, "
        "%.3g GFLOP/token, peak %.1f GFLOP/s", n_params, jax.device_count(),
        jax.default_backend(), dict(mesh.shape), cfg.parallel, plan.source, start, fpt / 1e9, peak)
    bar = progress_bar
    own_bar = False
    if bar is None and main and not quiet:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc="train", dynamic_ncols=True)
        own_bar = True

    def evaluate(params) -> tuple[float, float]:
        tot = w = 0.0
        for b in eval_data:
            out = jax.device_get(eval_fn(params, parallel.global_batch(b, mesh)))
            tot, w = tot + float(out["loss_sum"]), w + float(out["weight"])
        loss = tot / max(w, 1.0)
        return loss, math.exp(min(loss, 50.0))

    def save(s: int, force: bool) -> None:
        m = {"step": s, "data": it.state(), "elapsed": progress.elapsed,
             "config": to_dict(cfg), "model": to_dict(model_cfg), "stream": stream_desc}
        ckpt.save(s, state, m, force=force)

    history: list[dict[str, float]] = []
    evals: list[dict[str, float]] = []
    compile_s = 0.0
    last_ok: int | None = None
    try:
        for step in range(start, cfg.steps):
            t0 = time.perf_counter()
            batch = parallel.global_batch(next(it), mesh)
            state, metrics = step_fn(state, batch, step_rng)
            s = step + 1
            if step == start:
                jax.block_until_ready(metrics)
                compile_s = time.perf_counter() - t0
                progress.start(s)
            if s % cfg.log_every == 0 or s == cfg.steps:
                host = {k: float(v) for k, v in jax.device_get(metrics).items()}
                check_finite(host, s, last_ok)
                last_ok = s
                rep = progress.report(s)
                row = {"step": s, **host, **rep}
                history.append(row)
                writer.write(s, {**host, **rep})
                mfu = f" MFU {100 * rep['mfu']:.1f}%" if "mfu" in rep else ""
                tps = f" {rep['tokens_per_s']:.0f} tok/s" if "tokens_per_s" in rep else ""
                eta = f" ETA {format_eta(rep['eta_s'])}" if "eta_s" in rep else ""
                say("step %d/%d loss %.4f%s%s%s", s, cfg.steps, host["loss"], tps, mfu, eta)
                if bar is not None:
                    bar.set_postfix_str(f"loss {host['loss']:.3f}{tps}{mfu}")
            if bar is not None:
                bar.update(1)
            if (cfg.eval_every and s % cfg.eval_every == 0) or s == cfg.steps:
                progress.pause()
                loss, ppl = evaluate(state.params)
                evals.append({"step": s, "loss": loss, "perplexity": ppl})
                writer.write(s, {"loss": loss, "perplexity": ppl}, prefix="eval_")
                say("eval step %d: loss %.4f perplexity %.2f", s, loss, ppl)
                progress.resume()
            if s == cfg.steps or ckpt.should_save(s):
                progress.pause()
                save(s, force=True)
                progress.resume()
            if on_step is not None:
                on_step(s, state)
    finally:
        ckpt.close()
        writer.close()
        if own_bar:
            bar.close()
    return TrainResult(state=state, model_cfg=model_cfg, history=history, evals=evals,
                       plan=plan, start_step=start, compile_s=compile_s,
                       tokenizer=stream.tokenizer, num_params=n_params,
                       skipped_steps=skipped, config_changes=changes)


def _refuse_changes(changes: list[str], allow: bool, where: Any) -> None:
    if changes and not allow:
        raise CheckpointError(
            f"the run saved in {where} used another config ({'; '.join(changes)}); resuming "
            "it with this one would change its computation: use a new --workdir, restore "
            "the old settings, or pass --allow_config_change")


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=2, default=str)
