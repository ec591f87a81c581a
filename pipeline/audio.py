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
- Buffers: soundfile decodes into a per-thread buffer kept between calls (up
  to ``DECODE_BUFFER_MAX_BYTES``), and :func:`load` returns a new array (the
  resampler's or the mean's output, or a copy): a fresh 10 MB decode array per
  30 s clip would be page-faulted in anew on every call.
- File descriptors: every file is opened in a ``with`` block and closed on
  every path, so decoding thousands of files in one process leaks nothing.
- Resampling: :mod:`pipeline.resample` (a polyphase Kaiser-windowed-sinc FIR;
  integer decimation with the channel mean fused in, straight on the decoded
  frames).
- Decoder messages (libmpg123's warnings on fd 2): captured around every
  backend call by :mod:`pipeline.decoder_messages`, dropped when the decode
  succeeds and quoted (first few) in the :class:`~pipeline.errors.PipelineError`
  when it fails; ``HITCNN_DECODER_MESSAGES=1`` turns the capture off.
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

import math
import os
import threading
from typing import NamedTuple

import numpy as np

from .decoder_messages import capture_decoder_stderr, format_decoder_messages
from .errors import PipelineError
from .resample import decimate_mean, reduced_ratio, resample

__all__ = ["load", "probe", "AudioInfo", "PREROLL"]

#: Native-rate frames decoded and dropped before a seek target (see _read_soundfile).
PREROLL = 8192
_LIBSNDFILE_MISLEADING = "File does not exist or is not a regular file"


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
    with capture_decoder_stderr() as messages:
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
        with capture_decoder_stderr() as caught:
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
        up, down = reduced_ratio(native, int(sr))
        if mono and up == 1 and len(y):  # integer decimation: channel mean fused into the kernel
            return decimate_mean(y, down), int(sr)
    if mono:
        y = _mean_channels(y)
    else:
        y = np.ascontiguousarray(y.T, dtype=np.float32)  # (channels, n)
    if sr is not None and int(sr) != native:
        y = resample(y, native, int(sr))
        native = int(sr)
    return _owns(y), int(native)
