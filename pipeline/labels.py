"""Labels: popularity buckets, genres, CSV files and file-name regexes.

Popularity (the paper's target): three buckets of ``('track', 'listens')``,
``low`` = listens < e1, ``medium`` = e1 <= listens < e2, ``high`` = listens >= e2.
By default the edges are placed where the cumulative shares of the selected
tracks come closest to the paper's 16.8 % / 46.7 % / 36.5 % (cumulative 0.168
and 0.635). Edges always fall between two distinct listen counts, so equal
counts always share a class (deterministic ties); a placement that would
leave a class empty is not allowed, and fewer than three distinct counts is an
error. Explicit edges (``--bucket-edges 500,2000``) use the same rule.
"""
from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import numpy as np

from .errors import PipelineError

__all__ = ["PAPER_SHARES", "POPULARITY_CLASSES", "popularity_edges", "popularity_buckets",
           "encode", "labels_from_csv", "labels_from_regex", "AUDIO_EXTENSIONS", "find_audio",
           "unmatched_lines"]

PAPER_SHARES = (0.168, 0.467, 0.365)
POPULARITY_CLASSES = ("low", "medium", "high")
AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".ogg", ".oga", ".aiff", ".aif", ".au")


def popularity_edges(listens, shares=PAPER_SHARES):
    """Bucket edges ``(e1, e2)`` reproducing ``shares`` as closely as ties allow.

    Parameters
    ----------
    listens : array-like [shape=(n,)]
        Play counts (finite).
    shares : 3 floats summing to 1
        Target shares of low / medium / high (the paper's by default).

    Returns
    -------
    tuple of float
        ``(e1, e2)``: both are listen counts present in the data; ``low`` is
        ``< e1`` and ``high`` ``>= e2``. Among the distinct values, ``e1`` minimises
        ``|share(< e1) - shares[0]|`` and ``e2`` minimises
        ``|share(< e2) - shares[0] - shares[1]|`` subject to every class being
        non-empty (first minimum on ties).

    Raises
    ------
    PipelineError
        Non-finite listens, fewer than 3 distinct values, or bad shares.
    """
    x = np.asarray(listens, dtype=np.float64)
    if x.ndim != 1 or x.size == 0 or not np.all(np.isfinite(x)):
        raise PipelineError(f"listens must be a non-empty 1-D array of finite counts, got shape {x.shape}")
    s = np.asarray(shares, dtype=np.float64)
    if s.shape != (3,) or np.any(s <= 0) or abs(s.sum() - 1) > 1e-6:
        raise PipelineError(f"shares must be 3 positive numbers summing to 1, got {shares!r}")
    u, counts = np.unique(x, return_counts=True)
    if len(u) < 3:
        raise PipelineError(f"need at least 3 distinct listen counts for 3 buckets, got {len(u)}: {u.tolist()}")
    below = np.cumsum(counts)[:-1] / x.size   # share(< u[k+1]) for k = 0..len(u)-2
    # e1 = u[i + 1] for i in 0..len(u)-3 (leave room for e2 above it)
    i = int(np.argmin(np.abs(below[:-1] - s[0])))
    j_range = np.arange(i + 1, len(u) - 1)
    j = int(j_range[np.argmin(np.abs(below[j_range] - s[0] - s[1]))])
    return float(u[i + 1]), float(u[j + 1])


def popularity_buckets(listens, edges=None, shares=PAPER_SHARES):
    """Popularity class of each track: 0 low, 1 medium, 2 high.

    Parameters
    ----------
    listens : array-like [shape=(n,)]
        Play counts.
    edges : (float, float) or None
        ``(e1, e2)``, e1 < e2; None computes them with :func:`popularity_edges`.
    shares : 3 floats
        Target shares when ``edges`` is None.

    Returns
    -------
    labels : np.ndarray [shape=(n,), dtype=int64]
        ``searchsorted(edges, listens, side='right')``: low < e1 <= medium < e2 <= high.
    edges : tuple of float
        The edges used (record them in the manifest).

    Raises
    ------
    PipelineError
        Bad edges, non-finite listens, or an empty class (naming it).
    """
    x = np.asarray(listens, dtype=np.float64)
    if edges is None:
        edges = popularity_edges(x, shares)
    else:
        if len(edges) != 2 or not edges[0] < edges[1]:
            raise PipelineError(f"bucket edges must be two increasing numbers e1 < e2, got {edges!r}")
        if not np.all(np.isfinite(x)):
            raise PipelineError("listens contain NaN or inf; drop those tracks first")
    edges = (float(edges[0]), float(edges[1]))
    labels = np.searchsorted(np.asarray(edges), x, side="right").astype(np.int64)
    counts = np.bincount(labels, minlength=3)
    for k, name in enumerate(POPULARITY_CLASSES):
        if counts[k] == 0:
            raise PipelineError(
                f"popularity class {name!r} is empty with bucket edges {edges} "
                f"(listens range {x.min():g}..{x.max():g})")
    return labels, edges


def encode(names, classes=None):
    """String labels -> int64 codes.

    Parameters
    ----------
    names : sequence of str [length n]
    classes : sequence of str or None
        Class order; default sorted unique names (natural order for digits).

    Returns
    -------
    codes : np.ndarray [shape=(n,), dtype=int64]
    classes : list of str

    Raises
    ------
    PipelineError
        A name not in ``classes``.
    """
    names = [str(n) for n in names]
    if classes is None:
        classes = sorted(set(names), key=lambda c: (len(c), c) if c.isdigit() else (1 << 30, c))
    classes = [str(c) for c in classes]
    index = {c: k for k, c in enumerate(classes)}
    try:
        codes = np.array([index[n] for n in names], dtype=np.int64)
    except KeyError as exc:
        raise PipelineError(f"label {exc.args[0]!r} is not one of the classes {classes}") from exc
    return codes, classes


