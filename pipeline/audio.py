"""Audio decoding: any file soundfile or audioread can read -> float32 samples.

:func:`load` is the one entry point (``librosa.load``-like, without librosa).

Conventions
-----------
- Backends: ``soundfile`` (libsndfile >= 1.1 decodes mp3, wav, flac, ogg)
  first; ``audioread`` as the fallback when soundfile fails. When both fail the
  :class:`~pipeline.errors.PipelineError` names the file and quotes both
  backends' messages.
- Seeking: soundfile seeks to ``offset - PREROLL`` frames, reads
  ``PREROLL + duration`` and drops the preroll: right after a seek mpg123
  decodes the first ~5000 samples wrongly (its bit reservoir is empty), and
  8192 frames of preroll make the window bit-identical to a full decode
  (tests/test_audio.py); only ``PREROLL + duration`` is decoded; audioread cannot seek, so
  it decodes from the start and stops once ``offset + duration`` is read.
- Lengths come from the decoded array, never from header metadata (an mp3
  header can claim 30 s for a file holding 47 samples). :func:`probe` exposes
  the header values only as a hint (e.g. to place a random crop).
- Mono is the arithmetic mean of the channels, whatever the backend.
- Resampling: :func:`scipy.signal.resample_poly` with ``up/down`` reduced by
  their gcd (Kaiser-windowed FIR, scipy's default ``('kaiser', 5.0)``). This
  differs from ``librosa.load``'s default ``soxr_hq`` by a small amount near
  the band edge; it is documented, not hidden.
- File descriptors: every file is opened in a ``with`` block and closed on
  every path, so decoding thousands of files in one process leaks nothing.
- Decoder messages: libmpg123 (inside libsndfile) writes warnings such as
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
- Misleading libsndfile text: for a file that exists but holds no audio
  libsndfile 1.2 says "File does not exist or is not a regular file (possibly
  a pipe?)"; since :func:`load` has checked the file exists, that message is
  replaced by "not a recognised audio format or a damaged file" with
  libsndfile's words quoted after it.
- Hangs: a decoder stuck inside C code cannot be interrupted from Python in
  the same process. :func:`load` therefore takes no timeout; the parallel
  preprocessing in :mod:`pipeline.dataset` runs each track in a worker process
  and kills a worker whose track exceeds ``timeout`` seconds, recording the
  track as skipped (``'timeout after ... s'``) and starting a fresh worker.
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import tempfile
import threading
from typing import NamedTuple

import numpy as np

from .errors import PipelineError

__all__ = ["load", "probe", "resample", "AudioInfo", "PREROLL", "collect_decoder_messages",
           "format_decoder_messages"]

#: Native-rate frames decoded and dropped before a seek target (see _read_soundfile).
PREROLL = 8192


#: A captured stderr line that is a decoder (libmpg123) message, e.g.
#: "[src/libmpg123/layer3.c:INT123_do_layer3():1774] error: ...", "Note: Illegal
#: Audio-MPEG-Header ...", "Warning: Xing stream size off by more than 1%".
_DECODER_LINE = re.compile(r"^(\[[^\]]*(mpg123|mpeg)[^\]]*\]|(Note|Warning|Error|error|warning): )")
#: Decoder lines quoted in an error message (the rest are counted).
_MAX_QUOTED = 4
_LIBSNDFILE_MISLEADING = "File does not exist or is not a regular file"

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
def _decoder_stderr():
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
    made by this thread inside the ``with`` block.

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


def _describe_error(name: str, exc: Exception) -> str:
    """``'<backend>: <Type>: <message>'`` with libsndfile's misleading "does not exist" explained."""
    msg = str(exc).strip()
    if name == "soundfile":
        detail = getattr(exc, "error_string", None) or ""
        if _LIBSNDFILE_MISLEADING in msg or _LIBSNDFILE_MISLEADING in detail:
            # The path was checked to be an existing regular file: libsndfile (1.2) says this when
            # no format it knows (its mpeg reader included) accepts the bytes.
            quoted = (detail or msg).strip()
            return (f"{name}: not a recognised audio format or a damaged file "
                    f"(libsndfile: {quoted!r}, although the file exists)")
    if not msg:
        msg = ("no installed audioread backend (ffmpeg, GStreamer, Core Audio) could open it"
               if name == "audioread" else "no message")
    return f"{name}: {type(exc).__name__}: {msg}"


