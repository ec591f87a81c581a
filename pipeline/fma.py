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
- ``('track', 'listens')`` is coerced with ``pd.to_numeric(errors='coerce')``:
  a non-numeric entry (e.g. 'lots') becomes NaN, so it is reported and
  dropped like a missing play count (:func:`select`, report key
  ``non_numeric`` keeps the original text); if no selected track has a
  numeric value :func:`select` raises, naming the file, the column and
  examples.
- Reports stay short on screen: :func:`summarize_report` and the errors of
  :func:`select` give counts, a few ids and their expected paths; the full id
  lists live in the report dict (and the dataset manifest).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import PipelineError

__all__ = ["load_tracks", "audio_path", "select", "summarize_report", "require_columns", "SUBSETS",
           "COLUMNS"]

SUBSETS = ("small", "medium", "large")
COLUMNS = {
    "listens": ("track", "listens"),
    "genre_top": ("track", "genre_top"),
    "subset": ("set", "subset"),
    "split": ("set", "split"),
    "artist": ("artist", "id"),
}
#: Columns coerced to numbers by :func:`load_tracks`.
NUMERIC_COLUMNS = (COLUMNS["listens"],)
#: Ids (and paths, values) quoted in a message before "... and N more".
_SHOW = 5


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
        large`` when present; ``('track', 'listens')`` float64 (non-numeric
        entries -> NaN). ``attrs['path']`` is ``path``; ``attrs['non_numeric']``
        maps ``str(column)`` to ``[[track_id, original text], ...]`` for the
        coerced entries (read by :func:`select`).

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
    non_numeric = {}
    for col in NUMERIC_COLUMNS:
        if col in tracks.columns:
            raw = tracks[col]
            num = pd.to_numeric(raw, errors="coerce")
            bad = num.isna() & raw.notna()
            if bad.any():
                non_numeric[str(col)] = [[int(i), str(v)] for i, v in raw[bad].items()]
            tracks[col] = num.astype(np.float64)
    tracks.attrs["path"] = path
    tracks.attrs["non_numeric"] = non_numeric
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


def _examples(strings, total) -> str:
    """``'a, b, c and 7 more'``: the first ``_SHOW`` of ``strings``, out of ``total``."""
    text = ", ".join(list(strings)[:_SHOW])
    return text + (f" and {total - _SHOW} more" if total > _SHOW else "")


def _audio_dir_hint(audio_dir, ids) -> str:
    """'--audio-dir must be the folder holding 000/000002.mp3 ...' plus a subfolder that has the files."""
    rel = audio_path("", ids[0]).as_posix()
    hint = f"--audio-dir must be the folder holding {rel} (e.g. .../fma_small)"
    root = Path(audio_dir)
    candidates = []
    try:
        subdirs = sorted(d for d in root.iterdir() if d.is_dir())
    except OSError:
        subdirs = []
    if any(audio_path(root.parent, i).is_file() for i in ids[:200]):
        subdirs = [root.parent]  # one level too deep (e.g. fma_small/000)
    for d in subdirs:
        if any(audio_path(d, i).is_file() for i in ids[:200]):
            candidates.insert(0, d)  # holds expected files: the best guess
        elif (d / rel.split("/")[0]).is_dir() and d not in candidates:
            candidates.append(d)
    if candidates:
        hint += f"; {os.fspath(candidates[0])!r} looks like it: did you mean --audio-dir {os.fspath(candidates[0])}?"
    return hint


