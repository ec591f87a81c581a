"""The embedded demo dataset: synthetic music in the exact FMA layout.

``python cli.py train`` with no data arguments trains on this, so that a new
user gets a trained model and a real test accuracy on a fresh machine with no
download. **The data is synthetic**: the clips are synthesised here (notes
with envelopes, chords, drums) and their popularity class is *defined* by
their audio content, so a CNN can learn it. It says nothing about real music
popularity; use the FMA data (github.com/mdeff/fma) for that.

How the class follows from the audio (with overlap-free but wide within-class
variation, so the task is learnable yet not a lookup):

========  ===========  =====================  ==========================  ==================
class     tempo (BPM)  timbre (harmonics)     note density                drums
========  ===========  =====================  ==========================  ==================
low       60 - 84      1 - 3, steep roll-off  1 note per beat, sustained  none or soft kick
medium    92 - 116     3 - 6                  2 per beat + chord per bar  kick + snare
high      124 - 150    8 - 14, bright (saw)   4 per beat + chords         kick, snare, hi-hat
========  ===========  =====================  ==========================  ==================

Layout written (as the FMA project's ``fma_metadata.zip`` and
``fma_small.zip`` unpack)::

    ROOT/fma_metadata/tracks.csv      FMA's 3-row header (2 header rows + track_id row)
    ROOT/fma_small/000/000002.mp3     AUDIO_DIR/{id:06d}[:3]/{id:06d}.mp3, mono, sr Hz

``tracks.csv`` has FMA's columns that hitcnn reads -- ``('track', 'listens')``,
``('set', 'subset')``, ``('set', 'split')``, ``('track', 'genre_top')``,
``('artist', 'id')`` -- plus a few others (title, duration, album listens).
Listens are drawn per class from disjoint ranges (low < 500 <= medium <
3000 <= high), so bucket edges ``500,3000`` (or the paper's shares, which the
class counts follow: 16.8 / 46.7 / 36.5 %) give back the classes exactly.
About 10 % extra rows are ``medium`` / ``large`` subset tracks without audio,
as in a real fma_small download.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

CLASSES = ("low", "medium", "high")
#: the paper's class shares of the whole FMA dataset (low, medium, high)
PAPER_SHARES = (0.168, 0.467, 0.365)
#: listens ranges per class: [lo, hi) drawn log-uniformly
LISTENS_RANGES = ((20, 450), (550, 2800), (3300, 40000))
#: bucket edges that give the classes back exactly from ('track', 'listens')
BUCKET_EDGES = (500, 3000)
GENRES = ("Electronic", "Rock", "Folk", "Hip-Hop", "Pop", "Instrumental")
SPLIT_NAMES = ("training", "validation", "test")

DEFAULTS = dict(n_tracks=360, seconds=12.0, sr=22050, seed=0)


def default_cache_dir() -> Path:
    """Directory holding hitcnn's caches: ``$HITCNN_CACHE`` or ``~/.cache/hitcnn``."""
    env = os.environ.get("HITCNN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hitcnn"


# ----------------------------------------------------------------------------- audio


def _midi_hz(m):
    return 440.0 * 2.0 ** ((np.asarray(m, dtype=np.float64) - 69.0) / 12.0)


_TABLE = 4096


def _wavetable(n_harm, rolloff, freq, sr):
    """One period of the additive waveform (harmonics below Nyquist), ``_TABLE`` samples."""
    n_eff = max(1, min(int(n_harm), int((sr / 2 - 1) // freq)))
    return _table(n_eff, float(rolloff))


@functools.lru_cache(maxsize=256)
def _table(n_harm, rolloff):
    ph = 2 * np.pi * np.arange(_TABLE) / _TABLE
    wave = np.zeros(_TABLE)
    for k in range(1, n_harm + 1):
        wave += np.sin(k * ph) / k ** rolloff
    return wave


def _note(out, start, dur, freq, n_harm, rolloff, amp, sr, attack, decay):
    """Add one note (additive synthesis, exponential decay envelope) into ``out``."""
    i0 = int(start * sr)
    n = min(int(dur * sr), out.size - i0)
    if n <= 8 or i0 >= out.size:
        return
    t = np.arange(n) / sr
    env = np.minimum(t / attack, 1.0) * np.exp(-t / decay)
    tail = min(n, int(0.01 * sr))  # 10 ms release: no clicks
    env[n - tail:] *= np.linspace(1.0, 0.0, tail)
    wave = _wavetable(n_harm, rolloff, freq, sr)[(np.arange(n) * (freq * _TABLE / sr)).astype(np.int64) % _TABLE]
    out[i0:i0 + n] += amp * env * wave


def _kick(out, start, sr, amp):
    i0 = int(start * sr)
    n = min(int(0.18 * sr), out.size - i0)
    if n <= 0:
        return
    t = np.arange(n) / sr
    f = 45 + 90 * np.exp(-t / 0.03)
    out[i0:i0 + n] += amp * np.sin(2 * np.pi * np.cumsum(f) / sr) * np.exp(-t / 0.06)


def _noise_hit(out, start, sr, amp, dur, rng, highpass):
    i0 = int(start * sr)
    n = min(int(dur * sr), out.size - i0)
    if n <= 1:
        return
    t = np.arange(n) / sr
    z = rng.standard_normal(n)
    if highpass:
        z = np.diff(z, prepend=0.0)  # crude high-pass: hi-hat
    out[i0:i0 + n] += amp * z * np.exp(-t / (dur / 4))


#: per-class synthesis parameters: (tempo range, harmonics range, roll-off range,
#: notes per beat, chord prob per bar, drums level)
_STYLE = {
    0: dict(tempo=(60, 84), harm=(1, 3), rolloff=(1.8, 2.6), per_beat=(1,), chord=0.15, drums=0),
    1: dict(tempo=(92, 116), harm=(3, 6), rolloff=(1.2, 1.8), per_beat=(2,), chord=0.7, drums=1),
    2: dict(tempo=(124, 150), harm=(8, 14), rolloff=(0.8, 1.2), per_beat=(4, 3), chord=0.9, drums=2),
}
_SCALES = ((0, 2, 4, 5, 7, 9, 11), (0, 2, 3, 5, 7, 8, 10), (0, 3, 5, 7, 10))


def synth_clip(label: int, seed: int, seconds: float = 12.0, sr: int = 22050) -> np.ndarray:
    """Synthesise one clip whose popularity class ``label`` follows from its content.

    Parameters
    ----------
    label : int in {0, 1, 2}
        Class index into :data:`CLASSES` (low, medium, high).
    seed : int
        Seed of this clip's random choices (key, scale, tempo, timbre, melody).
    seconds : float > 0
        Length in seconds.
    sr : int > 0
        Sample rate in Hz.

    Returns
    -------
    y : np.ndarray [shape=(round(seconds * sr),), dtype=float32]
        Mono audio in [-1, 1] (peak normalised to 0.5-0.9).

    Raises
    ------
    ValueError
        If ``label`` is not 0, 1 or 2, or ``seconds`` / ``sr`` are not positive.
    """
    if label not in _STYLE:
        raise ValueError(f"label must be 0, 1 or 2, got {label!r}")
    if not seconds > 0 or not sr > 0:
        raise ValueError(f"seconds and sr must be > 0, got seconds={seconds!r}, sr={sr!r}")
    rng = np.random.default_rng(seed)
    st = _STYLE[label]
    n = int(round(seconds * sr))
    out = np.zeros(n)
    tempo = rng.uniform(*st["tempo"])
    beat = 60.0 / tempo
    root = int(rng.integers(45, 57))  # A2..G#3
    scale = _SCALES[rng.integers(len(_SCALES))]
    n_harm = int(rng.integers(st["harm"][0], st["harm"][1] + 1))
    rolloff = rng.uniform(*st["rolloff"])
    per_beat = int(rng.choice(st["per_beat"]))
    step = beat / per_beat
    octave = 12 * int(rng.integers(1, 3))
    decay = rng.uniform(0.15, 0.5) * (1.5 if label == 0 else 1.0)
    degree = 0
    t = rng.uniform(0, step)
    while t < seconds:
        degree = int(np.clip(degree + rng.integers(-2, 3), -3, 10))
        midi = root + octave + 12 * (degree // len(scale)) + scale[degree % len(scale)]
        if rng.random() < 0.9:  # some rests
            dur = step * (2.0 if label == 0 else rng.choice((1.0, 1.0, 2.0)))
            _note(out, t, dur, _midi_hz(midi), n_harm, rolloff, rng.uniform(0.25, 0.4), sr, 0.01, decay)
        t += step
    bar = 4 * beat
    for b in np.arange(0.0, seconds, bar):  # chords: triads on a scale degree
        if rng.random() < st["chord"]:
            d = int(rng.integers(0, len(scale)))
            for k in (0, 2, 4):
                dd = d + k
                m = root + 12 * (dd // len(scale)) + scale[dd % len(scale)]
                _note(out, b, bar, _midi_hz(m), max(1, n_harm // 2), rolloff, 0.12, sr, 0.05, 1.0)
    if st["drums"] >= 1 or rng.random() < 0.3:
        level = 0.5 if st["drums"] >= 1 else 0.2
        for k, b in enumerate(np.arange(0.0, seconds, beat)):
            if k % 2 == 0 or st["drums"] == 2:
                _kick(out, b, sr, level)
            if st["drums"] >= 1 and k % 2 == 1:
                _noise_hit(out, b, sr, 0.15, 0.15, rng, highpass=False)
            if st["drums"] == 2:
                _noise_hit(out, b + beat / 2, sr, 0.08, 0.05, rng, highpass=True)
                _noise_hit(out, b, sr, 0.06, 0.05, rng, highpass=True)
    out += rng.uniform(0.002, 0.01) * rng.standard_normal(n)  # a little background noise
    peak = np.max(np.abs(out))
    out *= rng.uniform(0.5, 0.9) / max(peak, 1e-9)
    return out.astype(np.float32)


# ----------------------------------------------------------------------------- metadata


def _class_counts(n: int, shares=PAPER_SHARES) -> list[int]:
    counts = [int(round(n * s)) for s in shares]
    counts[1] += n - sum(counts)
    return counts


def _split_of(labels: np.ndarray, rng) -> np.ndarray:
    """Stratified 80/10/10 in FMA's names (training / validation / test)."""
    split = np.empty(labels.size, dtype=object)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = max(1, int(round(0.1 * idx.size)))
        n_test = max(1, int(round(0.1 * idx.size)))
        split[idx[:n_val]] = "validation"
        split[idx[n_val:n_val + n_test]] = "test"
        split[idx[n_val + n_test:]] = "training"
    return split


def make_tracks_table(n_tracks: int, seed: int, seconds: float):
    """Build the synthetic ``tracks.csv`` table (pandas, FMA's MultiIndex columns).

    Returns
    -------
    tracks : pandas.DataFrame
        Indexed by integer ``track_id``; columns ``(group, name)`` as in FMA.
    labels : dict int -> int
        Class index of every track that has audio (subset ``small``).
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    counts = _class_counts(n_tracks)
    labels = np.concatenate([np.full(c, k) for k, c in enumerate(counts)])
    rng.shuffle(labels)
    n_extra = max(1, n_tracks // 10)  # medium / large tracks with no audio here
    n_all = n_tracks + n_extra
    ids = np.sort(rng.choice(np.arange(2, 40 * n_all + 2), size=n_all, replace=False))
    has_audio = np.zeros(n_all, dtype=bool)
    has_audio[rng.choice(n_all, size=n_tracks, replace=False)] = True
    all_labels = np.full(n_all, -1)
    all_labels[has_audio] = labels
    all_labels[~has_audio] = rng.integers(0, 3, size=n_extra)
    listens = np.empty(n_all, dtype=np.int64)
    for k, (lo, hi) in enumerate(LISTENS_RANGES):
        m = all_labels == k
        listens[m] = np.exp(rng.uniform(np.log(lo), np.log(hi), size=m.sum())).astype(np.int64)
    # artists: each artist sticks to one class (so an artist-disjoint split is meaningful)
    artist = np.empty(n_all, dtype=np.int64)
    next_artist = 1
    for k in range(3):
        idx = np.flatnonzero(all_labels == k)
        n_art = max(2, idx.size // 4)
        artist[idx] = next_artist + rng.integers(0, n_art, size=idx.size)
        next_artist += n_art
    split = _split_of(all_labels, rng)
    subset = np.where(has_audio, "small", np.where(rng.random(n_all) < 0.5, "medium", "large"))
    genre = np.array(GENRES)[rng.integers(0, len(GENRES), size=n_all)]
    cols = {
        ("album", "listens"): listens * rng.integers(2, 6, size=n_all),
        ("album", "title"): [f"Synthetic album {a}" for a in artist],
        ("artist", "id"): artist,
        ("artist", "name"): [f"Synthetic artist {a}" for a in artist],
        ("set", "split"): split,
        ("set", "subset"): subset,
        ("track", "duration"): np.full(n_all, int(round(seconds))),
        ("track", "genre_top"): genre,
        ("track", "listens"): listens,
        ("track", "title"): [f"synthetic {CLASSES[c]} #{i}" for i, c in zip(ids, all_labels)],
    }
    tracks = pd.DataFrame(cols, index=pd.Index(ids, name="track_id"))
    tracks.columns = pd.MultiIndex.from_tuples(tracks.columns)
    label_of = {int(i): int(c) for i, c, h in zip(ids, all_labels, has_audio) if h}
    return tracks, label_of


def audio_path(audio_dir, track_id: int) -> Path:
    """FMA's audio path: ``AUDIO_DIR/{id:06d}[:3]/{id:06d}.mp3``."""
    tid = f"{int(track_id):06d}"
    return Path(audio_dir) / tid[:3] / f"{tid}.mp3"


def _write_one(args):
    path, label, seed, seconds, sr = args
    import soundfile as sf

    y = synth_clip(label, seed, seconds, sr)
    tmp = path.with_name(path.stem + ".tmp.mp3")
    sf.write(str(tmp), y, sr, format="MP3")
    os.replace(tmp, path)
    return str(path)


def _params_key(n_tracks, seconds, sr, seed) -> str:
    blob = json.dumps(dict(n_tracks=n_tracks, seconds=seconds, sr=sr, seed=seed, version=1), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def generate(root, n_tracks: int = DEFAULTS["n_tracks"], seconds: float = DEFAULTS["seconds"],
             sr: int = DEFAULTS["sr"], seed: int = DEFAULTS["seed"], workers: int | None = None,
             progress: bool = True) -> dict:
    """Write the synthetic dataset in FMA's layout under ``root`` (idempotent).

    Parameters
    ----------
    root : path-like
        Output directory; receives ``fma_metadata/tracks.csv``, ``fma_small/``
        and ``synth.json`` (the parameters, written last as the "done" marker).
    n_tracks : int >= 30
        Clips with audio (subset ``small``); class counts follow the paper's
        shares 16.8 / 46.7 / 36.5 %.
    seconds : float > 0
        Clip length in seconds (FMA's clips are 30 s; 12 s keeps the demo fast
        while still leaving room for a random 10 s crop).
    sr : int
        Sample rate of the mp3 files in Hz (22050: the pipeline's default, so
        no resampling).
    seed : int
        Seed of everything (metadata, clip content).
    workers : int or None
        Processes for synthesis and mp3 encoding (default: all cores).
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    info : dict
        ``root``, ``audio_dir``, ``metadata`` (paths as str), ``bucket_edges``,
        ``classes``, ``n_tracks``, ``seconds``, ``sr``, ``seed``, ``seconds_to_build``.

    Raises
    ------
    ValueError
        If ``n_tracks < 30`` (every class needs tracks in each split) or
        ``seconds`` / ``sr`` are not positive.
    """
    if int(n_tracks) < 30:
        raise ValueError(f"n_tracks must be >= 30 so every class has val/test tracks, got {n_tracks!r}")
    if not seconds > 0 or not sr > 0:
        raise ValueError(f"seconds and sr must be > 0, got seconds={seconds!r}, sr={sr!r}")
    root = Path(root)
    marker = root / "synth.json"
    if marker.is_file():
        info = json.loads(marker.read_text())
        if (info.get("n_tracks"), info.get("seconds"), info.get("sr"), info.get("seed")) == (
                n_tracks, seconds, sr, seed):
            return info
    t0 = time.perf_counter()
    audio_dir = root / "fma_small"
    meta_dir = root / "fma_metadata"
    meta_dir.mkdir(parents=True, exist_ok=True)
    tracks, label_of = make_tracks_table(n_tracks, seed, seconds)
    jobs = []
    for tid, label in label_of.items():
        p = audio_path(audio_dir, tid)
        p.parent.mkdir(parents=True, exist_ok=True)
        if not p.is_file():  # resume an interrupted build
            jobs.append((p, label, seed * 1_000_003 + tid, float(seconds), int(sr)))
    workers = workers or os.cpu_count() or 1
    bar = None
    if progress and jobs:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="synthesising demo clips", unit="clip")
    if workers > 1 and len(jobs) > 8:
        with ProcessPoolExecutor(max_workers=workers) as ex:
            for _ in ex.map(_write_one, jobs, chunksize=4):
                if bar is not None:
                    bar.update()
    else:
        for j in jobs:
            _write_one(j)
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()
    tmp = meta_dir / "tracks.csv.tmp"
    tracks.to_csv(tmp)
    os.replace(tmp, meta_dir / "tracks.csv")
    info = dict(root=str(root), audio_dir=str(audio_dir), metadata=str(meta_dir / "tracks.csv"),
                bucket_edges=list(BUCKET_EDGES), classes=list(CLASSES), n_tracks=n_tracks,
                seconds=seconds, sr=sr, seed=seed,
                seconds_to_build=round(time.perf_counter() - t0, 2),
                note="SYNTHETIC demo data: the class is defined by tempo / timbre / note density")
    marker.write_text(json.dumps(info, indent=2))
    return info


def ensure_demo(cache_dir=None, progress: bool = True, **params) -> dict:
    """Build the demo dataset once into ``cache_dir/demo-<hash>`` and return its info.

    ``cache_dir`` defaults to :func:`default_cache_dir`; ``params`` override
    :data:`DEFAULTS` (n_tracks, seconds, sr, seed). A finished build is reused;
    an interrupted one resumes (finished clips are kept).
    """
    p = dict(DEFAULTS, **params)
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = base / f"demo-{_params_key(p['n_tracks'], p['seconds'], p['sr'], p['seed'])}"
    return generate(root, progress=progress, **p)


def remove_demo(cache_dir=None) -> None:
    """Delete every cached demo build under ``cache_dir`` (for a clean rebuild)."""
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    for d in base.glob("demo-*"):
        shutil.rmtree(d, ignore_errors=True)
