"""Flags, overrides and the one error path of the entrypoints (issue 20, classes 7 and the CLI).

A user error exits with status 2 and prints one line naming the input and the fix,
before any data preparation or compilation; a bug keeps its traceback; ``--verbose``
shows the traceback of user errors too. The subprocess tests pick inputs that fail
before anything heavy is loaded, so each takes about a second.
"""

import math
import os
import pathlib
import subprocess
import sys

import pytest

from jaxlm.train.checkpoint import CheckpointError
from jaxlm.train.metrics import NonFiniteError
from jaxlm.train.presets import DataConfig, OptimConfig, TrainConfig, get_config
from jaxlm.utils import cli
from jaxlm.utils.config import ConfigError, Registry, apply_overrides, check_finite

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _run(module: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    return subprocess.run([sys.executable, "-m", f"experiments.{module}", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)


def _one_line_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(lines) == 1, lines
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.mark.parametrize(
    "override, needles",
    [
        ("data.batch_size=0", ["data.batch_size=0", "batch_size must be >= 1"]),
        ("eval_batches=0", ["eval_batches=0", "must be >= 1"]),
        ("keep_ckpts=0", ["keep_ckpts=0", "must be >= 1"]),
        ("ckpt_every=-5", ["ckpt_every=-5", "must be >= 0"]),
        ("optim.lr=nan", ["optim.lr", "finite"]),
        ("optim.weight_decay=inf", ["optim.weight_decay", "finite"]),
        ("nope=1", ["unknown config field 'nope'", "valid fields"]),
    ],
)
def test_train_lm_refuses_bad_overrides_with_one_line(override, needles, tmp_path):
    wd = tmp_path / "wd"
    r = _run("train_lm", "--config=tiny_test", f"--override={override}", f"--workdir={wd}")
    _one_line_error(r, "train_lm: error:", *needles)
    assert not wd.exists(), "nothing may be written before the config is valid"


def test_train_lm_missing_workdir_and_bad_steps(tmp_path):
    _one_line_error(_run("train_lm", "--config=tiny_test"), "--workdir is required")
    _one_line_error(_run("train_lm", "--steps=0", f"--workdir={tmp_path}"), "--steps=0", ">= 1")


@pytest.mark.parametrize(
    "module, kind",
    [("train_lm", "train"), ("atom_train", "atom_train"), ("refresh_knowledge", "refresh_knowledge"),
     ("luminate", "luminate"), ("llmsrec_syn", "llmsrec_syn")],
)
def test_unknown_config_lists_the_choices(module, kind, tmp_path):
    r = _run(module, "--config=no_such_preset", f"--workdir={tmp_path / 'wd'}")
    line = _one_line_error(r, f"unknown {kind} preset 'no_such_preset'", "choose one of:")
    choices = line.split("choose one of:")[1].split(",")
    assert len(choices) >= 2 and all(c.strip() for c in choices)
    assert not (tmp_path / "wd").exists()


def test_verbose_shows_the_traceback(tmp_path):
    r = _run("train_lm", "--config=nope", f"--workdir={tmp_path}", "--verbose")
    assert r.returncode != 0 and r.returncode != 2
    assert "Traceback" in r.stderr and "ConfigError" in r.stderr


def test_guard_sorts_user_errors_from_bugs(capsys):
    def bad_input(argv):
        raise ConfigError("override x=1: expected\n  a number")

    with pytest.raises(SystemExit) as ex:
        cli.guard(bad_input, prog="prog")(["prog"])
    assert ex.value.code == 2
    err = capsys.readouterr().err
    assert err == "prog: error: override x=1: expected a number\n"

    def bug(argv):
        return {}["missing"]

    with pytest.raises(KeyError):  # a bug is not swallowed
        cli.guard(bug, prog="prog")(["prog"])

    def missing_file(argv):
        open("/nonexistent/dir/file.txt")

    with pytest.raises(SystemExit) as ex:
        cli.guard(missing_file, prog="prog")(["prog"])
    assert ex.value.code == 2
    assert "/nonexistent/dir/file.txt" in capsys.readouterr().err


def test_error_families():
    for cls in (ConfigError, CheckpointError, NonFiniteError):
        assert issubclass(cls, cli.UserError)
    assert issubclass(ConfigError, ValueError)  # old `except ValueError` callers still work
    assert cli.is_user_error(FileNotFoundError(2, "No such file", "x"))
    assert not cli.is_user_error(ZeroDivisionError())
    assert not cli.is_user_error(ValueError("plain ValueError is not assumed to be user input"))

    class Mine(RuntimeError):
        pass

    assert not cli.is_user_error(Mine())
    cli.register_user_error(Mine)
    assert cli.is_user_error(Mine())


def test_check_range():
    cli.check_range("n", 3, lo=1, hi=5)
    cli.check_range("n", None, allow_none=True)
    for v, kw, msg in [(0, {"lo": 1}, ">= 1"), (6, {"hi": 5}, "<= 5"), (0.0, {"lo": 0.0,
                       "lo_open": True}, "> 0.0"), (math.nan, {}, "finite"),
                       (math.inf, {"lo": 0}, "finite"), (None, {}, "required")]:
        with pytest.raises(cli.UserError, match=msg):
            cli.check_range("n", v, **kw)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: DataConfig(batch_size=0), "batch_size must be >= 1"),
        (lambda: DataConfig(seq_len=1), "seq_len must be > 1"),
        (lambda: DataConfig(eval_fraction=float("nan")), "eval_fraction=nan is not finite"),
        (lambda: OptimConfig(lr=float("inf")), "lr=inf is not finite"),
        (lambda: OptimConfig(lr=0.0), "lr must be > 0"),
        (lambda: OptimConfig(b2=1.0), r"b2 must be in \[0, 1\)"),
        (lambda: OptimConfig(clip_norm=-1.0), "clip_norm must be >= 0"),
        (lambda: TrainConfig(eval_batches=0), "eval_batches must be >= 1"),
        (lambda: TrainConfig(keep_ckpts=0), "keep_ckpts must be >= 1"),
        (lambda: TrainConfig(ckpt_every=-5), "ckpt_every must be >= 0"),
        (lambda: TrainConfig(eval_every=-1), "eval_every must be >= 0"),
        (lambda: TrainConfig(mesh_data=0), "mesh_data must be >= 1 or -1"),
    ],
)
def test_library_users_get_the_same_validation(build, match):
    """The checks live in the frozen dataclasses, not in the entrypoint."""
    with pytest.raises(ConfigError, match=match):
        build()


