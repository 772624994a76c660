"""End-to-end: train, checkpoint, kill mid-way, restart with identical losses; resume order;
bad inputs fail with one clear message before compiling."""

import dataclasses
import pathlib
import shutil

import chex
import jax
import numpy as np
import pytest

from jaxlm.core import init
from jaxlm.train import checkpoint as C
from jaxlm.train.loop import train_and_evaluate
from jaxlm.train.metrics import NonFiniteError, read_jsonl
from jaxlm.train.optim import make_optimizer
from jaxlm.train.presets import get_config
from jaxlm.train.state import init_state
from jaxlm.utils.config import ConfigError

OVR = ["steps=8", "log_every=1", "ckpt_every=4", "eval_every=0", "keep_ckpts=3"]


class Killed(RuntimeError):
    pass


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    cfg = get_config("tiny_test", OVR)
    wd = tmp_path_factory.mktemp("full")
    return cfg, wd, train_and_evaluate(cfg, wd, quiet=True)


def test_smoke_writes_metrics_tb_and_checkpoints(full_run):
    cfg, wd, res = full_run
    rows = [r for r in read_jsonl(wd / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert all(r["tokens"] == 8 * 32 for r in rows)
    assert any(p.name.startswith("events.out.tfevents") for p in (wd / "tb").iterdir())
    with C.Checkpointer(wd / "checkpoints", read_only=True) as ck:
        assert ck.all_steps() == [4, 8]
        assert ck.read_meta(8)["data"] == {"epoch": 0, "index": 8}
    assert res.evals[-1]["step"] == 8 and np.isfinite(res.evals[-1]["perplexity"])
    assert res.evals[-1]["perplexity"] == pytest.approx(np.exp(res.evals[-1]["loss"]))


def test_killed_run_resumes_with_identical_losses(full_run, tmp_path):
    cfg, _, ref = full_run

    def kill_at_6(step, state):
        if step == 6:
            raise Killed("simulated preemption")

    with pytest.raises(Killed):
        train_and_evaluate(cfg, tmp_path, quiet=True, on_step=kill_at_6)
    with C.Checkpointer(tmp_path / "checkpoints", read_only=True) as ck:
        assert ck.latest_step() == 4
    res = train_and_evaluate(cfg, tmp_path, quiet=True)
    assert res.plan.source == "workdir" and res.start_step == 4
    got = {r["step"]: r["loss"] for r in res.history}
    want = {r["step"]: r["loss"] for r in ref.history}
    assert sorted(got) == [5, 6, 7, 8]
    for s in got:
        assert got[s] == pytest.approx(want[s], rel=1e-6, abs=1e-7)
    chex.assert_trees_all_close(jax.device_get(res.state.params),
                                jax.device_get(ref.state.params), rtol=1e-6, atol=1e-7)


def test_resume_order(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert C.plan_resume(a).source == "scratch"
    assert C.plan_resume(a, None, "smollm2-135m-instruct") == C.ResumePlan(
        "init_from", "smollm2-135m-instruct")
    with pytest.raises(C.CheckpointError, match="holds no checkpoint"):
        C.plan_resume(a, str(b), "x")
    (b / "checkpoints" / "4").mkdir(parents=True)
    plan = C.plan_resume(a, str(b), "x")
    assert plan.source == "resume_from" and plan.path.endswith("b/checkpoints")
    (a / "checkpoints" / "2").mkdir(parents=True)
    assert C.plan_resume(a, str(b), "x").source == "workdir"


def test_mismatched_and_corrupt_checkpoints(full_run, tmp_path):
    cfg, wd, _ = full_run
    tx, _ = make_optimizer(cfg.optim, cfg.steps)
    wider = dataclasses.replace(cfg.model, d_model=48, head_dim=12)
    abstract = jax.eval_shape(lambda k: init_state(k, lambda kk: init(kk, wider), tx),
                              jax.random.key(0))
    with C.Checkpointer(wd / "checkpoints", read_only=True) as ck:
        with pytest.raises(C.CheckpointError, match=r"embed has shape \(264, 32\) on disk"):
            ck.restore(abstract)
    bad = tmp_path / "ck"
    shutil.copytree(wd / "checkpoints", bad)
    for p in (bad / "8" / "state").rglob("*"):
        if p.is_file():
            p.write_bytes(b"garbage")
    right = jax.eval_shape(lambda k: init_state(k, lambda kk: init(kk, cfg.model), tx),
                           jax.random.key(0))
    with C.Checkpointer(bad, read_only=True) as ck:
        with pytest.raises(C.CheckpointError, match="corrupt|unreadable"):
            ck.restore(right, 8)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["nope=1"], "unknown config field 'nope'"),
        (["data.batch_size=6"], "not divisible by 4 devices"),
        (["data.batch_size=8", "grad_accum=3"], "divisible by grad_accum"),
        (["data.seq_len=100"], "exceeds model.max_seq_len"),
    ],
)
def test_bad_config_fails_before_compiling(overrides, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        cfg = get_config("tiny_test", overrides)
        train_and_evaluate(cfg, tmp_path, quiet=True)


def test_unknown_preset_and_empty_corpus(tmp_path):
    with pytest.raises(ConfigError, match="unknown train preset 'tiny_tset'"):
        get_config("tiny_tset")
    (tmp_path / "e.txt").write_text("")
    cfg = get_config("tiny_test", [f"data.corpus={tmp_path}/*.txt"])
    with pytest.raises(ValueError, match="is empty"):
        train_and_evaluate(cfg, tmp_path / "wd", quiet=True)


def test_nan_loss_stops_with_step(tmp_path):
    cfg = get_config("tiny_test", ["optim.lr=1e30", "optim.warmup_steps=0", "optim.clip_norm=0",
                                   "log_every=1", "steps=4", "data.corpus=synthetic",
                                   "tensorboard=false"])
    with pytest.raises(NonFiniteError, match=r"non-finite .* at step \d"):
        train_and_evaluate(cfg, tmp_path, quiet=True)
    assert not pathlib.Path(tmp_path, "checkpoints", "4").exists()