def summarize_report(report, audio_dir=None) -> str:
    """One short line per problem in a :func:`select` report (counts and a few ids, never all).

    Parameters
    ----------
    report : dict
        From :func:`select`.
    audio_dir : str or os.PathLike or None
        Shows the expected path of the first missing tracks when given.

    Returns
    -------
    str
        Lines joined by newlines; '' when nothing was dropped.
    """
    lines = []
    miss = report.get("missing_audio", [])
    if miss:
        shown = [f"{i} ({audio_path(audio_dir, i)})" if audio_dir is not None else str(i) for i in miss[:_SHOW]]
        lines.append(f"{len(miss)} tracks listed in the metadata have no audio file, e.g. "
                     f"{_examples(shown, len(miss))}")
    for col, ids in report.get("missing_values", {}).items():
        bad = dict((i, v) for i, v in report.get("non_numeric", {}).get(col, []))
        ex = _examples([f"{i} ({bad[i]!r})" if i in bad else f"{i} (NaN)" for i in ids[:_SHOW]], len(ids))
        kinds = f" ({len(bad)} non-numeric)" if bad else ""
        lines.append(f"{len(ids)} tracks dropped for a missing {col} value{kinds}, e.g. {ex}")
    return "\n".join(lines)


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
        Columns whose NaN rows are dropped and reported (e.g. listens; a
        non-numeric listens entry is NaN after :func:`load_tracks`).

    Returns
    -------
    selected : pandas.DataFrame
        The kept rows, in track-id order.
    report : dict
        ``{'missing_audio': [ids], 'missing_values': {column: [ids]},
        'non_numeric': {column: [[id, text], ...]}}`` (full lists, for the
        manifest; :func:`summarize_report` prints them short).
        ``non_numeric`` lists the selected tracks whose value was text such
        as 'lots' (they are also in ``missing_values``).

    Raises
    ------
    PipelineError
        Unknown subset, a needed column missing, a needed column with no
        usable value (naming the file, the column and example ids with their
        values), or nothing left: when every track's mp3 is absent the
        message gives the count, the first ids with their expected paths and
        a hint at the right ``--audio-dir`` (a subfolder that holds the files,
        if any).
    """
    report = {"missing_audio": [], "missing_values": {}, "non_numeric": {}}
    src = tracks.attrs.get("path", "tracks.csv")
    non_numeric = tracks.attrs.get("non_numeric", {})
    t = tracks.sort_index()
    if subset is not None:
        if subset not in SUBSETS:
            raise PipelineError(f"subset must be one of {SUBSETS} or None, got {subset!r}")
        require_columns(t, [COLUMNS["subset"]], src)
        t = t[t[COLUMNS["subset"]] <= subset]
    require_columns(t, needed, src)
    for col in needed:
        bad = t[col].isna()
        if bad.any():
            ids = [int(i) for i in t.index[bad]]
            report["missing_values"][str(col)] = ids
            keep = set(ids)
            texts = [[i, v] for i, v in non_numeric.get(str(col), []) if i in keep]
            if texts:
                report["non_numeric"][str(col)] = texts
            if bad.all():
                ex = _examples([f"track {i}: {v!r}" for i, v in texts[:_SHOW]], len(texts))
                n_empty = len(ids) - len(texts)
                what = (f"{len(texts)} non-numeric (e.g. {ex})" + (f" and {n_empty} empty (NaN)" if n_empty else "")
                        if texts else "all empty (NaN)")
                raise PipelineError(f"{src}: column {col!r} has no usable value for the {len(ids)} selected "
                                    f"tracks (subset <= {subset!r}): {what}")
            t = t[~bad]
    if audio_dir is not None:
        if not os.path.isdir(audio_dir):
            raise PipelineError(f"FMA audio directory not found: {os.fspath(audio_dir)!r}")
        present = np.array([audio_path(audio_dir, i).is_file() for i in t.index], dtype=bool)
        report["missing_audio"] = [int(i) for i in t.index[~present]]
        if len(t) and not present.any():
            ids = report["missing_audio"]
            shown = _examples([f"{i} ({audio_path(audio_dir, i)})" for i in ids[:_SHOW]], len(ids))
            raise PipelineError(
                f"no FMA tracks left: none of the {len(ids)} tracks of subset <= {subset!r} has its mp3 under "
                f"{os.fspath(audio_dir)!r}; missing e.g. {shown}. {_audio_dir_hint(audio_dir, ids)}")
        t = t[present]
    if len(t) == 0:
        raise PipelineError(f"no FMA tracks left after selecting subset <= {subset!r} with audio in "
                            f"{os.fspath(audio_dir) if audio_dir is not None else None!r}: "
                            f"{summarize_report(report, audio_dir) or 'the metadata lists no such track'}")
    return t, report
