"""Orbax checkpoints of the train state, the config and the data-iterator position.

Checkpoints are untrusted input: every save stores a SHA-256 of each array's bytes
(dtype and shape included) in the ``meta`` item, and every restore recomputes them.
A step whose files are unreadable or whose arrays fail their checksum is corrupt
(``CorruptCheckpointError``); ``restore_newest_good`` then reports it in one warning
line and falls back to the newest good step. Arrays not fully addressable on this
process (multi-host shards) are not covered; on one host that is none of them.

One small wrapper (``Checkpointer``) over ``ocp.CheckpointManager`` with
``args=Composite(state=StandardSave, meta=JsonSave)``, a save-decision policy
(every N steps, plus forced saves) and a preservation policy (keep the latest N),
so the newer ``ocp.v1`` API can be adopted behind it later. Restores go onto the
abstract tree from ``jax.eval_shape`` (with shardings), after checking that the
stored shapes match it.

Resume order (``plan_resume``), the first that applies wins:
  1. a checkpoint already in ``<workdir>/checkpoints`` (a restarted run continues);
  2. an explicit ``resume_from`` (another run's workdir or checkpoints folder):
     full state + data position;
  3. ``init_from`` (a pretrained model name or weights path): params only,
     fresh optimizer, step 0;
  4. scratch (random init from the seed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import shutil
from collections.abc import Callable
from typing import Any, Literal

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers as ocm

from jaxlm.train.state import TrainState
from jaxlm.utils.cli import UserError

CKPT_DIR = "checkpoints"


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing, corrupt or does not match the config."""


class CorruptCheckpointError(CheckpointError):
    """A step whose files are unreadable or whose arrays fail their checksum."""


