"""Orbax checkpoints of the train state, the config and the data-iterator position.

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
import pathlib
from typing import Any, Literal

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

from jaxlm.train.state import TrainState
from jaxlm.utils.cli import UserError

CKPT_DIR = "checkpoints"


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing, corrupt or does not match the config."""


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
        policy = (ocm.FixedIntervalPolicy(save_every) if save_every > 0
                  else ocm.SpecificStepsPolicy(steps=()))
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=policy,
            preservation_policy=ocm.LatestN(max(keep, 1)),
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
        """Saves when the policy says so (or ``force``); returns whether it saved."""
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
            raise CheckpointError(
                f"checkpoint {self.directory}/{step} has no readable meta ({type(e).__name__}); "
                "it is corrupt: delete that step folder or start a new --workdir"
            ) from None
        return dict(out["meta"])

    def check_shapes(self, abstract: TrainState, step: int) -> None:
        """Raises CheckpointError when stored shapes differ from ``abstract``'s."""
        try:
            meta = self.mngr.item_metadata(step)["state"]
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(
                f"checkpoint {self.directory}/{step} is unreadable ({type(e).__name__}: "
                f"{str(e)[:120]}); delete that step folder or start a new --workdir"
            ) from None
        if meta is None:
            raise CheckpointError(f"checkpoint {self.directory}/{step} holds no train state")
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

        Raises:
            CheckpointError: no checkpoint, shapes differ from the config, or corrupt files.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        self.check_shapes(abstract, step)
        try:
            out = self.mngr.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(
                f"checkpoint {self.directory}/{step} could not be restored ({type(e).__name__}: "
                f"{str(e)[:160]}); it is corrupt: delete that step folder or use a new --workdir"
            ) from None
        return out["state"], dict(out["meta"])


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
