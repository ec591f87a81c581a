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
- Resampling: a polyphase Kaiser-windowed-sinc FIR (:func:`resample_filter`:
  ``RESAMPLE_HALF_TAPS = 16`` taps per side at the slower rate, Kaiser
  ``beta = 8``, cutoff at the lower Nyquist), ``up/down`` reduced by their
  gcd. Integer decimation (``up == 1``, e.g. 44.1 -> 22.05 kHz) runs a Numba
  kernel on the polyphase components of the input, with the channel mean
  fused into the split, the filter's exact zeros skipped and its symmetric
  taps paired (17 multiplies per output for 2:1); other ratios go through
  :func:`scipy.signal.resample_poly` with the same filter. Both equal ``resample_poly(y, up, down,
  window=resample_filter(up, down))`` to float32 rounding. Distance from
  ``librosa.load``'s default ``soxr_hq`` (44.1 -> 22.05 kHz, 5 s test
  signals, tests/test_audio.py): SNR >= 85 dB (measured 92 dB) on white noise
  band-limited to 8 kHz, >= 85 dB (measured 92 dB) on a sum of sines up to
  9 kHz, >= 40 dB (measured 47 dB) on noise up to 10 kHz; on full-band white
  noise only ~17 dB, all of it in 10-11 kHz, where soxr_hq's passband (to
  ~0.91 of Nyquist) and this filter's transition band (centred on Nyquist)
  differ. (scipy's default ``('kaiser', 5.0)``, 41 taps, used before: 63 /
  58 / 39 dB.)
- Buffers: soundfile decodes into a per-thread buffer kept between calls (up
  to ``DECODE_BUFFER_MAX_BYTES``), and :func:`load` returns a new array (the
  resampler's or the mean's output, or a copy): a fresh 10 MB decode array per
  30 s clip would be page-faulted in anew on every call.
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
  preprocessing in :mod:`pipeline.cache` runs each track in a worker process
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
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from .errors import PipelineError

__all__ = ["load", "probe", "resample", "resample_filter", "AudioInfo", "PREROLL", "collect_decoder_messages",
           "format_decoder_messages"]

#: Native-rate frames decoded and dropped before a seek target (see _read_soundfile).
PREROLL = 8192
#: Resampling filter: taps on each side of the centre, per sample of the slower rate.
RESAMPLE_HALF_TAPS = 16
#: Resampling filter: Kaiser window shape parameter (stopband ~ -80 dB).
RESAMPLE_BETA = 8.0


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
        want = n if n < 0 else n + pre
        out = None
        if f.seekable():  # decode into this thread's kept buffer (see _decode_buffer)
            left = max(int(f.frames) - int(f.tell()), 0)
            out = _decode_buffer(left if want < 0 else min(want, left), int(f.channels))
        if out is None:
            y = f.read(frames=want, dtype="float32", always_2d=True)
        else:
            y = f.read(frames=want, dtype="float32", always_2d=True, out=out)
    return y[pre:], native


#: Largest decode buffer kept between calls, per thread (bytes; 64 MiB = 190 s of 44.1 kHz stereo).
DECODE_BUFFER_MAX_BYTES = 64 << 20

_decode_local = threading.local()