def find_audio(audio_dir, extensions=AUDIO_EXTENSIONS):
    """Audio files under ``audio_dir`` (recursive), sorted by relative path.

    A broken symbolic link with an audio extension is included: it is a
    track the user put there, and preprocessing reports it as skipped with
    the reason (``pipeline.audio`` names the missing target) instead of it
    vanishing from the report and the manifest.
    """
    root = Path(audio_dir)
    if not root.is_dir():
        raise PipelineError(f"audio directory not found: {os.fspath(audio_dir)!r}")
    files = [p for p in root.rglob("*") if p.suffix.lower() in extensions
             and (p.is_file() or (p.is_symlink() and not p.exists()))]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def labels_from_csv(csv_path, audio_dir=None):
    """Read a ``path,label`` CSV (header row required; an optional ``group`` column).

    Parameters
    ----------
    csv_path : str or os.PathLike
        CSV with columns ``path`` and ``label`` (and optionally ``group``),
        UTF-8 with or without a byte-order mark (as Excel saves it).
        Relative paths are resolved against ``audio_dir`` (default: the CSV's
        folder).
    audio_dir : str or os.PathLike or None

    Returns
    -------
    list of dict
        ``{'path': str, 'label': str, 'group': str or None}`` in file order.

    Raises
    ------
    PipelineError
        Missing file, missing ``path``/``label`` column (named), an empty label,
        a path listed twice (it could fall in two splits), or no rows.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise PipelineError(f"labels CSV not found: {os.fspath(csv_path)!r}")
    base = Path(audio_dir) if audio_dir is not None else csv_path.parent
    with open(csv_path, newline="", encoding="utf-8-sig") as f:  # -sig: a byte-order mark (Excel) is dropped
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        for col in ("path", "label"):
            if col not in fields:
                raise PipelineError(f"{csv_path}: needed column {col!r} is missing (columns: {fields})")
        rows, first = [], {}
        for line, row in enumerate(reader, start=2):
            label = (row.get("label") or "").strip()
            if not label:
                raise PipelineError(f"{csv_path}:{line}: empty label for path {row.get('path')!r}")
            p = Path((row.get("path") or "").strip())
            path = os.fspath(p if p.is_absolute() else base / p)
            seen = first.setdefault(os.path.normpath(os.path.abspath(path)), line)
            if seen != line:  # the same recording twice could land in train and test
                raise PipelineError(f"{csv_path}:{line}: path {row['path'].strip()!r} is already listed on line "
                                    f"{seen}; list each file once")
            rows.append({"path": path, "label": label, "group": (row.get("group") or "").strip() or None})
    if not rows:
        raise PipelineError(f"{csv_path}: no rows")
    return rows


def labels_from_regex(paths, label_regex, group_regex=None):
    """Labels (and groups) parsed from file names with regular expressions.

    Parameters
    ----------
    paths : sequence of path-like
        Files; the regexes are matched (``re.search``) against the base name.
    label_regex : str
        The named group ``label`` if present, else group 1, is the label;
        e.g. FSDD ``r'^(\\d)_'``.
    group_regex : str or None
        Its ``group`` named group or group 1 is the group (e.g. the FSDD
        speaker ``r'^\\d_([a-z]+)_'``); when None, a named group ``group`` in
        ``label_regex`` is used if present.

    Returns
    -------
    list of dict
        ``{'path', 'label', 'group'}`` for every file that matches.
    skipped : list of str
        Files whose name does not match (reported, not fatal).

    Raises
    ------
    PipelineError
        Invalid regex, a regex without a capture group, or no file matches.
    """
    try:
        rx = re.compile(label_regex)
        gx = re.compile(group_regex) if group_regex else None
    except re.error as exc:
        raise PipelineError(f"invalid regular expression: {exc}") from exc
    if rx.groups < 1:
        raise PipelineError(f"label regex {label_regex!r} needs a capture group (or (?P<label>...))")
    if gx is not None and gx.groups < 1:
        raise PipelineError(f"group regex {group_regex!r} needs a capture group")

    def _grab(m, name):
        return m.group(name) if name in m.re.groupindex else m.group(1)

    rows, skipped = [], []
    for p in paths:
        name = os.path.basename(os.fspath(p))
        m = rx.search(name)
        if m is None or not _grab(m, "label"):
            skipped.append(os.fspath(p))
            continue
        group = None
        if gx is not None:
            g = gx.search(name)
            if g is None:
                skipped.append(os.fspath(p))
                continue
            group = _grab(g, "group")
        elif "group" in rx.groupindex:
            group = m.group("group")
        rows.append({"path": os.fspath(p), "label": _grab(m, "label"), "group": group})
    if not rows:
        raise PipelineError(f"no file name matches the label regex {label_regex!r} "
                            f"({len(skipped)} files tried)")
    return rows, skipped


def unmatched_lines(manifest, limit=5) -> list:
    """Report lines for the files a folder's regexes did not match (``manifest['unmatched_files']``).

    ``['3 file(s) do not match the label / group regex and are not in the dataset: a.wav, b.wav, c.wav']``,
    at most ``limit`` names (then "... and N more"); [] when every file matched.
    """
    files = list((manifest or {}).get("unmatched_files") or [])
    if not files:
        return []
    names = ", ".join(os.path.basename(os.fspath(f)) for f in files[:limit])
    more = f" ... and {len(files) - limit} more (all in manifest.json 'unmatched_files')" if len(files) > limit else ""
    return [f"{len(files)} file(s) do not match the label / group regex and are not in the dataset: {names}{more}"]
