"""Local worker processes for the multi-process modes (lock-step peers, pipeline stages, hive).

Each worker is ``python -c "from <module> import <entry>; <entry>()" '<json spec>'``; it prints
one ``<TAG> <json result>`` line on stdout. ``run_workers`` starts them on this machine, waits
with one deadline for all, and kills every child if any fails or the time runs out. Workers run in
their own process groups and call ``jaxlm.utils.lifeline.bind_to_parent`` so they die with the
launcher; SIGTERM/SIGINT/SIGHUP to the launcher kill them first.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

_TUPLE_FIELDS = ("overrides", "cuts", "ports", "stage_cuts", "hosts")


def spec_from_argv(cls: type, argv: Sequence[str] | None = None) -> Any:
    """Rebuilds a frozen spec dataclass from the JSON in ``argv[1]`` (lists back to tuples)."""
    d = json.loads((sys.argv if argv is None else argv)[1])
    names = {f.name for f in dataclasses.fields(cls)}
    for k in _TUPLE_FIELDS:
        if k in names:
            d[k] = tuple(d.get(k, ()))
    return cls(**d)


def emit_result(tag: str, result: dict[str, Any]) -> None:
    print(f"{tag} " + json.dumps(result), flush=True)


def run_workers(
    entry: str,
    specs: Sequence[Any],
    *,
    tag: str,
    what: str,
    timeout: float,
    python: str | None = None,
    prefixes: Sequence[Sequence[str]] | None = None,
) -> list[dict[str, Any]]:
    """Runs one worker per spec and returns their parsed results, in order.

    Args:
        entry: "module:function" of the worker entry point.
        specs: one dataclass spec per worker (passed as JSON in argv[1]).
        tag: the result-line prefix the workers print.
        what: a word for error messages ("peer", "stage").
        timeout: seconds for all workers together.
        python: interpreter (default: this one).
        prefixes: per worker, a command prefix (e.g. ``["ip", "netns", "exec", ns]``).

    Raises:
        RuntimeError: a worker exited non-zero or printed no result line (its stderr tail
            is in the message). Every child is killed before the error propagates.
    """
    from jaxlm.utils.lifeline import Children

    module, func = entry.split(":")
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # each worker sets up its own devices
    procs: list[subprocess.Popen] = []
    kids = Children()  # own groups; killed on exit and on SIGTERM/SIGINT/SIGHUP
    try:
        kids.__enter__()
        for w, spec in enumerate(specs):
            cmd = [*(prefixes[w] if prefixes else []), python or sys.executable, "-c", f"from {module} import {func}; {func}()",
                   json.dumps(dataclasses.asdict(spec))]
            procs.append(kids.spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, env=env))
        deadline = time.monotonic() + timeout
        results = []
        for pr in procs:
            out, err = pr.communicate(timeout=max(deadline - time.monotonic(), 1.0))
            if pr.returncode != 0:
                raise RuntimeError(f"{what} exited with {pr.returncode}: {err[-2000:]}")
            lines = [ln for ln in out.splitlines() if ln.startswith(tag + " ")]
            if not lines:
                raise RuntimeError(f"{what} printed no {tag} line: {err[-2000:]}")
            results.append(json.loads(lines[-1][len(tag) + 1:]))
        return results
    finally:
        kids.__exit__(None, None, None)