class AudioInfo(NamedTuple):
    """Header information of an audio file (a hint: never trust the length).

    Attributes
    ----------
    samplerate : int
        Native sample rate in Hz.
    frames : int
        Number of frames the header claims (may be wrong for damaged mp3s).
    channels : int
        Number of channels.
    """

    samplerate: int
    frames: int
    channels: int


def _check_path(path) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        if os.path.islink(path):
            raise PipelineError(f"broken symbolic link: {path!r} points to {os.readlink(path)!r}, which does "
                                f"not exist")
        raise PipelineError(f"audio file not found: {path!r}")
    if os.path.isdir(path):
        raise PipelineError(f"audio path is a directory, not a file: {path!r}")
    if os.path.getsize(path) == 0:
        raise PipelineError(f"audio file is empty (0 bytes): {path!r}")
    return path


def probe(path) -> AudioInfo:
    """Read the header of ``path`` with soundfile (no decoding).

    Parameters
    ----------
    path : str or os.PathLike
        Audio file.

    Returns
    -------
    AudioInfo
        ``(samplerate, frames, channels)`` as the header claims them.

    Raises
    ------
    PipelineError
        If the file is missing, empty or unreadable by soundfile (the message
        names the file, soundfile's error and the first decoder messages).
    """
    import soundfile as sf

    path = _check_path(path)
    with _decoder_stderr() as messages:
        try:
            with sf.SoundFile(path) as f:
                return AudioInfo(int(f.samplerate), int(f.frames), int(f.channels))
        except Exception as exc:  # libsndfile raises LibsndfileError / RuntimeError
            error = exc
    # raised outside the capture window so the decoder's lines are in ``messages``
    note = format_decoder_messages(messages)
    raise PipelineError(f"cannot read the header of {path!r}: {_describe_error('soundfile', error)}"
                        + (f"; {note}" if note else "")) from error


def _read_soundfile(path: str, offset: float, duration: float | None):
    """Decode with soundfile -> (float32 (n, channels), native sr)."""
    import soundfile as sf

    with sf.SoundFile(path) as f:
        native = int(f.samplerate)
        start = int(round(offset * native))
        n = -1 if duration is None else int(round(duration * native))
        pre = 0
        if start > 0:
            if not f.seekable():
                raise RuntimeError("stream is not seekable")
            if start >= f.frames:
                return np.zeros((0, f.channels), np.float32), native
            # mpg123 decodes the first ~5000 samples after a seek wrongly (bit
            # reservoir not primed): seek PREROLL earlier and drop them.
            pre = min(start, PREROLL)
            f.seek(start - pre)
        y = f.read(frames=n if n < 0 else n + pre, dtype="float32", always_2d=True)
    return y[pre:], native


def _read_audioread(path: str, offset: float, duration: float | None):
    """Decode with audioread (no seeking) -> (float32 (n, channels), native sr)."""
    import audioread

    with audioread.audio_open(path) as f:
        native = int(f.samplerate)
        ch = int(f.channels)
        start = int(round(offset * native))
        stop = None if duration is None else start + int(round(duration * native))
        blocks, got = [], 0
        for buf in f:
            block = np.frombuffer(buf, dtype="<i2").reshape(-1, ch)
            blocks.append(block)
            got += len(block)
            if stop is not None and got >= stop:
                break
    if blocks:
        y = np.concatenate(blocks).astype(np.float32) / np.float32(32768.0)
    else:
        y = np.zeros((0, ch), np.float32)
    return y[start:stop], native


def _mean_channels(y: np.ndarray) -> np.ndarray:
    """(n, channels) -> (n,) arithmetic mean, summing whole columns (fast for
    interleaved data: a strided column add, not a reduction over a short axis)."""
    ch = y.shape[1]
    if ch == 1:
        return np.ascontiguousarray(y[:, 0], dtype=np.float32)
    acc = y[:, 0].astype(np.float32, copy=True)
    for c in range(1, ch):
        acc += y[:, c]
    acc *= np.float32(1.0 / ch)
    return acc


