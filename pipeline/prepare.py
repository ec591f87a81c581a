"""Entry points of the ``preprocess`` command: a source folder -> a cached dataset directory.

:func:`prepare_fma` (FMA's layout and ``tracks.csv``) and :func:`prepare_folder`
(any folder, labels from a CSV or from the file names) turn their source into
items (path, crop key, label, split), name the dataset directory by the
cache hash (:func:`pipeline.cache.cache_hash`) and build it
(:func:`pipeline.cache.build_cache`); an old cache of another format beside it
is named, never reused.
"""
from __future__ import annotations

import os
import sys
import zlib
from pathlib import Path

import numpy as np

from . import fma
from . import labels as labels_mod
from . import splits as splits_mod
from .cache import _note_outdated, build_cache, cache_hash
from .errors import PipelineError
from .spectrogram import SpectrogramConfig

__all__ = ["prepare_fma", "prepare_folder"]

def _fractions(fractions):
    return tuple(float(f) for f in fractions)


def prepare_fma(audio_dir, metadata, out_root, config=None, subset="small", target="popularity",
                bucket_edges=None, split="stratified", fractions=(0.8, 0.1, 0.1), seed=0, workers=None,
                timeout=120.0, progress=True):
    """FMA layout -> cached dataset directory (the ``preprocess`` command).

    Parameters
    ----------
    audio_dir : str or os.PathLike
        FMA audio folder, e.g. ``fma_small`` (``{id:06d}[:3]/{id:06d}.mp3``).
    metadata : str or os.PathLike
        ``fma_metadata/tracks.csv``.
    out_root : str or os.PathLike
        Parent folder; the dataset goes to ``out_root/fma-{subset}-{target}-{hash12}``.
    config : SpectrogramConfig or None
        Default: the paper's (22050 Hz, 10 s crops, 2048/512 STFT, 102 x 159).
    subset : {'small', 'medium', 'large'} or None
        Tracks with ``('set', 'subset') <= subset``.
    target : {'popularity', 'genre'}
        Buckets of ``('track', 'listens')`` or ``('track', 'genre_top')``.
    bucket_edges : (float, float) or None
        Explicit popularity edges; None places them at the paper's shares
        (16.8 / 46.7 / 36.5 %) of the selected tracks (recorded in the manifest).
    split : {'stratified', 'fma', 'group'}
        Stratified by class with ``seed``, FMA's ``('set', 'split')``, or
        artist-disjoint by ``('artist', 'id')``.
    fractions : (train, val, test)
    seed : int
        Split and crop seed.
    workers, timeout, progress
        As :func:`pipeline.cache.build_cache`.

    Returns
    -------
    pathlib.Path
        The dataset directory (open it with :class:`pipeline.dataset.Dataset`).

    Raises
    ------
    PipelineError
        Missing metadata/audio dir, a needed column missing (named), bad
        target/split, an empty popularity class, a class too small to split.
    """
    config = config or SpectrogramConfig()
    if target not in ("popularity", "genre"):
        raise PipelineError(f"target must be 'popularity' or 'genre', got {target!r}")
    if split not in ("stratified", "fma", "group"):
        raise PipelineError(f"split must be 'stratified', 'fma' or 'group', got {split!r}")
    label_col = fma.COLUMNS["listens"] if target == "popularity" else fma.COLUMNS["genre_top"]
    needed = [label_col] + ([fma.COLUMNS["subset"]] if subset is not None else [])
    if split == "fma":
        needed.append(fma.COLUMNS["split"])
    if split == "group":
        needed.append(fma.COLUMNS["artist"])
    tracks = fma.load_tracks(metadata, needed=needed)
    sel, report = fma.select(tracks, audio_dir, subset=subset, needed=[label_col])
    extra = {"source": {"kind": "fma", "audio_dir": os.path.abspath(audio_dir),
                        "metadata": os.path.abspath(metadata), "subset": subset},
             "target": target, "split_method": split, "fractions": list(fractions),
             "metadata_report": report}
    if target == "popularity":
        codes, edges = labels_mod.popularity_buckets(sel[label_col].to_numpy(np.float64), edges=bucket_edges)
        classes = list(labels_mod.POPULARITY_CLASSES)
        shares = np.bincount(codes, minlength=3) / len(codes)
        extra["bucket_edges"] = list(edges)
        extra["bucket_rule"] = "low: listens < e1; medium: e1 <= listens < e2; high: listens >= e2"
        extra["bucket_edges_source"] = "explicit" if bucket_edges is not None else "paper shares 16.8/46.7/36.5 %"
        extra["bucket_shares"] = [round(float(s), 4) for s in shares]
    else:
        codes, classes = labels_mod.encode(sel[label_col].astype(str).tolist())
    if split == "stratified":
        sp = splits_mod.stratified_split(codes, fractions, seed, class_names=classes)
    elif split == "fma":
        sp = splits_mod.fma_split(sel[fma.COLUMNS["split"]].tolist())
    else:
        sp = splits_mod.group_split(sel[fma.COLUMNS["artist"]].tolist(), fractions, seed)
    groups = sel[fma.COLUMNS["artist"]].tolist() if fma.COLUMNS["artist"] in sel.columns else [None] * len(sel)
    items = [{"path": os.fspath(fma.audio_path(audio_dir, tid)), "key": int(tid), "label": int(c),
              "split": str(s), "id": str(int(tid)), "group": g}
             for tid, c, s, g in zip(sel.index, codes, sp, groups)]
    h = cache_hash(items, config, classes, seed)
    out = Path(out_root) / f"fma-{subset or 'all'}-{target}-{h[:12]}"
    if progress:
        missing = report["missing_audio"]
        print(f"FMA: {len(items)} tracks with audio; {len(missing)} listed in the metadata but absent on disk; "
              f"{sum(len(v) for v in report['missing_values'].values())} dropped for missing labels",
              file=sys.stderr)
        details = fma.summarize_report(report, audio_dir)  # counts and a few ids; all of them in the manifest
        if details:
            print("\n".join("  " + ln for ln in details.splitlines()), file=sys.stderr)
    _note_outdated(out, progress)
    build_cache(out, items, config, classes, seed=seed, workers=workers, timeout=timeout,
                progress=progress, extra=extra)
    return out


