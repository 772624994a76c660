"""Worker processes that die with their launcher, and launchers that take their workers along.

Launcher side (``Children``): each worker starts in its own session, hence its own
process group, so one ``killpg`` also reaches what the worker forked (hivemind's DHT
process and its ``p2pd`` daemon). While the ``Children`` context is open, SIGTERM,
SIGINT and SIGHUP kill every group first and then unwind the launcher (``SystemExit``
with status 128 + signal, or the previous handler's ``KeyboardInterrupt``), so its
``finally`` blocks (network-namespace clean-up) still run. On leaving the context,
finished or not, every group is killed.

Worker side (``bind_to_parent``, first thing in a worker's entry point): Linux
``prctl(PR_SET_PDEATHSIG, SIGTERM)`` asks the kernel to signal the worker when its
parent dies (even by SIGKILL); the worker's SIGTERM handler then SIGKILLs its own
process group (itself and its children). A watchdog thread that polls the parent
pid does the same where ``prctl`` is missing or the signal is lost.

Usage::

    with Children() as kids:
        p = kids.spawn([sys.executable, "-c", "..."], stdout=subprocess.PIPE)
        ...
    # worker: from jaxlm.utils.lifeline import bind_to_parent; bind_to_parent()
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

PARENT_ENV = "JAXLM_PARENT_PID"
SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, n))
_PR_SET_PDEATHSIG = 1


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signals the process group led by ``pid`` (a worker started by ``Children.spawn``)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class Children:
    """Starts workers in their own process groups and kills them all on exit or signal.

    Args:
        signals: the signals that kill the workers and unwind the launcher (handlers are
            installed only from the main thread; elsewhere the exit clean-up still runs).
    """

    def __init__(self, signals: Sequence[int] = SIGNALS):
        self.signals = tuple(signals)
        self.procs: list[subprocess.Popen] = []
        self._prev: dict[int, Any] = {}

    def spawn(self, cmd: Sequence[str], *, env: dict[str, str] | None = None,
              **popen_kw) -> subprocess.Popen:
        """``subprocess.Popen(cmd)`` in a new session, with this pid in ``JAXLM_PARENT_PID``."""
        env = dict(os.environ if env is None else env)
        env[PARENT_ENV] = str(os.getpid())
        proc = subprocess.Popen(list(cmd), env=env, start_new_session=True, **popen_kw)
        self.procs.append(proc)
        return proc

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def kill_all(self, sig: int = signal.SIGKILL) -> None:
        """Signals every worker's group (its forks included); reaps the ones that exit."""
        for p in self.procs:
            kill_group(p.pid, sig)
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)

    def _on_signal(self, sig, frame) -> None:
        self.kill_all()
        prev = self._prev.get(sig)
        self._restore()
        if callable(prev):
            prev(sig, frame)  # e.g. SIGINT's default_int_handler -> KeyboardInterrupt
        if prev == signal.SIG_IGN:
            return
        raise SystemExit(128 + int(sig))

    def _restore(self) -> None:
        for sig, prev in self._prev.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, prev)
        self._prev.clear()

    def __enter__(self) -> Children:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._prev[sig] = signal.getsignal(sig)
                signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.kill_all()
        finally:
            self._restore()


# ------------------------------------------------------------------ worker side
_bound = False


def _die_with_group(*_):
    """SIGKILLs this process's group when it leads one, else just this process."""
    with contextlib.suppress(OSError):
        if os.getpgid(0) == os.getpid():
            os.killpg(0, signal.SIGKILL)
    os._exit(128 + signal.SIGTERM)


def _set_pdeathsig(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _parent_gone(ppid: int, launcher: int) -> bool:
    if os.getppid() != ppid:
        return True
    try:
        os.kill(launcher, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False


def bind_to_parent(poll_s: float = 0.5) -> bool:
    """Makes this worker (and its process group) die when its launcher dies.

    A no-op unless ``JAXLM_PARENT_PID`` is set (by ``Children.spawn``), so a worker
    started by hand is unaffected. Returns whether it bound.
    """
    global _bound
    launcher = os.environ.get(PARENT_ENV)
    if _bound or not launcher:
        return False
    launcher_pid = int(launcher)
    ppid = os.getppid()
    me = os.getpid()

    def on_term(sig, frame):
        if os.getpid() != me:  # a forked child (hivemind's DHT) inherited this handler
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
            return
        _die_with_group()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_term)
    _set_pdeathsig(signal.SIGTERM)
    if _parent_gone(ppid, launcher_pid):  # the launcher died before prctl took effect
        _die_with_group()

    def watch():
        while True:
            time.sleep(poll_s)
            if os.getpid() == me and _parent_gone(ppid, launcher_pid):
                _die_with_group()

    threading.Thread(target=watch, name="jaxlm-lifeline", daemon=True).start()
    _bound = True
    return True