def test_cross_field_checks_wait_for_all_overrides():
    # seq_len above the model's max is only legal together with the max_seq_len raise
    cfg = get_config("tiny_test", ["data.seq_len=128", "model.max_seq_len=128"])
    assert cfg.data.seq_len == 128
    with pytest.raises(ConfigError, match="exceeds model.max_seq_len"):
        get_config("tiny_test", ["data.seq_len=128"])


def test_overrides_refuse_non_finite_floats_of_any_registry():
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class C:
        x: float = 1.0
        xs: tuple[float, ...] = (1.0,)

    reg = Registry("demo")
    reg.add("a", C())
    for bad in ("x=nan", "x=-inf", "x=Infinity", "xs=[1.0, NaN]"):
        with pytest.raises(ConfigError, match="finite"):
            reg.get("a", [bad])
    assert apply_overrides(C(), ["x=2.5"]).x == 2.5
    with pytest.raises(ConfigError, match=r"C: x=nan is not finite"):
        check_finite(C(x=float("nan")))


def test_antiunify_nested_bound_guard_and_progress():
    args = ["--s=\\x.x", "--t=\\x.c", "--sig=c:i", "--nested"]
    r = _run("antiunify", *args, "--bound=8")
    _one_line_error(r, "--bound=8", "--force", "<=7")
    assert r.stdout == ""  # refused before any enumeration
    _one_line_error(_run("antiunify", *args, "--bound=1"), "--bound=1", ">= 2")
    r = _run("antiunify", *args, "--bound=3")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "nested sizes" in r.stderr and "3/3" in r.stderr  # sizes 2, 3 and 4
    rows = [ln.split(" | ")[0] for ln in r.stdout.splitlines()[1:]]
    assert rows == ["2", "3"]
