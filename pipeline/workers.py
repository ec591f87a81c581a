"""Worker processes: a supervised pool, and workers that never outlive their parent.

:class:`Supervisor` runs ``n`` worker processes, each fed one task at a time
through its own pipe; a worker that takes longer than ``timeout`` seconds on
a task is killed and replaced, and a worker that dies costs only its current
task (the caller's ``on_failure`` turns either into that task's result).
:mod:`pipeline.cache` runs the preprocessing of a dataset through it.

A worker blocks in ``conn.recv()`` on its pipe. After a
``fork`` it also holds copies of the parent's ends of the pipes, so when the
parent is killed (``kill -9``) the pipe never reports EOF and the worker
would wait under PID 1 forever, keeping the parent's stdout open (anything
reading that output hangs). :func:`die_with_parent`, called first thing in
a worker, makes the worker end when its parent does:

* on Linux, ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` (the kernel kills the
  worker when the parent thread that forked it exits), followed by a check
  that the parent is still the one expected (it may have died between the
  fork and the prctl);
* everywhere, a daemon watchdog thread that polls ``os.getppid()`` every
  ``poll`` seconds and ends the process with ``os._exit`` once it changes
  (the parent died and the worker was re-parented).
"""
from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator

__all__ = ["die_with_parent", "PR_SET_PDEATHSIG", "Supervisor", "WorkerFailure"]

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _expected_parent() -> int:
    import multiprocessing

    parent = multiprocessing.parent_process()
    return parent.pid if parent is not None and parent.pid else os.getppid()


def _prctl_pdeathsig(sig: int) -> bool:
    """``prctl(PR_SET_PDEATHSIG, sig)`` through libc; False where unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent(parent_pid: int | None = None, poll: float = 1.0) -> None:
    """End this process when ``parent_pid`` (default: the multiprocessing parent) exits.

    Parameters
    ----------
    parent_pid : int or None
        The process whose death ends this one.
    poll : float
        Seconds between the watchdog's checks of ``os.getppid()``.
    """
    parent = _expected_parent() if parent_pid is None else int(parent_pid)
    _prctl_pdeathsig(signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the prctl took effect
        os._exit(1)

    def watch():
        import time

        while True:
            time.sleep(poll)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="hitcnn-parent-watchdog").start()


@dataclasses.dataclass(frozen=True)
class WorkerFailure:
    """Why a task got no result: its worker died (``exitcode``) or ran past ``timeout`` seconds."""

    kind: str  # 'died' | 'timeout'
    exitcode: int | None = None
    timeout: float | None = None


class Supervisor:
    """Worker processes, one task each at a time, killed and replaced on timeout.

    Parameters
    ----------
    n : int >= 1
        Worker processes (started at once; fork where available, else spawn).
    target : callable
        ``target(conn, *args)``, the worker's main function: it receives tasks
        with ``conn.recv()`` until EOF or ``None`` and answers each with one
        ``conn.send(result)``. It should call :func:`die_with_parent` first.
    args : tuple
        The rest of ``target``'s arguments (picklable under spawn).
    timeout : float
        Seconds a worker may spend on one task.
    on_failure : callable or None
        ``on_failure(task, WorkerFailure) -> result``: what :meth:`run` yields
        for a task whose worker died or timed out (None: the
        :class:`WorkerFailure` itself).
    """

    def __init__(self, n: int, target: Callable, args: tuple = (), timeout: float = 120.0,
                 on_failure: Callable | None = None):
        import multiprocessing as mp

        methods = mp.get_all_start_methods()
        self.ctx = mp.get_context("fork" if "fork" in methods else "spawn")
        self.target, self.args = target, tuple(args)
        self.timeout = timeout
        self.on_failure = on_failure or (lambda task, failure: failure)
        self.workers = [self._start() for _ in range(n)]

    @property
    def pids(self) -> list:
        """Process ids of the current workers."""
        return [w["proc"].pid for w in self.workers]

    def _start(self):
        parent, child = self.ctx.Pipe(duplex=True)
        p = self.ctx.Process(target=self.target, args=(child, *self.args), daemon=True)
        p.start()
        child.close()
        return {"proc": p, "conn": parent, "task": None, "t0": 0.0}

    def _replace(self, w):
        try:
            w["proc"].kill()
        except Exception:
            pass
        w["proc"].join(5)
        w["conn"].close()
        self.workers[self.workers.index(w)] = self._start()

    def run(self, tasks: Iterable) -> Iterator:
        """Yield one result per task, in the order they finish; the workers are closed at the end."""
        from multiprocessing.connection import wait

        todo = list(reversed(list(tasks)))
        busy = 0
        try:
            while todo or busy:
                for w in self.workers:
                    if w["task"] is None and todo:
                        task = todo.pop()
                        try:
                            w["conn"].send(task)
                        except (BrokenPipeError, OSError):  # worker gone: replace it, retry later
                            todo.append(task)
                            self._replace(w)
                            continue
                        w["task"], w["t0"] = task, time.monotonic()
                        busy += 1
                ready = wait([w["conn"] for w in self.workers if w["task"] is not None], timeout=0.25)
                for w in list(self.workers):
                    task = w["task"]
                    if task is None:
                        continue
                    if w["conn"] in ready:
                        try:
                            result = w["conn"].recv()
                        except (EOFError, OSError):
                            code = w["proc"].exitcode
                            w["task"] = None
                            busy -= 1
                            self._replace(w)
                            yield self.on_failure(task, WorkerFailure("died", exitcode=code))
                            continue
                        w["task"] = None
                        busy -= 1
                        yield result
                    elif time.monotonic() - w["t0"] > self.timeout:
                        w["task"] = None
                        busy -= 1
                        self._replace(w)
                        yield self.on_failure(task, WorkerFailure("timeout", timeout=self.timeout))
        finally:
            self.close()

    def close(self) -> None:
        """Ask every worker to stop (``None``), then kill the ones still running after 2 s."""
        for w in self.workers:
            try:
                w["conn"].send(None)
            except Exception:
                pass
        for w in self.workers:
            w["proc"].join(2)
            if w["proc"].is_alive():
                w["proc"].kill()
                w["proc"].join()
            w["conn"].close()
        self.workers = []