class Checkpointer:
    """Saves/restores ``(TrainState, meta dict)`` under ``directory``.

    Args:
        directory: the checkpoints folder (``<workdir>/checkpoints``).
        save_every: steps between regular saves (0: only forced saves).
        keep: how many of the latest checkpoints to keep.
        async_save: write in a background thread (``wait`` before reading back).
        read_only: open an existing folder without creating or deleting anything.
    """

    def __init__(self, directory: str | pathlib.Path, *, save_every: int = 0, keep: int = 2,
                 async_save: bool = True, read_only: bool = False):
        self.directory = pathlib.Path(directory).absolute()
        if keep < 1:
            raise CheckpointError(f"keep={keep}: at least one checkpoint must be kept (keep >= 1)")
        if save_every < 0:
            raise CheckpointError(f"save_every={save_every}: must be >= 0 (0: forced saves only)")
        policy = (ocm.FixedIntervalPolicy(save_every) if save_every > 0
                  else ocm.SpecificStepsPolicy(steps=()))
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=policy,
            preservation_policy=ocm.LatestN(keep),
            enable_async_checkpointing=async_save,
            create=not read_only,
            read_only=read_only,
        )
        self.mngr = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler()})

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def latest_step(self) -> int | None:
        return self.mngr.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.mngr.all_steps())

    def should_save(self, step: int) -> bool:
        return self.mngr.should_save(step)

    def save(self, step: int, state: TrainState, meta: dict[str, Any], *,
             force: bool = False) -> bool:
        """Saves when the policy says so (or ``force``); returns whether it saved.

        The ``meta`` item gains ``checksums`` (``array_checksums`` of ``state``).
        """
        if not (force or self.should_save(step)):
            return False
        meta = {**meta, "checksums": array_checksums(state)}
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  meta=ocp.args.JsonSave(meta))
        return bool(self.mngr.save(step, args=args, force=force))

    def wait(self) -> None:
        self.mngr.wait_until_finished()

    def close(self) -> None:
        self.mngr.wait_until_finished()
        self.mngr.close()

    def read_meta(self, step: int | None = None) -> dict[str, Any]:
        step = self.latest_step() if step is None else step
        try:
            out = self.mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        except Exception as e:  # noqa: BLE001 - turned into one clear message
            raise CorruptCheckpointError(
                f"checkpoint {self.directory}/{step} has no readable meta ({type(e).__name__}); "
                "it is corrupt: delete that step folder or start a new --workdir"
            ) from None
        return dict(out["meta"])

    def check_shapes(self, abstract: TrainState, step: int) -> None:
        """Raises CheckpointError when stored shapes differ from ``abstract``'s."""
        try:
            meta = self.mngr.item_metadata(step)["state"]
        except Exception as e:  # noqa: BLE001
            raise CorruptCheckpointError(
                f"checkpoint {self.directory}/{step} is unreadable ({type(e).__name__}: "
                f"{str(e)[:120]}); delete that step folder or start a new --workdir"
            ) from None
        if meta is None:
            raise CorruptCheckpointError(f"checkpoint {self.directory}/{step} holds no train state")
        want = _shapes(abstract)
        have = _shapes(meta)
        missing = sorted(set(want) - set(have))
        if missing:
            raise CheckpointError(
                f"checkpoint {self.directory}/{step} lacks {len(missing)} arrays the config "
                f"needs (first: {missing[0]}); it was written for another model/optimizer: "
                "match the config or use a new --workdir"
            )
        bad = [(k, have[k], want[k]) for k in want if tuple(have[k]) != tuple(want[k])]
        if bad:
            k, h, w = bad[0]
            raise CheckpointError(
                f"checkpoint {self.directory}/{step} does not match the config: {k} has shape "
                f"{tuple(h)} on disk but {tuple(w)} in the config ({len(bad)} arrays differ); "
                "use the config it was trained with or a new --workdir"
            )

    def restore(self, abstract: TrainState, step: int | None = None
                ) -> tuple[TrainState, dict[str, Any]]:
        """Restores ``(state, meta)`` onto ``abstract`` (ShapeDtypeStructs with shardings).

        The arrays are checked against the checksums stored at save time.

        Raises:
            CorruptCheckpointError: unreadable files or an array that fails its checksum.
            CheckpointError: no checkpoint, or shapes that differ from the config.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        self.check_shapes(abstract, step)
        try:
            out = self.mngr.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        except Exception as e:  # noqa: BLE001
            raise CorruptCheckpointError(
                f"checkpoint {self.directory}/{step} could not be restored ({type(e).__name__}: "
                f"{' '.join(str(e).split())[:160]}); it is corrupt: delete that step folder or "
                "use a new --workdir"
            ) from None
        state, meta = out["state"], dict(out["meta"])
        stored = meta.get("checksums")
        if stored is not None:
            bad = verify_checksums(state, stored)
            if bad:
                raise CorruptCheckpointError(
                    f"checkpoint {self.directory}/{step}: array {bad[0]} fails its checksum "
                    f"({len(bad)} of {len(stored)} arrays differ from what was saved); the files "
                    "are corrupt: delete that step folder or use a new --workdir")
        return state, meta

    def restore_newest_good(
        self, abstract: TrainState, *, warn: Callable[[str], None] | None = None,
    ) -> tuple[TrainState, dict[str, Any], int, list[tuple[int, str]]]:
        """Restores the newest step that reads back intact, newest first.

        Each corrupt step is reported with one ``warn`` line (default: an absl warning)
        naming the step and the array or file, and skipped.

        Returns:
            ``(state, meta, step, skipped)`` with ``skipped`` the ``(step, reason)`` pairs.

        Raises:
            CheckpointError: no step at all, every step is corrupt, or the shapes differ
                from the config (not corruption: no fallback).
        """
        warn = warn or logging.warning
        steps = sorted(self.all_steps(), reverse=True)
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        skipped: list[tuple[int, str]] = []
        for step in steps:
            try:
                state, meta = self.restore(abstract, step)
            except CorruptCheckpointError as e:
                reason = str(e)
                older = [s for s in steps if s < step]
                then = f"; falling back to step {older[0]}" if older else ""
                warn(f"warning: {reason}{then}")
                skipped.append((step, reason))
                continue
            return state, meta, step, skipped
        raise CorruptCheckpointError(
            f"every checkpoint in {self.directory} is corrupt (steps "
            f"{', '.join(map(str, steps))}); move the folder away to start from scratch")

    def newest_meta(self) -> dict[str, Any] | None:
        """The meta of the newest step whose meta reads back (None if none does)."""
        for step in sorted(self.all_steps(), reverse=True):
            try:
                return self.read_meta(step)
            except CheckpointError:
                continue
        return None


def _leaves(tree: Any) -> list[tuple[str, Any]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [(_norm_path(p), x) for p, x in flat]


def _digest(x: Any) -> str | None:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return None  # another process holds part of it
    a = np.ascontiguousarray(np.asarray(jax.device_get(x)))
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return "sha256:" + h.hexdigest()


def array_checksums(state: Any) -> dict[str, str]:
    """``{array path: "sha256:<hex>"}`` over each array's dtype, shape and bytes.

    Arrays only partly held by this process are left out (multi-host).
    """
    out = {}
    for path, x in _leaves(state):
        d = _digest(x)
        if d is not None:
            out[path] = d
    return out


def verify_checksums(state: Any, stored: dict[str, str]) -> list[str]:
    """The paths of arrays whose bytes differ from ``stored`` (missing ones count)."""
    have = dict(_leaves(state))
    bad = []
    for path, want in stored.items():
        if path not in have:
            bad.append(path)
            continue
        got = _digest(have[path])
        if got is not None and got != want:
            bad.append(path)
    return bad


def quarantine(directory: str | pathlib.Path, steps: list[int],
               dest: str | pathlib.Path) -> list[pathlib.Path]:
    """Moves the corrupt ``steps`` of ``directory`` under ``dest`` (kept for inspection).

    Used on a run's own checkpoints after a fallback, so later saves of those step
    numbers do not collide with the corrupt folders.
    """
    dest = pathlib.Path(dest)
    moved = []
    for s in steps:
        src = pathlib.Path(directory) / str(s)
        if not src.exists():
            continue
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / str(s)
        n = 1
        while target.exists():
            target = dest / f"{s}.{n}"
            n += 1
        shutil.move(str(src), str(target))
        moved.append(target)
    return moved


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    flat = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: hasattr(x, "shape") and not isinstance(x, dict))[0]
    out = {}
    for path, leaf in flat:
        if hasattr(leaf, "shape"):
            out[_norm_path(path)] = tuple(leaf.shape)
    return out


def _norm_path(path) -> str:
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
    return "/".join(parts)


# TrainConfig fields that change bookkeeping or layout, not the numbers a run computes.
BOOKKEEPING_FIELDS = frozenset({
    "log_every", "eval_every", "eval_batches", "ckpt_every", "keep_ckpts", "tensorboard",
    "measure_peak", "mesh_data", "mesh_fsdp", "parallel", "grad_accum", "init_from",
    "data.cache_dir",
})


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The settings that differ between a saved run and this one and change its numbers.

    Args:
        saved, current: ``{"train": to_dict(TrainConfig), "model": to_dict(ModelConfig),
            "stream": data description}`` (missing parts are not compared).

    Returns:
        ``"name: old -> new"`` lines. Bookkeeping fields (``BOOKKEEPING_FIELDS``) are
        ignored; ``steps`` counts only when the cosine schedule follows it
        (``optim.decay_steps`` is None).
    """
    out = []
    for part in ("train", "model", "stream"):
        a, b = saved.get(part), current.get(part)
        if a is None or b is None:
            continue
        fa, fb = _flat(a), _flat(b)
        for k in sorted(set(fa) | set(fb)):
            if part == "train" and (k in BOOKKEEPING_FIELDS or k.startswith("model.")):
                continue  # the resolved model config is compared as its own part
            if part == "train" and k == "steps" and fa.get("optim.decay_steps") is not None \
                    and fa.get("optim.decay_steps") == fb.get("optim.decay_steps"):
                continue
            va, vb = fa.get(k, "<absent>"), fb.get(k, "<absent>")
            if _norm(va) != _norm(vb):
                name = k if part == "train" else f"{part}.{k}"
                out.append(f"{name}: {va} -> {vb}")
    return out


