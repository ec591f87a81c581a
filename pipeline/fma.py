"""FMA metadata (``fma_metadata/tracks.csv``) and the FMA audio layout.

Conventions (github.com/mdeff/fma, ``utils.load``):

- ``tracks.csv`` has two header rows (top-level group, column) plus a
  ``track_id`` row: read with ``pd.read_csv(path, index_col=0, header=[0, 1])``;
  the index is the integer track id.
- Columns used: ``('track', 'listens')`` (the track's play count, not the
  album's), ``('track', 'genre_top')``, ``('set', 'subset')`` as an ordered
  category ``small < medium < large`` (fma_small = ``subset <= 'small'``,
  fma_medium = ``<= 'medium'``), ``('set', 'split')`` (training / validation /
  test) and ``('artist', 'id')`` for artist-disjoint splits.
- Audio path: ``AUDIO_DIR/{id:06d}[:3]/{id:06d}.mp3``, e.g. track 2 is
  ``fma_small/000/000002.mp3``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import PipelineError

__all__ = ["load_tracks", "audio_path", "select", "require_columns", "SUBSETS", "COLUMNS"]

SUBSETS = ("small", "medium", "large")
COLUMNS = {
    "listens": ("track", "listens"),
    "genre_top": ("track", "genre_top"),
    "subset": ("set", "subset"),
    "split": ("set", "split"),
    "artist": ("artist", "id"),
}


def require_columns(tracks, needed, path="tracks.csv"):
    """Raise PipelineError naming the first of ``needed`` (2-tuples) missing in ``tracks``."""
    for col in needed:
        if col not in tracks.columns:
            raise PipelineError(f"{path}: needed column {col!r} is missing")


def load_tracks(path, needed=(COLUMNS["subset"],)):
    """Read FMA's ``tracks.csv``.

    Parameters
    ----------
    path : str or os.PathLike
        ``fma_metadata/tracks.csv``.
    needed : iterable of (str, str)
        Columns that must exist (PipelineError naming the first missing one).

    Returns
    -------
    pandas.DataFrame
        Index: integer track id (``track_id``); two-level columns; ``('set',
        'subset')`` converted to an ordered category ``small < medium <
        large`` when present.

    Raises
    ------
    PipelineError
        File missing or unreadable, non-integer track ids, a needed column
        missing, or an unknown subset value.
    """
    import pandas as pd

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise PipelineError(f"FMA metadata file not found: {path!r}")
    try:
        tracks = pd.read_csv(path, index_col=0, header=[0, 1], low_memory=False)
    except Exception as exc:
        raise PipelineError(f"cannot read FMA metadata {path!r}: {exc}") from exc
    try:
        tracks.index = tracks.index.astype(np.int64)
    except (ValueError, TypeError) as exc:
        raise PipelineError(f"{path}: track ids (first column) must be integers: {exc}") from exc
    tracks.index.name = "track_id"
    require_columns(tracks, needed, path)
    col = COLUMNS["subset"]
    if col in tracks.columns:
        bad = set(tracks[col].dropna().unique()) - set(SUBSETS)
        if bad:
            raise PipelineError(f"{path}: column {col!r} has unknown values {sorted(map(str, bad))}; "
                                f"expected {SUBSETS}")
        tracks[col] = pd.Categorical(tracks[col], categories=list(SUBSETS), ordered=True)
    return tracks


def audio_path(audio_dir, track_id) -> Path:
    """``AUDIO_DIR/{id:06d}[:3]/{id:06d}.mp3`` for one track id."""
    tid = f"{int(track_id):06d}"
    return Path(audio_dir) / tid[:3] / f"{tid}.mp3"


def select(tracks, audio_dir=None, subset="small", needed=()):
    """Tracks of a subset, with the ones absent on disk reported.

    Parameters
    ----------
    tracks : pandas.DataFrame
        From :func:`load_tracks`.
    audio_dir : str or os.PathLike or None
        FMA audio folder (e.g. ``fma_small``); when given, tracks whose mp3 is
        absent are dropped and reported.
    subset : {'small', 'medium', 'large'} or None
        Keep ``subset <= subset`` (None keeps all).
    needed : iterable of (str, str)
        Columns whose NaN rows are dropped and reported (e.g. listens).

    Returns
    -------
    selected : pandas.DataFrame
        The kept rows, in track-id order.
    report : dict
        ``{'missing_audio': [ids], 'missing_values': {column: [ids]}}``.

    Raises
    ------
    PipelineError
        Unknown subset, a needed column missing, or nothing left.
    """
    report = {"missing_audio": [], "missing_values": {}}
    t = tracks.sort_index()
    if subset is not None:
        if subset not in SUBSETS:
            raise PipelineError(f"subset must be one of {SUBSETS} or None, got {subset!r}")
        require_columns(t, [COLUMNS["subset"]])
        t = t[t[COLUMNS["subset"]] <= subset]
    require_columns(t, needed)
    for col in needed:
        bad = t[col].isna()
        if bad.any():
            report["missing_values"][str(col)] = [int(i) for i in t.index[bad]]
            t = t[~bad]
    if audio_dir is not None:
        if not os.path.isdir(audio_dir):
            raise PipelineError(f"FMA audio directory not found: {os.fspath(audio_dir)!r}")
        present = np.array([audio_path(audio_dir, i).is_file() for i in t.index], dtype=bool)
        report["missing_audio"] = [int(i) for i in t.index[~present]]
        t = t[present]
    if len(t) == 0:
        raise PipelineError(f"no FMA tracks left after selecting subset <= {subset!r} with audio in "
                            f"{audio_dir!r} (report: {report})")
    return t, report