def resample(y: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample along the last axis with :func:`scipy.signal.resample_poly`.

    Parameters
    ----------
    y : np.ndarray [shape=(..., n), dtype=float32]
        Signal.
    orig_sr, target_sr : int > 0
        Rates in Hz; ``up = target_sr / g``, ``down = orig_sr / g`` with
        ``g = gcd(orig_sr, target_sr)``.

    Returns
    -------
    np.ndarray [shape=(..., ceil(n * up / down)), dtype=float32]
        ``y`` itself when the rates are equal.

    Raises
    ------
    PipelineError
        If a rate is not a positive integer.
    """
    from scipy.signal import resample_poly

    if int(orig_sr) != orig_sr or int(target_sr) != target_sr or orig_sr <= 0 or target_sr <= 0:
        raise PipelineError(
            f"sample rates must be positive integers, got orig_sr={orig_sr!r}, target_sr={target_sr!r}"
        )
    orig_sr, target_sr = int(orig_sr), int(target_sr)
    if orig_sr == target_sr or y.shape[-1] == 0:
        if orig_sr != target_sr:
            return np.zeros(y.shape[:-1] + (0,), np.float32)
        return y
    g = math.gcd(orig_sr, target_sr)
    out = resample_poly(y, target_sr // g, orig_sr // g, axis=-1)
    return out.astype(np.float32, copy=False)


def load(path, sr: int | None = 22050, mono: bool = True, offset: float = 0.0,
         duration: float | None = None):
    """Decode an audio file to float32 samples in [-1, 1].

    Parameters
    ----------
    path : str or os.PathLike
        Audio file (mp3, wav, flac, ogg, ... anything libsndfile or audioread
        decodes).
    sr : int > 0 or None
        Target sample rate in Hz (default 22050, librosa's); ``None`` keeps the
        file's native rate.
    mono : bool
        Average the channels (arithmetic mean) into one.
    offset : float >= 0
        Start reading this many seconds into the file (native-rate frames,
        ``round(offset * native_sr)``).
    duration : float > 0 or None
        Read at most this many seconds; ``None`` reads to the end.

    Returns
    -------
    y : np.ndarray [shape=(n,) if mono else (channels, n), dtype=float32]
        Samples. ``n`` comes from the decoded data; it can be shorter than
        ``duration`` (or 0) when the file is shorter than ``offset + duration``.
    sr : int
        Sample rate of ``y`` in Hz.

    Raises
    ------
    PipelineError
        Missing file, zero-byte file, bad ``offset``/``duration``/``sr``, or
        no backend can decode it (the message names the file, both
        backends' errors and the first few decoder messages captured from
        stderr).

    Examples
    --------
    >>> y, sr = load('clip.mp3', sr=22050, offset=10.0, duration=10.0)  # doctest: +SKIP
    >>> y.shape, y.dtype  # doctest: +SKIP
    ((220500,), dtype('float32'))
    """
    if not (isinstance(offset, (int, float)) and math.isfinite(offset) and offset >= 0):
        raise PipelineError(f"offset must be a finite number of seconds >= 0, got {offset!r}")
    if duration is not None and not (
        isinstance(duration, (int, float)) and math.isfinite(duration) and duration > 0
    ):
        raise PipelineError(f"duration must be None or seconds > 0, got {duration!r}")
    if sr is not None and (int(sr) != sr or sr <= 0):
        raise PipelineError(f"sr must be None or a positive integer (Hz), got {sr!r}")
    path = _check_path(path)
    errors = []
    y = native = None
    messages = []
    for name, reader in (("soundfile", _read_soundfile), ("audioread", _read_audioread)):
        with _decoder_stderr() as caught:
            try:
                y, native = reader(path, float(offset), duration)
            except Exception as exc:  # any backend failure -> try the next one
                errors.append(_describe_error(name, exc))
        messages += caught
        if y is not None:
            break
    if y is None:
        note = format_decoder_messages(messages)
        raise PipelineError(f"cannot decode {path!r}: " + "; ".join(errors) + (f"; {note}" if note else ""))
    if mono:
        y = _mean_channels(y)
    else:
        y = np.ascontiguousarray(y.T, dtype=np.float32)  # (channels, n)
    if sr is not None and int(sr) != native:
        y = resample(y, native, int(sr))
        native = int(sr)
    return y, int(native)
