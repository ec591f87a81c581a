"""The dataset cache: its hash, its format, and its build (parallel, resumable).

Layout of a dataset directory (written by :func:`build_cache`)::

    manifest.json   every parameter, the parameter hash, sources, class names,
                    counts, bucket edges, and one record per track
                    (id, path, label, split, status ok/padded/skipped, reason)
    images.npy      uint8 [shape=(N, H, Wc)]: round(255 * mono image in [0, 1]) of
                    each track's whole clip (``track_clip``; ``Wc`` = the widest
                    clip's columns, at least the window width W), left-aligned,
                    zero-padded; rows = the tracks that were not skipped, in
                    item order; opened with ``np.load(..., mmap_mode='r')``
    widths.npy      int32 [shape=(N,)] valid columns of each row
    keys.npy        int64 [shape=(N,)] each track's key (seeds its crop windows)
    labels.npy      int64 [shape=(N,)] class codes (names in manifest 'classes')
    split.npy       '<U5' [shape=(N,)] 'train' | 'val' | 'test'
    ids.npy         '<U...' [shape=(N,)] track id (FMA) or relative path

What is stored: the mono image of the whole clip quantised to 8 bits (max
error 1/510). The ``crop_seconds`` windows are cut when batches are read
(:class:`pipeline.windows.Windows`: a new random window per epoch in
training, evenly spaced ones in evaluation), and the 'rgb' mode is the
colormap applied then, through a 256-entry table
(:func:`pipeline.spectrogram.colormap_lut`), so one cache serves mono and rgb
models and every crop rule: ``mode`` and ``colormap`` are therefore not part
of the cache hash, every other parameter is.

Staleness: the directory name chosen by :func:`prepare_fma` /
:func:`prepare_folder` ends in the first 12 hex digits of the parameter hash,
and :func:`build_cache` refuses a directory whose manifest (or unfinished work)
carries another hash, so a changed parameter always means a new cache.

Resume: while building, ``work/`` holds ``images.npy`` (a writable memmap) and
one ``chunks/NNNNNN.json`` done-marker per chunk of ``chunk_size`` tracks,
written (atomically) after the chunk's rows are flushed. A rerun after an
interruption skips every chunk that has a marker. The final files and then
``manifest.json`` (last, atomically) are written when all chunks are done.

Parallelism and hangs: ``workers`` processes (default ``os.cpu_count()``,
run by :class:`pipeline.workers.Supervisor`), each fed one track at a time
through its own pipe; the parent writes every
row, so no two processes write the same memory. A track that takes longer
than ``timeout`` seconds (a decoder stuck in C code) gets its worker killed
and replaced, and is recorded as skipped with reason 'timeout'; a worker that
dies (e.g. a segfaulting decoder) costs only its current track.

The cache is read by :class:`pipeline.dataset.Dataset`; :mod:`pipeline.prepare`
turns an FMA folder or a labelled folder into items and builds it here.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from . import cachefile, decoder_messages
from . import labels as labels_mod
from . import splits as splits_mod
from .clips import track_clip
from .errors import PipelineError
from .spectrogram import SpectrogramConfig, quantize
from .workers import Supervisor, die_with_parent

__all__ = ["build_cache", "cache_hash", "format_report", "FORMAT_VERSION"]


#: Version of the cache layout and of the transform that fills it. 3: the rows are the mono image
#: of each track's whole clip (up to ``clip_seconds``), the crop windows cut at batch time (format 2
#: stored one seeded crop per track; format 1 the red channel of the colormapped image for rgb
#: runs). Any other version is never reused: it is rebuilt.
FORMAT_VERSION = 3
_READ_TIME_FIELDS = ("mode", "colormap")  # applied when batches are read, not cached


#: what changed in the last format bump (quoted when an old cache is met)
_FORMAT_CHANGE = ("format 3 caches each track's whole clip and cuts a new crop window per epoch; format 2 "
                  "stored one fixed crop, format 1 the red channel of the colormapped image")


# ---------------------------------------------------------------- helpers

def _note_outdated(out: Path, progress=True) -> list:
    """Caches beside ``out`` with its name but another format version: say they are not reused.

    Returns the outdated directories found (``out`` itself is never one: its
    name carries the hash of the current format version).
    """
    stem = out.name.rsplit("-", 1)[0]
    old = []
    if out.exists() or not out.parent.is_dir():
        return old
    for d in sorted(out.parent.glob(f"{stem}-*")):
        try:
            with open(d / "manifest.json") as f:
                version = json.load(f).get("format_version")
        except (OSError, ValueError):
            continue
        if version != FORMAT_VERSION:
            old.append((d, version))
    if old and progress:
        print(f"note: {len(old)} dataset cache(s) of another format are not reused (e.g. {old[0][0]}, format "
              f"{old[0][1]}; {_FORMAT_CHANGE}): building {out.name} (format {FORMAT_VERSION}) afresh; "
              f"the old one(s) can be deleted", file=sys.stderr)
    return [d for d, _ in old]


def _cache_params(items, config: SpectrogramConfig, classes, seed):
    cfg = {k: v for k, v in config.to_dict().items() if k not in _READ_TIME_FIELDS}
    rows = [[str(it["path"]), int(it["key"]), int(it["label"]), str(it["split"])] for it in items]
    rows = [r + [it["stat"]] if "stat" in it else r for r, it in zip(rows, items)]  # stat: evaluate --audio-dir
    return {"format_version": FORMAT_VERSION, "config": cfg, "seed": int(seed), "classes": [str(c) for c in classes],
            "items_sha256": hashlib.sha256(json.dumps(rows).encode()).hexdigest(), "n_items": len(rows)}


def cache_hash(items, config: SpectrogramConfig, classes, seed=0) -> str:
    """SHA-256 (hex) of everything a cache depends on.

    Covers every :class:`SpectrogramConfig` field except ``mode`` and
    ``colormap`` (applied at read time), the seed, the class names and every
    item's path, crop key, label and split (and ``stat``, [size, mtime_ns], for evaluate --audio-dir).
    """
    blob = json.dumps(_cache_params(items, config, classes, seed), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _process_one(path, key, config: SpectrogramConfig, seed):
    """One track -> (uint8 (H, columns) clip image or None, info dict). Never raises.

    ``key`` and ``seed`` no longer choose anything here (the clip is the
    centred ``n_clip`` samples; windows are drawn at batch time); they stay
    in the task for the report.

    The decoder's stderr lines (libmpg123 warnings, captured by
    :mod:`pipeline.decoder_messages` around each decode) are dropped for a good track and
    appended to a skipped track's reason.
    """
    with decoder_messages.collect_decoder_messages() as messages:
        try:
            img, info = track_clip(path, config)
            return quantize(img), info
        except PipelineError as exc:
            reason = str(exc)
        except Exception as exc:  # an unexpected decoder failure must not stop the run
            reason = f"{type(exc).__name__}: {exc}"
    note = decoder_messages.format_decoder_messages(messages)
    if note and "decoder messages:" not in reason:
        reason += f"; {note}"
    return None, {"status": "skipped", "reason": reason}


def _worker_main(conn, config_dict, seed):
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle (it stops us)
    die_with_parent()  # a killed parent (kill -9) must not leave us waiting under PID 1
    config = SpectrogramConfig.from_dict(config_dict)
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        i, path, key = task
        img, info = _process_one(path, key, config, seed)
        conn.send((i, img, info))


def _failed(task, failure) -> tuple:
    """The result of a track whose worker died or hung (:class:`pipeline.workers.Supervisor`'s ``on_failure``)."""
    i, path, _ = task
    if failure.kind == "died":
        reason = f"decoder process died (exit code {failure.exitcode}) on {path!r}"
    else:
        reason = f"timeout after {failure.timeout:g} s decoding {path!r}"
    return (i, None, {"status": "skipped", "reason": reason})


def format_report(manifest, limit=20) -> str:
    """Human-readable summary: counts, then skipped and padded tracks with their reasons.

    At most ``limit`` tracks of each status are listed (None: all); the rest
    are counted, and every one is in ``manifest.json``.
    """
    tracks = manifest["tracks"]
    lines = [f"dataset {manifest.get('name', '')}: {manifest['n_images']} images of {len(tracks)} tracks "
             f"({manifest['status_counts']})"]
    for status in ("skipped", "padded"):
        hit = [t for t in tracks if t["status"] == status]
        for t in hit[:limit]:
            lines.append(f"  {status:7s} {t['id']} ({t['path']}): {t['reason']}")
        if limit is not None and len(hit) > limit:
            lines.append(f"  ... and {len(hit) - limit} more {status} (all listed in manifest.json)")
    lines += labels_mod.unmatched_lines(manifest)
    return "\n".join(lines)


# ---------------------------------------------------------------- build

def build_cache(out_dir, items, config: SpectrogramConfig, classes, seed=0, workers=None,
                timeout=120.0, chunk_size=64, progress=True, extra=None, stop_after_chunks=None):
    """Preprocess ``items`` into a dataset directory, holding its lock (:class:`pipeline.cachefile.DirLock`).

    A second build of the same directory waits for the first (saying so)
    and then reuses its finished cache. A finished cache whose files do not
    match its manifest (truncated, garbled) is reported and rebuilt. Every
    parameter, the return value and the errors are those of
    :func:`_build_cache` below.
    """
    with cachefile.DirLock(out_dir):
        return _build_cache(out_dir, items, config, classes, seed=seed, workers=workers, timeout=timeout,
                            chunk_size=chunk_size, progress=progress, extra=extra,
                            stop_after_chunks=stop_after_chunks)


def _build_cache(out_dir, items, config: SpectrogramConfig, classes, seed=0, workers=None,
                 timeout=120.0, chunk_size=64, progress=True, extra=None, stop_after_chunks=None):
    """Preprocess ``items`` into a dataset directory (once; resumable).

    Parameters
    ----------
    out_dir : str or os.PathLike
        Dataset directory (created). Reusing it with other parameters raises.
    items : list of dict
        One per track: ``path`` (audio file), ``key`` (int, seeds the crop:
        FMA track id or CRC32 of the relative path), ``label`` (int code into
        ``classes``), ``split`` ('train'|'val'|'test'), ``id`` (str, shown in
        reports; default the path).
    config : SpectrogramConfig
    classes : list of str
        Class names; ``label`` indexes them.
    seed : int
        Crop seed (crop of a track depends on ``(seed, key)``).
    workers : int or None
        Processes (None: ``os.cpu_count()``); 0 runs in this process (no
        timeout guard, for debugging).
    timeout : float
        Seconds one track may take in a worker before it is killed and the
        track skipped.
    chunk_size : int
        Tracks per done-marker (resume granularity).
    progress : bool
        tqdm progress bar and the final report on stderr.
    extra : dict or None
        Merged into the manifest (source paths, bucket edges, metadata report).
    stop_after_chunks : int or None
        Stop (without finalising) after this many chunks complete in this
        call; returns None. For tests of resume and for splitting work.

    Returns
    -------
    dict or None
        The manifest (also in ``out_dir/manifest.json``), None when stopped early.

    Raises
    ------
    PipelineError
        Bad items, ``out_dir`` holding a cache of other parameters, every
        track skipped, or a file that cannot be written (a full disk: the
        message names the file and the space needed; finished chunks are kept).
    """
    from numpy.lib.format import open_memmap

    out = Path(out_dir)
    items = [dict(it) for it in items]
    if not items:
        raise PipelineError("build_cache: no items to preprocess")
    for k, it in enumerate(items):
        for field in ("path", "key", "label", "split"):
            if field not in it:
                raise PipelineError(f"build_cache: item {k} has no {field!r} field: {it}")
        if not 0 <= int(it["label"]) < len(classes):
            raise PipelineError(f"build_cache: item {k} label {it['label']} not in 0..{len(classes) - 1}")
        if it["split"] not in splits_mod.SPLITS:
            raise PipelineError(f"build_cache: item {k} split {it['split']!r} not in {splits_mod.SPLITS}")
        it.setdefault("id", str(it["path"]))
    params = _cache_params(items, config, classes, seed)
    phash = cache_hash(items, config, classes, seed)
    manifest_path = out / "manifest.json"
    if manifest_path.is_file():
        try:
            manifest = cachefile.read_manifest(manifest_path)
            if manifest.get("param_hash") == phash:
                cachefile.check_files(out, manifest)
        except cachefile.DamagedCache as exc:  # rebuild it (the work/ folder, if any, is reused)
            print(f"warning: {exc}; rebuilding the cache {out}", file=sys.stderr)
            cachefile.discard(out)
        else:
            if manifest.get("param_hash") != phash:
                raise PipelineError(
                    f"{out} holds a cache built with other parameters (hash {manifest.get('param_hash', '?')[:12]}"
                    f" != {phash[:12]}); use a new directory (prepare_* names them by hash)")
            return manifest

    work = out / "work"
    (work / "chunks").mkdir(parents=True, exist_ok=True)
    pfile = work / "params.json"
    if pfile.is_file():
        with open(pfile) as f:
            old = json.load(f)
        if old.get("param_hash") != phash:
            raise PipelineError(f"{work} holds unfinished work with other parameters "
                                f"(hash {old.get('param_hash', '?')[:12]} != {phash[:12]}); delete it or "
                                f"use another directory")
    else:
        cachefile.write_json_atomic(pfile, {"param_hash": phash, **params})
    n, H, W = len(items), config.height, config.clip_width  # one row per track, as wide as the longest clip
    img_path = work / "images.npy"
    images = None
    if img_path.is_file():
        try:  # unfinished work: reuse it only when the file is whole
            cachefile.check_files(work, {"n_images": n}, names=("images.npy",))
            images = open_memmap(img_path, mode="r+")
        except cachefile.DamagedCache as exc:
            print(f"warning: {exc}; starting the unfinished work over", file=sys.stderr)
            shutil.rmtree(work / "chunks", ignore_errors=True)
            (work / "chunks").mkdir(parents=True, exist_ok=True)
    if images is None:
        images = cachefile.create_npy(img_path, (n, H, W), np.uint8)  # space allocated: no SIGBUS on a full disk
    if images.shape != (n, H, W):
        raise PipelineError(f"{img_path} has shape {images.shape}, expected {(n, H, W)}")

    chunks = [range(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]
    status = [None] * n
    done_chunks = set()
    for c, rng_ in enumerate(chunks):
        marker = work / "chunks" / f"{c:06d}.json"
        if marker.is_file():
            with open(marker) as f:
                recs = json.load(f)
            for i, rec in zip(rng_, recs):
                status[i] = rec
            done_chunks.add(c)
    pending = [(i, os.fspath(items[i]["path"]), int(items[i]["key"]))
               for c, r in enumerate(chunks) if c not in done_chunks for i in r]
    remaining = {c: len(chunks[c]) for c in range(len(chunks)) if c not in done_chunks}

    if workers is None:
        workers = os.cpu_count() or 1
    workers = max(0, min(int(workers), len(pending)))
    if workers == 0:
        results = ((i, *_process_one(p, k, config, seed)) for i, p, k in pending)
        sup = None
    else:
        sup = Supervisor(workers, _worker_main, (config.to_dict(), seed), timeout, on_failure=_failed)
        results = sup.run(pending)

    from tqdm import tqdm

    bar = tqdm(total=n, initial=n - len(pending), desc="preprocess", unit="track", disable=not progress,
               file=sys.stderr)
    t_start = time.perf_counter()
    finished_now = 0
    stopped = False
    try:
        for i, img, info in results:
            if img is not None:
                images[i, :, :img.shape[1]] = img
                images[i, :, img.shape[1]:] = 0
            status[i] = info
            bar.update(1)
            c = i // chunk_size
            remaining[c] -= 1
            if remaining[c] == 0:
                images.flush()
                cachefile.write_json_atomic(work / "chunks" / f"{c:06d}.json", [status[j] for j in chunks[c]])
                del remaining[c]
                finished_now += 1
                if stop_after_chunks is not None and finished_now >= stop_after_chunks:
                    stopped = True
                    break
    finally:
        if sup is not None:  # also on an error (e.g. a full disk): stop the workers now
            results.close()
        bar.close()
    if stopped and remaining:
        images.flush()
        del images
        return None
    elapsed = time.perf_counter() - t_start
    manifest = _finalise(out, items, status, images, config, classes, params, phash, extra,
                         {"preprocess_seconds": round(elapsed, 3), "computed_this_run": len(pending),
                          "workers": workers})
    del images
    shutil.rmtree(work, ignore_errors=True)
    if progress:
        print(format_report(manifest), file=sys.stderr)
    return manifest


def _finalise(out, items, status, images, config, classes, params, phash, extra, run_info) -> dict:
    """Compact the kept rows of ``work/images.npy`` into the final arrays, then write the manifest (last)."""
    n, H = len(items), config.height
    keep = np.array([s["status"] != "skipped" for s in status], dtype=bool)
    if not keep.any():
        raise PipelineError(f"every one of the {n} tracks was skipped; first reason: {status[0]['reason']}")
    rows = np.flatnonzero(keep)
    widths = np.array([int(status[i]["columns"]) for i in rows], dtype=np.int32)
    w_store = max(int(widths.max()), config.width)  # no wider than the widest clip kept
    final = cachefile.create_npy(out / "images.npy.tmp", (len(rows), H, w_store), np.uint8)
    for s in range(0, len(rows), 1024):
        final[s:s + 1024] = images[rows[s:s + 1024], :, :w_store]
    final.flush()
    del final, images
    cachefile.save_npy(out / "widths.npy", widths)
    cachefile.save_npy(out / "keys.npy", np.array([int(items[i]["key"]) for i in rows], dtype=np.int64))
    cachefile.save_npy(out / "labels.npy", np.array([int(items[i]["label"]) for i in rows], dtype=np.int64))
    cachefile.save_npy(out / "split.npy", np.array([items[i]["split"] for i in rows], dtype="<U5"))
    cachefile.save_npy(out / "ids.npy", np.array([str(items[i]["id"]) for i in rows], dtype=str))
    os.replace(out / "images.npy.tmp", out / "images.npy")

    tracks = []
    for i, it in enumerate(items):
        rec = {"id": str(it["id"]), "path": os.fspath(it["path"]), "label": classes[int(it["label"])],
               "split": it["split"], **status[i]}
        if it.get("group") is not None:
            rec["group"] = str(it["group"])
        tracks.append(rec)
    labels_kept = np.array([int(items[i]["label"]) for i in rows])
    split_kept = np.array([items[i]["split"] for i in rows])
    status_counts = {s: int(sum(t["status"] == s for t in tracks)) for s in ("ok", "padded", "skipped")}
    import soundfile

    manifest = {
        "name": out.name,
        "param_hash": phash,
        **params,
        "config": config.to_dict(),
        "storage": {"images": "uint8 (N, H, Wc) = rint(255 * mono image of the whole clip in [0, 1]), "
                              "left-aligned, zero-padded to the widest clip; memmap (np.load mmap_mode='r'); "
                              "crop windows cut and rgb colormap LUT applied at read time",
                    "widths": "int32 (N,) valid columns per row", "keys": "int64 (N,) crop-window seed keys",
                    "labels": "int64 (N,)", "split": "<U5 (N,)", "ids": "str (N,)"},
        "n_images": int(len(rows)),
        "status_counts": status_counts,
        "class_counts": splits_mod.split_counts(split_kept, labels_kept, len(classes)),
        **run_info,
        "versions": {"numpy": np.__version__, "soundfile": soundfile.__version__,
                     "libsndfile": soundfile.__libsndfile_version__, "python": sys.version.split()[0]},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
        "files": cachefile.describe_files(out),
        "tracks": tracks,
    }
    cachefile.write_json_atomic(out / "manifest.json", manifest)
    return manifest
