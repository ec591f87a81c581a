"""Worker processes that never outlive their parent.

A preprocessing worker blocks in ``conn.recv()`` on its pipe. After a
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

import os
import signal
import sys
import threading

__all__ = ["die_with_parent", "PR_SET_PDEATHSIG"]

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