def _decode_buffer(n: int, channels: int):
    """This thread's kept float32 ``(n, channels)`` decode buffer, or None above
    ``DECODE_BUFFER_MAX_BYTES`` (the caller then lets soundfile allocate).

    Why: a fresh 10 MB array per 30 s clip is handed back to the kernel by glibc
    when freed and page-faulted in again by the next decode. :func:`load`
    never returns a view of it (it copies when no resampling or mean did).
    """
    nbytes = n * channels * 4
    if nbytes > DECODE_BUFFER_MAX_BYTES:
        return None
    buf = getattr(_decode_local, "buf", None)
    if buf is None or buf.nbytes < nbytes:
        buf = _decode_local.buf = np.empty(max(nbytes, 1 << 20) // 4, np.float32)
    return buf[:n * channels].reshape(n, channels)


def _owns(y: np.ndarray) -> np.ndarray:
    """``y``, copied if it is a view of this thread's decode buffer."""
    buf = getattr(_decode_local, "buf", None)
    if buf is not None and np.may_share_memory(y, buf):
        return y.copy()
    return y


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


@lru_cache(maxsize=32)
def _filter(up: int, down: int) -> np.ndarray:
    from scipy.signal import firwin

    m = max(up, down)
    half_len = RESAMPLE_HALF_TAPS * m
    h = firwin(2 * half_len + 1, 1.0 / m, window=("kaiser", RESAMPLE_BETA))
    k = np.arange(-half_len, half_len + 1)
    h[(k % m == 0) & (k != 0)] = 0.0  # the sinc's zeros, exact (skipped by the kernel)
    h.setflags(write=False)
    return h


def resample_filter(up: int, down: int) -> np.ndarray:
    """The resampler's lowpass FIR for a ratio ``up / down`` (already reduced).

    Parameters
    ----------
    up, down : int > 0
        Interpolation and decimation factors.

    Returns
    -------
    np.ndarray [shape=(2 * RESAMPLE_HALF_TAPS * max(up, down) + 1,), dtype=float64]
        ``scipy.signal.firwin(len, 1 / max(up, down), window=('kaiser',
        RESAMPLE_BETA))`` (unit DC gain, at the rate ``up * orig_sr``) with
        the taps at nonzero multiples of ``max(up, down)`` from the centre set
        to exactly 0 (the sinc's zeros). Read-only (cached). Pass it as
        ``window=`` to :func:`scipy.signal.resample_poly` for the reference.
    """
    if int(up) != up or int(down) != down or up <= 0 or down <= 0:
        raise PipelineError(f"up and down must be positive integers, got up={up!r}, down={down!r}")
    return _filter(int(up), int(down))


_kernels: dict = {}


def _decimate_kernels():
    """Numba kernels of the integer-decimation path (compiled on first use, cached on disk)."""
    if not _kernels:
        from numba import njit

        @njit(cache=True, nogil=True)
        def fir_phases(xp, taps, phase, offset, n_out):
            # y[m] = sum_j taps[j] * (xp[phase[j, 0], offset[j, 0] + m] + xp[phase[j, 1], offset[j, 1] + m]):
            # the symmetric filter's taps in pairs (half the multiplies), in blocks that stay in L1;
            # the inner loop runs over m (contiguous), so it vectorises without reordering sums.
            block = 1024
            y = np.empty(n_out, np.float32)
            acc = np.empty(block, np.float32)
            for b0 in range(0, n_out, block):
                nb = min(block, n_out - b0)
                a = acc[:nb]
                a[:] = 0.0
                for j in range(taps.shape[0]):
                    hj = taps[j]
                    s1 = xp[phase[j, 0], offset[j, 0] + b0:offset[j, 0] + b0 + nb]
                    s2 = xp[phase[j, 1], offset[j, 1] + b0:offset[j, 1] + b0 + nb]
                    for m in range(nb):
                        a[m] += hj * (s1[m] + s2[m])
                y[b0:b0 + nb] = a
            return y

        _kernels["fir"] = fir_phases
    return _kernels["fir"]


@lru_cache(maxsize=16)
def _decimation_plan(down: int):
    """Nonzero taps of ``resample_filter(1, down)`` in symmetric pairs, each with the
    polyphase component and offset of its two samples.

    ``y[m] = sum_j h[j] x[m * down + half_len - j]`` with ``h[j] = h[2 half_len - j]``:
    pair ``(j, 2 half_len - j)`` for ``j < half_len``, and the centre as the pair
    ``(half_len, half_len)`` with tap ``h[half_len] / 2`` (exact: ``x + x`` and a halving
    are exact in binary floating point). Sample ``q * down + r`` lives at ``xp[r, pad + q]``.
    """
    h = resample_filter(1, down)
    half_len = (len(h) - 1) // 2
    pad = -(-len(h) // down) + 1
    j1 = np.nonzero(h[:half_len + 1])[0]
    j2 = 2 * half_len - j1
    taps = h[j1].copy()
    taps[j1 == half_len] *= 0.5

    def place(j):
        r = (half_len - j) % down
        return r, (half_len - j - r) // down + pad

    (r1, o1), (r2, o2) = place(j1), place(j2)
    return (taps.astype(np.float32), np.stack([r1, r2], 1).astype(np.int64),
            np.stack([o1, o2], 1).astype(np.int64), pad)


def _split_phases(frames: np.ndarray, down: int, pad: int) -> np.ndarray:
    """(n, ch) -> (down, ceil(n / down) + 2 pad): zero-padded polyphase components of the
    channel mean, ``xp[r, pad + q] = mean_c frames[q * down + r, c]``, summed in channel
    order and scaled like :func:`_mean_channels` (bit-identical to it)."""
    n, ch = frames.shape
    nq = -(-n // down)
    xp = np.empty((down, nq + 2 * pad), np.float32)
    for r in range(down):
        nr = len(range(r, n, down))
        row = xp[r]
        row[:pad] = 0.0
        row[pad + nr:] = 0.0
        body = row[pad:pad + nr]
        if ch == 1:
            body[:] = frames[r::down, 0]
            continue
        np.add(frames[r::down, 0], frames[r::down, 1], out=body)
        for c in range(2, ch):
            body += frames[r::down, c]
        body *= np.float32(1.0 / ch)
    return xp


def _decimate(frames: np.ndarray, down: int) -> np.ndarray:
    """(n, ch) float32 -> (ceil(n / down),) channel mean lowpassed and decimated by ``down``."""
    fir = _decimate_kernels()
    taps, phase, offset, pad = _decimation_plan(down)
    n = frames.shape[0]
    xp = _split_phases(np.asarray(frames, dtype=np.float32), down, pad)
    return fir(xp, taps, phase, offset, -(-n // down))


def _check_rates(orig_sr, target_sr):
    if int(orig_sr) != orig_sr or int(target_sr) != target_sr or orig_sr <= 0 or target_sr <= 0:
        raise PipelineError(
            f"sample rates must be positive integers, got orig_sr={orig_sr!r}, target_sr={target_sr!r}"
        )
    g = math.gcd(int(orig_sr), int(target_sr))
    return int(target_sr) // g, int(orig_sr) // g


def resample(y: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample along the last axis with the polyphase FIR of :func:`resample_filter`.

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
        ``y`` itself when the rates are equal. Equal (to float32 rounding,
        ~1e-6) to ``scipy.signal.resample_poly(y, up, down,
        window=resample_filter(up, down))``; sample ``m`` sits at input time
        ``m * down / up`` (zero-phase, zeros beyond the ends). Integer
        decimation (``up == 1``) runs the Numba kernel, other ratios scipy.
        How far this is from soxr_hq: see the module docstring.

    Raises
    ------
    PipelineError
        If a rate is not a positive integer.
    """
    up, down = _check_rates(orig_sr, target_sr)
    if up == down:
        return y
    if y.shape[-1] == 0:
        return np.zeros(y.shape[:-1] + (0,), np.float32)
    if up == 1:
        flat = np.ascontiguousarray(y, dtype=np.float32).reshape(-1, y.shape[-1])
        out = np.stack([_decimate(row[:, None], down) for row in flat])
        return out.reshape(y.shape[:-1] + (out.shape[-1],))
    from scipy.signal import resample_poly

    out = resample_poly(np.asarray(y, dtype=np.float32), up, down, axis=-1,
                        window=resample_filter(up, down).astype(np.float32))
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
    if sr is not None and int(sr) != native:
        up, down = _check_rates(native, int(sr))
        if mono and up == 1 and len(y):  # integer decimation: channel mean fused into the kernel
            return _decimate(y, down), int(sr)
    if mono:
        y = _mean_channels(y)
    else:
        y = np.ascontiguousarray(y.T, dtype=np.float32)  # (channels, n)
    if sr is not None and int(sr) != native:
        y = resample(y, native, int(sr))
        native = int(sr)
    return _owns(y), int(native)
