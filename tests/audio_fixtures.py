"""Audio fixtures written on the fly (no data committed): sines, silence, stereo,
44.1 kHz, mp3 (soundfile writes MPEG layer III), and the broken files real
collections contain (zero bytes, truncated mp3, tags-only mp3, text named .mp3)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


def sine(seconds, sr, freq=440.0, amp=0.5, phase=0.0):
    """float32 sine of ``seconds`` at ``sr`` Hz."""
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


def write_wav(path, y, sr, subtype="FLOAT"):
    """Write ``y`` ((n,) or (n, channels)) as WAV (float32 by default: exact round trip)."""
    sf.write(path, y, sr, subtype=subtype)
    return Path(path)


def write_mp3(path, y, sr):
    """Write ``y`` as mp3 with libsndfile's LAME encoder."""
    sf.write(path, y, sr, format="MP3")
    return Path(path)


def zero_byte(path):
    Path(path).write_bytes(b"")
    return Path(path)


def text_as_mp3(path):
    Path(path).write_text("this is not audio, just text with an .mp3 name\n" * 20)
    return Path(path)


def tags_only_mp3(path):
    """An ID3v2.4 tag (20 bytes of padding) and no MPEG frames."""
    Path(path).write_bytes(b"ID3" + bytes([4, 0, 0, 0, 0, 0, 20]) + b"\0" * 20)
    return Path(path)


def truncated_mp3(path, seconds=3.0, sr=22050, keep=0.4):
    """An mp3 whose header claims ``seconds`` but whose frames stop at ``keep`` of the bytes."""
    write_mp3(path, sine(seconds, sr), sr)
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep)])
    return Path(path)