def _norm(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def has_checkpoint(directory: str | pathlib.Path) -> bool:
    """True when ``directory`` holds at least one finished step folder."""
    d = pathlib.Path(directory)
    if not d.is_dir():
        return False
    return any(p.is_dir() and p.name.isdigit() for p in d.iterdir())


def checkpoint_dir(path: str | pathlib.Path) -> pathlib.Path:
    """``path`` itself if it holds step folders, else ``path/checkpoints``."""
    p = pathlib.Path(path)
    return p if has_checkpoint(p) else p / CKPT_DIR


@dataclasses.dataclass(frozen=True)
class ResumePlan:
    """Where the initial state comes from (see the module docstring for the order).

    Attributes:
        source: "workdir", "resume_from", "init_from" or "scratch".
        path: the checkpoint folder or pretrained name/path (None for scratch).
    """

    source: Literal["workdir", "resume_from", "init_from", "scratch"]
    path: str | None = None


def plan_resume(workdir: str | pathlib.Path, resume_from: str | None = None,
                init_from: str | None = None) -> ResumePlan:
    """Applies the resume order: workdir checkpoint > resume_from > init_from > scratch.

    Raises:
        CheckpointError: ``resume_from`` is given (and needed) but holds no checkpoint.
    """
    own = pathlib.Path(workdir) / CKPT_DIR
    if has_checkpoint(own):
        return ResumePlan("workdir", str(own))
    if resume_from:
        d = checkpoint_dir(resume_from)
        if not has_checkpoint(d):
            raise CheckpointError(
                f"--resume_from={resume_from!r} holds no checkpoint (looked in {d}); pass a run's "
                "workdir or its checkpoints folder"
            )
        return ResumePlan("resume_from", str(d))
    if init_from:
        return ResumePlan("init_from", str(init_from))
    return ResumePlan("scratch", None)


def host_state(state: TrainState) -> TrainState:
    """A numpy copy of the state (for comparisons in tests and tools)."""
    return jax.tree.map(np.asarray, jax.device_get(state))
