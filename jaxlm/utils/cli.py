"""One error path for every ``python -m experiments.<name>`` entrypoint.

Entrypoints end with ``cli.run(main)`` instead of ``app.run(main)``. A *user
error* (bad flag, unknown preset, corrupt or mismatched input file, unwritable
folder) then prints one line, ``<prog>: error: <what> ; <fix>``, on stderr and
exits with status 2; a bug (any other exception) keeps its traceback. With
``--verbose`` user errors show their traceback too.

User errors are instances of ``UserError`` (``jaxlm.utils.config.ConfigError``,
``jaxlm.train.checkpoint.CheckpointError`` and ``NonFiniteError`` derive from
it), of a class listed in ``USER_ERROR_NAMES`` (error classes of other
packages, matched by qualified name so this module imports none of them), or
of a class passed to ``register_user_error``; the file-system errors that name
their path (``FileNotFoundError``, ``PermissionError``, ...) count too.

This module defines no flag at import time (``jaxlm`` stays flag-free); ``run``
defines ``--verbose`` when an entrypoint calls it.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from typing import Any

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """Bad input from the person running the program (not a bug).

    The message is one line naming the input and the fix.
    """


# Error classes of other jaxlm packages that describe bad input, by qualified name.
USER_ERROR_NAMES = frozenset({
    "jaxlm.weights.errors.WeightsError",
    "jaxlm.llm.base.BackendError",
    "jaxlm.llm.replay.CassetteMiss",
    "jaxlm.agents.luminate.DimensionError",
    "jaxlm.agents.recsys.data.DataFormatError",
    "jaxlm.symbolic.syntax.ParseError",
    "jaxlm.symbolic.syntax.TypeCheckError",
    "jaxlm.symbolic.matching.SearchLimit",
    "jaxlm.offload.netns.NetnsUnavailable",
    "jaxlm.offload.planner.PlanError",
    "jaxlm.offload.profile.ProfileError",
    "jaxlm.offload.scan_offload.ScanOffloadUnsupported",
})
_OS_USER_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
                   NotADirectoryError)
_registered: list[type[BaseException]] = []


def register_user_error(cls: type[BaseException]) -> type[BaseException]:
    """Marks ``cls`` (and its subclasses) as a user error for ``run``; usable as a decorator."""
    _registered.append(cls)
    return cls


def is_user_error(exc: BaseException) -> bool:
    """True when ``exc`` should be reported as one line instead of a traceback."""
    if isinstance(exc, (UserError, *_OS_USER_ERRORS, *_registered)):
        return True
    return any(f"{c.__module__}.{c.__qualname__}" in USER_ERROR_NAMES for c in type(exc).__mro__)


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (whitespace runs collapsed)."""
    msg = " ".join(str(exc).split())
    if isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) not in msg:
        msg = f"{msg}: {exc.filename}"
    return msg or type(exc).__name__


def report(exc: BaseException, prog: str | None = None) -> str:
    """The line ``run`` prints for a user error."""
    prog = prog or os.path.basename(sys.argv[0] or "jaxlm")
    if prog in ("__main__.py", "-c", ""):
        prog = "jaxlm"
    return f"{prog}: error: {one_line(exc)}"


def _verbose() -> bool:
    from absl import flags

    return bool(flags.FLAGS.is_parsed() and "verbose" in flags.FLAGS and flags.FLAGS.verbose)


def define_verbose() -> None:
    """Defines ``--verbose`` (once) for the program that is starting."""
    from absl import flags

    if "verbose" not in flags.FLAGS:
        flags.DEFINE_bool("verbose", False, "Show the traceback of user errors too.")


def _prog() -> str | None:
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec.name.rsplit(".", 1)[-1] if spec is not None and spec.name else None


def guard(main: Callable[[list[str]], Any], prog: str | None = None
          ) -> Callable[[list[str]], Any]:
    """``main`` wrapped so user errors exit 2 with one line; defines ``--verbose``.

    ``app.run(cli.guard(main))`` is ``cli.run(main)``; the first form lets an
    entrypoint change only its last line.
    """
    define_verbose()
    prog = prog or _prog()

    def wrapped(argv):
        try:
            return main(argv)
        except KeyboardInterrupt:
            if _verbose():
                raise
            print(report(UserError("interrupted"), prog), file=sys.stderr)
            sys.exit(EXIT_INTERRUPTED)
        except Exception as e:  # noqa: BLE001 - sorted into user errors and bugs
            if not is_user_error(e) or _verbose():
                raise
            print(report(e, prog), file=sys.stderr, flush=True)
            sys.exit(EXIT_USER_ERROR)

    wrapped.__name__ = getattr(main, "__name__", "main")
    wrapped.__doc__ = getattr(main, "__doc__", None)
    return wrapped


def run(main: Callable[[list[str]], Any]) -> None:
    """``absl.app.run(main)`` with the one error path (see the module docstring)."""
    from absl import app

    app.run(guard(main))


# ---- flag checks (call them first thing in main, before loading anything heavy)

def check_range(name: str, value: float | int | None, *, lo: float | None = None,
                hi: float | None = None, lo_open: bool = False, allow_none: bool = False) -> None:
    """Raises UserError unless ``value`` is finite and within ``[lo, hi]`` (``(lo, hi]``)."""
    if value is None:
        if allow_none:
            return
        raise UserError(f"--{name} is required")
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"--{name}={value} is not a finite number; pass a finite value")
    if lo is not None and (value <= lo if lo_open else value < lo):
        op = ">" if lo_open else ">="
        raise UserError(f"--{name}={value} is out of range; it must be {op} {lo}")
    if hi is not None and value > hi:
        raise UserError(f"--{name}={value} is out of range; it must be <= {hi}")