def _file_stat(path):
    """``[size in bytes, mtime in ns]`` of a file, or None when it cannot be read (the build reports it)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [int(st.st_size), int(st.st_mtime_ns)]


def prepare_folder(audio_dir, out_root, config=None, labels_csv=None, label_regex=None, group_regex=None,
                   split="stratified", fractions=(0.8, 0.1, 0.1), seed=0, workers=None, timeout=120.0,
                   files=None, progress=True, name=None, classes=None):
    """Any folder of labelled audio -> cached dataset directory.

    Labels come from ``labels_csv`` (``path,label[,group]``) or from
    ``label_regex`` on the file names (e.g. FSDD ``r'^(\\d)_'`` with
    ``group_regex=r'^\\d_([a-z]+)_'`` for speaker-disjoint splits).

    Parameters
    ----------
    audio_dir : str or os.PathLike
        Folder searched recursively for audio files (wav, mp3, flac, ogg, ...).
    out_root : str or os.PathLike
        Parent folder; the dataset goes to ``out_root/{name}-{hash12}``
        (``name`` defaults to the folder's name).
    config : SpectrogramConfig or None
        E.g. ``SpectrogramConfig(sr=8000, crop_seconds=1.0, n_fft=256, hop_length=64)``
        for 1 s spoken digits.
    labels_csv : str or None
    label_regex, group_regex : str or None
        See :func:`pipeline.labels.labels_from_regex`.
    split : {'stratified', 'group', 'test'}
        'group' needs groups (CSV ``group`` column or a group regex); 'test'
        puts every file in the test split (``evaluate --audio-dir``: new
        labelled audio for a trained run).
    fractions, seed, workers, timeout, progress
        As :func:`prepare_fma` / :func:`pipeline.cache.build_cache`.
    files : list of path-like or None
        Use these files instead of scanning ``audio_dir`` (e.g. a subset).
    name : str or None
    classes : list of str or None
        Fixed class names (a trained run's): labels index them, and a label
        outside them is an error naming the label and the file. None: the
        sorted labels found.

    Returns
    -------
    pathlib.Path
        The dataset directory.

    Raises
    ------
    PipelineError
        Neither or both label sources, no audio, no matching names, a class
        too small to split, a group split without groups, a label not in
        ``classes``.
    """
    config = config or SpectrogramConfig()
    if (labels_csv is None) == (label_regex is None):
        raise PipelineError("give exactly one label source: labels_csv or label_regex")
    if split not in ("stratified", "group", "test"):
        raise PipelineError(f"split must be 'stratified', 'group' or 'test' for a folder, got {split!r}")
    root = Path(audio_dir)
    skipped_names = []
    if labels_csv is not None:
        rows = labels_mod.labels_from_csv(labels_csv, audio_dir)
    else:
        paths = [Path(p) for p in files] if files is not None else labels_mod.find_audio(root)
        if not paths:
            raise PipelineError(f"no audio files in {os.fspath(root)!r}")
        rows, skipped_names = labels_mod.labels_from_regex(paths, label_regex, group_regex)
    if classes is not None:
        known = {str(c) for c in classes}
        for r in rows:
            if str(r["label"]) not in known:
                raise PipelineError(f"label {str(r['label'])!r} of {os.fspath(r['path'])!r} is not one of the "
                                    f"run's classes {[str(c) for c in classes]}")
    codes, classes = labels_mod.encode([r["label"] for r in rows], classes)
    groups = [r["group"] for r in rows]
    if split == "test":
        sp = ["test"] * len(rows)
    elif split == "group":
        if any(g is None for g in groups):
            raise PipelineError("split='group' needs a group for every file (CSV 'group' column or group_regex)")
        sp = splits_mod.group_split(groups, fractions, seed)
    else:
        sp = splits_mod.stratified_split(codes, fractions, seed, class_names=classes)

    def rel(p):
        # the name inside the folder (a link's own name, even when it points outside or nowhere)
        for a, b in ((Path(os.path.abspath(p)), Path(os.path.abspath(root))), (Path(p).resolve(), root.resolve())):
            try:
                return a.relative_to(b).as_posix()
            except ValueError:
                pass
        return os.fspath(p)

    items = [{"path": os.path.abspath(r["path"]), "key": zlib.crc32(rel(r["path"]).encode()),
              "label": int(c), "split": str(s), "id": rel(r["path"]), "group": r["group"]}
             for r, c, s in zip(rows, codes, sp)]
    if split == "test":  # new audio to evaluate: a file replaced in place must not reuse the old cache
        for it in items:
            it["stat"] = _file_stat(it["path"])
    h = cache_hash(items, config, classes, seed)
    out = Path(out_root) / f"{name or root.resolve().name}-{h[:12]}"
    extra = {"source": {"kind": "folder", "audio_dir": os.path.abspath(audio_dir),
                        "labels_csv": os.path.abspath(labels_csv) if labels_csv else None,
                        "label_regex": label_regex, "group_regex": group_regex},
             "split_method": split, "fractions": list(fractions),
             "unmatched_files": [os.fspath(p) for p in skipped_names]}
    _note_outdated(out, progress)
    build_cache(out, items, config, classes, seed=seed, workers=workers, timeout=timeout,
                progress=progress, extra=extra)
    return out
