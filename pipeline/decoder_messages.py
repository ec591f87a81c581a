"""Decoder messages: what libmpg123 writes to fd 2 during a decode, captured and kept with the track.

libmpg123 (inside libsndfile) writes warnings such as
``Warning: Xing stream size off by more than 1%`` or ``[src/libmpg123/
layer3.c:...] error: part2_3_length ... too large`` straight to file
descriptor 2, mostly after seeks whose preroll already makes the samples
right. Every backend call is therefore run with fd 2 redirected (``os.dup2``)
to a per-process temporary file, the window kept to the one call and fd 2
restored in ``finally`` (one lock: the redirect is process-wide). Captured
lines that look like decoder messages are dropped when the decode succeeds
and quoted (first few) in the :class:`~pipeline.errors.PipelineError` when
it fails; any other captured line (e.g. a Python warning from another
thread) is written back to stderr. ``HITCNN_DECODER_MESSAGES=1`` turns the
capture off (messages go to the terminal, for debugging a decoder);
:func:`collect_decoder_messages` lets a caller (preprocessing) gather them.

:func:`capture_decoder_stderr` wraps each backend call of :mod:`pipeline.audio`;
:func:`collect_decoder_messages` gathers a thread's messages over several calls
(preprocessing attaches them to a failed track's reason, formatted by
:func:`format_decoder_messages`).
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading

__all__ = ["capture_decoder_stderr", "collect_decoder_messages", "format_decoder_messages"]

#: A captured stderr line that is a decoder (libmpg123) message, e.g.
#: "[src/libmpg123/layer3.c:INT123_do_layer3():1774] error: ...", "Note: Illegal
#: Audio-MPEG-Header ...", "Warning: Xing stream size off by more than 1%".
_DECODER_LINE = re.compile(r"^(\[[^\]]*(mpg123|mpeg)[^\]]*\]|(Note|Warning|Error|error|warning): )")
#: Decoder lines quoted in an error message (the rest are counted).
_MAX_QUOTED = 4

_capture_lock = threading.RLock()
_capture = {"pid": None, "file": None}
_collectors = threading.local()


def _reset_after_fork():  # a fork while another thread held the lock must not deadlock the child
    global _capture_lock
    _capture_lock = threading.RLock()
    _capture["pid"] = _capture["file"] = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _capture_file():
    """This process's temporary file that receives fd 2 during a decode (reused)."""
    if _capture["pid"] != os.getpid() or _capture["file"] is None:
        _capture["file"] = tempfile.TemporaryFile(prefix="hitcnn-decoder-stderr-")
        _capture["pid"] = os.getpid()
    return _capture["file"]


@contextlib.contextmanager
def capture_decoder_stderr():
    """Redirect fd 2 to a temporary file for the ``with`` body.

    Yields a list that, after the body, holds the decoder lines caught (they
    also go to every :func:`collect_decoder_messages` of this thread); any
    other caught line is written back to fd 2. Process-wide while it lasts (fd
    2 is shared by all threads), hence the lock and the window of one backend
    call. No capture when ``HITCNN_DECODER_MESSAGES=1`` or fd 2 cannot be
    duplicated (the list stays empty).
    """
    caught: list = []
    if os.environ.get("HITCNN_DECODER_MESSAGES", "") == "1":
        yield caught
        return
    with _capture_lock:
        try:
            for stream in (sys.stdout, sys.stderr):
                if stream is not None:
                    stream.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):
            saved = None
        if saved is None:
            yield caught
            return
        f = _capture_file()
        try:
            f.seek(0)
            f.truncate()
            os.dup2(f.fileno(), 2)
            yield caught
        finally:
            try:
                if sys.stderr is not None:
                    sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            f.seek(0)
            other = []
            for line in f.read().decode("utf-8", errors="replace").splitlines():
                if line.strip():
                    (caught if _DECODER_LINE.match(line) else other).append(line.rstrip())
            if other:
                os.write(2, ("\n".join(other) + "\n").encode("utf-8", errors="replace"))
            for c in getattr(_collectors, "stack", ()):
                c.extend(caught)


@contextlib.contextmanager
def collect_decoder_messages():
    """Gather the decoder messages of every :func:`load` / :func:`probe` call
    made by this thread inside the ``with`` block (``pipeline.audio``'s decodes).

    Yields
    ------
    list of str
        Filled with the captured decoder lines (e.g. libmpg123's "Note:
        Illegal Audio-MPEG-Header ...") in order; empty when there were none or
        capture is off (``HITCNN_DECODER_MESSAGES=1``).

    Examples
    --------
    >>> with collect_decoder_messages() as msgs:  # doctest: +SKIP
    ...     y, sr = load('clip.mp3', offset=5.0, duration=10.0)
    >>> msgs  # doctest: +SKIP
    ['Warning: Xing stream size off by more than 1%, fuzzy seeking may be even more fuzzy than by design!']
    """
    stack = getattr(_collectors, "stack", None)
    if stack is None:
        stack = _collectors.stack = []
    got: list = []
    stack.append(got)
    try:
        yield got
    finally:
        stack.remove(got)


def format_decoder_messages(lines) -> str:
    """``'decoder messages: a | b (x3) | ... (+N more)'`` for ``lines``; '' if none.

    Repeated lines are counted once (``(xK)``), in first-seen order; the first
    ``_MAX_QUOTED`` distinct lines are quoted and the rest counted.
    """
    counts: dict = {}
    for ln in lines:
        ln = str(ln).strip()
        if ln:
            counts[ln] = counts.get(ln, 0) + 1
    if not counts:
        return ""
    items = [f"{ln} (x{k})" if k > 1 else ln for ln, k in counts.items()]
    more = f" (+{len(items) - _MAX_QUOTED} more)" if len(items) > _MAX_QUOTED else ""
    return "decoder messages: " + " | ".join(items[:_MAX_QUOTED]) + more
