"""Checkpoints as untrusted input (issue 20, class 4).

Bit flips and truncations in a step's array files are caught (per-array SHA-256 in
the checkpoint's meta item, or orbax's own read error) and the run falls back to the
newest good step with one warning naming the step and the array; a resumed run with
a config that changes the computation is refused unless ``allow_config_change``;
``metrics.jsonl`` never repeats a step after a kill; an unwritable workdir is one
clear error.
"""

import json
import logging
import os
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxlm.train import checkpoint as C
from jaxlm.train.loop import train_and_evaluate
from jaxlm.train.metrics import read_jsonl, truncate_jsonl
from jaxlm.train.presets import get_config

ROOT = pathlib.Path(__file__).resolve().parents[2]
# orbax's failed read of a damaged chunk leaves an asyncio callback on a closed event loop
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
OVR = ["steps=8", "log_every=1", "ckpt_every=4", "eval_every=0", "keep_ckpts=3",
       "tensorboard=false", "data.corpus=synthetic"]


class Killed(RuntimeError):
    pass


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    cfg = get_config("tiny_test", OVR)
    wd = tmp_path_factory.mktemp("full")
    res = train_and_evaluate(cfg, wd, quiet=True)
    return cfg, wd, res


def _copy(wd: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
    shutil.copytree(wd, dst)
    return dst


def _data_files(step_dir: pathlib.Path) -> list[pathlib.Path]:
    """Orbax's array data files of one step (OCDBT chunks), largest first."""
    files = [p for p in (step_dir / "state").rglob("*")
             if p.is_file() and p.parent.name == "d"]
    assert files, f"no array data files under {step_dir}"
    return sorted(files, key=lambda p: -p.stat().st_size)


def _loss_rows(wd: pathlib.Path) -> list[dict]:
    return [r for r in read_jsonl(wd / "metrics.jsonl") if "loss" in r]


def _params(res) -> dict:
    return jax.tree.map(np.asarray, jax.device_get(res.state.params))


def _assert_same_params(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6 * float(np.abs(y).max() + 1e-30))


def test_save_stores_a_checksum_per_array(full_run):
    cfg, wd, res = full_run
    with C.Checkpointer(wd / "checkpoints", read_only=True) as ck:
        meta = ck.read_meta(8)
    sums = meta["checksums"]
    n_arrays = len(jax.tree.leaves(res.state))
    assert len(sums) == n_arrays and all(v.startswith("sha256:") for v in sums.values())
    assert sums == C.array_checksums(res.state)  # the final state is what step 8 holds
    flipped = jax.tree.map(lambda x: x, res.state)
    p = jax.device_get(flipped.params)
    p["embed"] = np.asarray(p["embed"]).copy()
    p["embed"].view(np.uint32)[3, 5] ^= 1  # one bit of one float
    bad = C.verify_checksums(flipped.replace(params=p), sums)
    assert bad == ["params/embed"]


def test_bit_flip_in_array_data_falls_back_to_previous_step(full_run, tmp_path, caplog):
    cfg, wd0, ref = full_run
    wd = _copy(wd0, tmp_path / "wd")
    f = _data_files(wd / "checkpoints" / "8")[0]
    b = bytearray(f.read_bytes())
    b[len(b) // 3] ^= 0x10
    f.write_bytes(bytes(b))
    with caplog.at_level(logging.WARNING):
        res = train_and_evaluate(cfg, wd, quiet=True)
    assert res.start_step == 4 and [s for s, _ in res.skipped_steps] == [8]
    # (the chunks are compressed: a flip mostly decodes to wrong numbers, which only the
    # checksum sees, or hits a block header, which orbax's read rejects)
    assert re.search(r"array \S+ fails its checksum|could not be restored",
                     res.skipped_steps[0][1])
    warned = [r.getMessage() for r in caplog.records if "checkpoints/8" in r.getMessage()]
    assert len(warned) == 1 and "array " in warned[0] and "falling back to step 4" in warned[0]
    assert "\n" not in warned[0]
    # the corrupt step is kept aside, the re-run steps are the reference's, rows are unique
    assert (wd / "corrupt_checkpoints" / "8").is_dir()
    _assert_same_params(_params(res), _params(ref))
    steps = [r["step"] for r in _loss_rows(wd)]
    assert steps == list(range(1, 9))
    with C.Checkpointer(wd / "checkpoints", read_only=True) as ck:
        assert ck.all_steps() == [4, 8]
        ck.read_meta(8)["checksums"]  # the new step 8 is intact


def test_silent_bit_flip_is_caught_by_the_checksum(full_run, tmp_path):
    """A flip that orbax restores without complaint (wrong numbers) fails the checksum."""
    import orbax.checkpoint as ocp

    cfg, wd0, ref = full_run
    abstract = _abstract(cfg)
    want = jax.tree.map(np.asarray, jax.device_get(ref.state))
    for trial in range(12):
        ck_dir = _copy(wd0 / "checkpoints", tmp_path / f"ck{trial}")
        f = _data_files(ck_dir / "8")[0]
        b = bytearray(f.read_bytes())
        b[len(b) // 4 + 997 * trial] ^= 0x04
        f.write_bytes(bytes(b))
        with C.Checkpointer(ck_dir, read_only=True) as ck:
            try:  # orbax alone, no checksum
                raw = ck.mngr.restore(8, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract)))["state"]
            except Exception:  # noqa: BLE001 - a flip orbax does see; try another offset
                continue
            got = jax.tree.map(np.asarray, jax.device_get(raw))
            differs = [a for a, b_ in zip(jax.tree.leaves(got), jax.tree.leaves(want),
                                          strict=True) if not np.array_equal(a, b_)]
            if not differs:
                continue  # the flip landed in padding
            with pytest.raises(C.CorruptCheckpointError, match=r"array \S+ fails its checksum"):
                ck.restore(abstract, 8)
            return
    pytest.fail("no offset among 12 gave a silent restore of changed numbers")


def _abstract(cfg):
    from jaxlm.core import init
    from jaxlm.train.optim import make_optimizer
    from jaxlm.train.state import init_state

    tx, _ = make_optimizer(cfg.optim, cfg.steps)
    return jax.eval_shape(lambda k: init_state(k, lambda kk: init(kk, cfg.model), tx),
                          jax.random.key(0))


@pytest.mark.parametrize("damage", ["truncate", "delete_metadata"])
def test_truncated_latest_step_falls_back(full_run, tmp_path, damage):
    cfg, wd0, ref = full_run
    wd = _copy(wd0, tmp_path / "wd")
    step8 = wd / "checkpoints" / "8"
    if damage == "truncate":
        for f in _data_files(step8):
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    else:
        (step8 / "state" / "_METADATA").unlink()
    tx_state, meta, good, skipped = _restore_newest(cfg, wd)
    assert good == 4 and [s for s, _ in skipped] == [8]
    assert "checkpoints/8" in skipped[0][1]


def _restore_newest(cfg, wd):
    abstract = _abstract(cfg)
    lines: list[str] = []
    with C.Checkpointer(wd / "checkpoints", read_only=True) as ck:
        out = ck.restore_newest_good(abstract, warn=lines.append)
    assert len(lines) == len(out[3])
    return out


def test_every_step_corrupt_is_one_error(full_run, tmp_path):
    cfg, wd0, _ = full_run
    wd = _copy(wd0, tmp_path / "wd")
    for s in (4, 8):
        for f in _data_files(wd / "checkpoints" / str(s)):
            f.write_bytes(b"")
    with pytest.raises(C.CorruptCheckpointError, match=r"every checkpoint .* is corrupt"):
        train_and_evaluate(cfg, wd, quiet=True)


@pytest.mark.parametrize(
    "override, field",
    [
        ("data.seq_len=16", "data.seq_len: 32 -> 16"),
        ("optim.lr=0.001", "optim.lr: 0.003 -> 0.001"),
        ("seed=1", "seed: 0 -> 1"),
        ("model.d_ff=96", "model.d_ff: 64 -> 96"),
        ("steps=12", "steps: 8 -> 12"),
        ("data.corpus=pydoc", "data.corpus: synthetic -> pydoc"),
    ],
)
def test_changed_config_is_refused(full_run, tmp_path, override, field):
    cfg0, wd0, _ = full_run
    wd = _copy(wd0, tmp_path / "wd")
    before = (wd / "config.json").read_bytes()
    cfg = get_config("tiny_test", [*OVR, override])
    with pytest.raises(C.CheckpointError, match="--allow_config_change") as ex:
        train_and_evaluate(cfg, wd, quiet=True)
    assert field in str(ex.value)
    assert (wd / "config.json").read_bytes() == before


def test_bookkeeping_change_is_allowed_and_allow_flag_keeps_old_config(full_run, tmp_path):
    cfg0, wd0, _ = full_run
    wd = _copy(wd0, tmp_path / "wd")
    before = (wd / "config.json").read_text()
    res = train_and_evaluate(get_config("tiny_test", [*OVR, "log_every=2", "eval_batches=1",
                                                      "keep_ckpts=2"]), wd, quiet=True)
    assert res.start_step == 8 and res.config_changes == []
    kept = list(wd.glob("config.before_step_*.json"))  # the log_every=1 one
    assert len(kept) == 1 and json.loads(kept[0].read_text())["train"]["log_every"] == 1
    # allowed change: the old config.json is kept next to the new one
    cfg = get_config("tiny_test", [*OVR, "optim.lr=0.001"])
    res = train_and_evaluate(cfg, wd, quiet=True, allow_config_change=True)
    assert res.config_changes == ["optim.lr: 0.003 -> 0.001"]
    kept = sorted(wd.glob("config.before_step_*.json"), key=lambda p: p.stat().st_mtime_ns)
    assert len(kept) == 2
    old = json.loads(kept[-1].read_text())["train"]
    assert old["optim"]["lr"] == 0.003 and old["log_every"] == 2
    assert json.loads((wd / "config.json").read_text())["train"]["optim"]["lr"] == 0.001
    assert json.loads(before)["train"]["optim"]["lr"] == 0.003


def test_config_changes_classifies_fields():
    a = {"train": {"steps": 8, "log_every": 1, "optim": {"lr": 1.0, "decay_steps": None},
                   "data": {"cache_dir": "x", "seq_len": 4}},
         "model": {"d_model": 8}, "stream": {"train_tokens": 100}}
    same = json.loads(json.dumps(a))
    same["train"]["log_every"] = 5
    same["train"]["data"]["cache_dir"] = "y"
    assert C.config_changes(a, same) == []
    b = json.loads(json.dumps(a))
    b["stream"]["train_tokens"] = 99  # same glob, other text
    b["model"]["d_model"] = 16
    assert C.config_changes(a, b) == ["model.d_model: 8 -> 16",
                                      "stream.train_tokens: 100 -> 99"]
    c = json.loads(json.dumps(a))
    c["train"]["optim"]["decay_steps"] = 8
    d = json.loads(json.dumps(c))
    d["train"]["steps"] = 20  # a fixed schedule: extending the run is fine
    assert C.config_changes(c, d) == []


def test_killed_run_metric_rows_are_unique(full_run, tmp_path):
    cfg, _, ref = full_run
    wd = tmp_path / "wd"

    def kill_at_6(step, state):
        if step == 6:
            raise Killed("simulated preemption")

    with pytest.raises(Killed):
        train_and_evaluate(cfg, wd, quiet=True, on_step=kill_at_6)
    assert [r["step"] for r in _loss_rows(wd)] == [1, 2, 3, 4, 5, 6]
    with open(wd / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "loss": 1.2')  # a row cut short by the kill
    res = train_and_evaluate(cfg, wd, quiet=True)
    assert res.start_step == 4
    rows = _loss_rows(wd)
    assert [r["step"] for r in rows] == list(range(1, 9))
    want = {r["step"]: r["loss"] for r in ref.history}
    for r in rows:
        assert r["loss"] == pytest.approx(want[r["step"]], rel=1e-5)
    assert not (wd / "metrics.jsonl.tmp").exists()
    assert not list(wd.glob("config.before_step_*"))  # same config: nothing to keep aside


def test_truncate_jsonl(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text("".join(json.dumps({"step": s, "x": s}) + "\n" for s in (1, 2, 3, 2, 5))
                 + '{"step": 6, "x"')
    assert truncate_jsonl(p, 2) == 3
    assert [r["step"] for r in read_jsonl(p)] == [1, 2, 2]
    assert truncate_jsonl(p, 2) == 0
    assert truncate_jsonl(tmp_path / "absent.jsonl", 3) == 0


def _is_effective_chmod() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() != 0


@pytest.mark.parametrize("kind", ["file_in_the_way", "under_proc", "read_only_dir"])
def test_unwritable_workdir_is_one_clear_error(tmp_path, kind):
    """As root, chmod does not stop writes, so two cases need no permissions at all: a
    regular file where a parent folder should be, and a path under /proc (no mkdir there)."""
    cfg = get_config("tiny_test", OVR)
    if kind == "file_in_the_way":
        (tmp_path / "f").write_text("x")
        wd = tmp_path / "f" / "wd"
    elif kind == "under_proc":
        wd = pathlib.Path("/proc/self/jaxlm_workdir")
    else:
        if not _is_effective_chmod():
            pytest.skip("running as root: chmod 0500 does not stop root's writes "
                        "(the file_in_the_way and under_proc cases cover this path)")
        wd = tmp_path / "ro"
        wd.mkdir()
        wd.chmod(0o500)
    try:
        with pytest.raises(C.CheckpointError, match="is not a writable folder") as ex:
            train_and_evaluate(cfg, wd, quiet=True)
    finally:
        if kind == "read_only_dir":
            wd.chmod(0o700)
    assert str(wd) in str(ex.value) and "\n" not in str(ex.value)


def test_unwritable_workdir_from_the_command_line(tmp_path):
    (tmp_path / "f").write_text("x")
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    r = subprocess.run([sys.executable, "-m", "experiments.train_lm", "--config=tiny_test",
                        "--data=synthetic", f"--workdir={tmp_path / 'f' / 'wd'}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, env=env)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and "error" in ln]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(lines) == 1 and "is not a writable folder" in lines[0]


def test_checkpointer_refuses_keep_zero(tmp_path):
    with pytest.raises(C.CheckpointError, match="keep=0"):
        C.Checkpointer(tmp_path / "c", keep=0)
    with pytest.raises(C.CheckpointError, match="save_every=-5"):
        C.Checkpointer(tmp_path / "c", save_every=-5)
