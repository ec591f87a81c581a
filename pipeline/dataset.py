"""Cached datasets: build once (parallel, resumable), then stream batches.

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
(:class:`pipeline.spectrogram.Windows`: a new random window per epoch in
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

Parallelism and hangs: ``workers`` processes (default ``os.cpu_count()``),
each fed one track at a time through its own pipe; the parent writes every
row, so no two processes write the same memory. A track that takes longer
than ``timeout`` seconds (a decoder stuck in C code) gets its worker killed
and replaced, and is recorded as skipped with reason 'timeout'; a worker that
dies (e.g. a segfaulting decoder) costs only its current track.
"""
from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np

from . import audio as audio_mod, cachefile, fma, labels as labels_mod, splits as splits_mod
from .errors import PipelineError
from .spectrogram import SpectrogramConfig, Windows, cut_windows, model_input, quantize, track_clip, window_starts
from .workers import die_with_parent

__all__ = ["build_cache", "Dataset", "prepare_fma", "prepare_folder", "cache_hash", "format_report",
           "FORMAT_VERSION"]

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


def _atomic_write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with cachefile.disk_errors(path):
            with open(tmp, "w") as f:
                json.dump(obj, f, indent=1, default=str)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _cache_params(items, config: SpectrogramConfig, classes, seed):
    cfg = {k: v for k, v in config.to_dict().items() if k not in _READ_TIME_FIELDS}
    rows = [[str(it["path"]), int(it["key"]), int(it["label"]), str(it["split"])] for it in items]
    items_hash = hashlib.sha256(json.dumps(rows).encode()).hexdigest()
    return {"format_version": FORMAT_VERSION, "config": cfg, "seed": int(seed),
            "classes": [str(c) for c in classes], "items_sha256": items_hash, "n_items": len(rows)}


def cache_hash(items, config: SpectrogramConfig, classes, seed=0) -> str:
    """SHA-256 (hex) of everything a cache depends on.

    Covers every :class:`SpectrogramConfig` field except ``mode`` and
    ``colormap`` (applied at read time), the seed, the class names and every
    item's path, crop key, label and split.
    """
    blob = json.dumps(_cache_params(items, config, classes, seed), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _process_one(path, key, config: SpectrogramConfig, seed):
    """One track -> (uint8 (H, columns) clip image or None, info dict). Never raises.

    ``key`` and ``seed`` no longer choose anything here (the clip is the
    centred ``n_clip`` samples; windows are drawn at batch time); they stay
    in the task for the report.

    The decoder's stderr lines (libmpg123 warnings, captured by
    :mod:`pipeline.audio` around each decode) are dropped for a good track and
    appended to a skipped track's reason.
    """
    with audio_mod.collect_decoder_messages() as messages:
        try:
            img, info = track_clip(path, config)
            return quantize(img), info
        except PipelineError as exc:
            reason = str(exc)
        except Exception as exc:  # an unexpected decoder failure must not stop the run
            reason = f"{type(exc).__name__}: {exc}"
    note = audio_mod.format_decoder_messages(messages)
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


class _Supervisor:
    """Worker processes, one task each at a time, killed and replaced on timeout."""

    def __init__(self, n, config, seed, timeout):
        import multiprocessing as mp

        methods = mp.get_all_start_methods()
        self.ctx = mp.get_context("fork" if "fork" in methods else "spawn")
        self.config_dict = config.to_dict()
        self.seed = seed
        self.timeout = timeout
        self.workers = [self._start() for _ in range(n)]

    def _start(self):
        parent, child = self.ctx.Pipe(duplex=True)
        p = self.ctx.Process(target=_worker_main, args=(child, self.config_dict, self.seed), daemon=True)
        p.start()
        child.close()
        return {"proc": p, "conn": parent, "task": None, "t0": 0.0}

    def _replace(self, w):
        try:
            w["proc"].kill()
        except Exception:
            pass
        w["proc"].join(5)
        w["conn"].close()
        self.workers[self.workers.index(w)] = self._start()

    def run(self, tasks):
        """Yield ``(i, img, info)`` for every ``(i, path, key)`` in ``tasks``."""
        from multiprocessing.connection import wait

        todo = list(reversed(tasks))
        busy = 0
        try:
            while todo or busy:
                for w in self.workers:
                    if w["task"] is None and todo:
                        task = todo.pop()
                        try:
                            w["conn"].send(task)
                        except (BrokenPipeError, OSError):  # worker gone: replace it, retry later
                            todo.append(task)
                            self._replace(w)
                            continue
                        w["task"], w["t0"] = task, time.monotonic()
                        busy += 1
                ready = wait([w["conn"] for w in self.workers if w["task"] is not None], timeout=0.25)
                for w in list(self.workers):
                    if w["task"] is None:
                        continue
                    i, path, _ = w["task"]
                    if w["conn"] in ready:
                        try:
                            result = w["conn"].recv()
                        except (EOFError, OSError):
                            code = w["proc"].exitcode
                            result = (i, None, {"status": "skipped",
                                                "reason": f"decoder process died (exit code {code}) on {path!r}"})
                            w["task"] = None
                            busy -= 1
                            self._replace(w)
                            yield result
                            continue
                        w["task"] = None
                        busy -= 1
                        yield result
                    elif time.monotonic() - w["t0"] > self.timeout:
                        w["task"] = None
                        busy -= 1
                        self._replace(w)
                        yield (i, None, {"status": "skipped",
                                         "reason": f"timeout after {self.timeout:g} s decoding {path!r}"})
        finally:
            self.close()

    def close(self):
        for w in self.workers:
            try:
                w["conn"].send(None)
            except Exception:
                pass
        for w in self.workers:
            w["proc"].join(2)
            if w["proc"].is_alive():
                w["proc"].kill()
                w["proc"].join()
            w["conn"].close()
        self.workers = []


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
        _atomic_write_json(pfile, {"param_hash": phash, **params})
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
        sup = _Supervisor(workers, config, seed, timeout)
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
                _atomic_write_json(work / "chunks" / f"{c:06d}.json", [status[j] for j in chunks[c]])
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

    # ---- finalise: compact kept rows, write arrays, manifest last
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
        "preprocess_seconds": round(elapsed, 3),
        "computed_this_run": len(pending),
        "workers": workers,
        "versions": {"numpy": np.__version__, "soundfile": soundfile.__version__,
                     "libsndfile": soundfile.__libsndfile_version__, "python": sys.version.split()[0]},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
        "files": cachefile.describe_files(out),
        "tracks": tracks,
    }
    _atomic_write_json(manifest_path, manifest)
    shutil.rmtree(work, ignore_errors=True)
    if progress:
        print(format_report(manifest), file=sys.stderr)
    return manifest


# ---------------------------------------------------------------- read

class Dataset:
    """A cached dataset directory, opened read-only.

    Parameters
    ----------
    path : str or os.PathLike
        Directory written by :func:`build_cache`.

    Attributes
    ----------
    images : np.memmap [shape=(N, H, Wc), dtype=uint8]
        Quantised mono images of the whole clips (``rint(255 * x)``),
        left-aligned in rows ``Wc >= W`` wide, memory-mapped.
    widths : np.ndarray [shape=(N,), dtype=int32]
        Valid columns of each row (the clip's image width).
    keys : np.ndarray [shape=(N,), dtype=int64]
        Per-track keys that seed the 'random' / 'fixed' crop windows.
    labels : np.ndarray [shape=(N,), dtype=int64]
    split : np.ndarray [shape=(N,), dtype='<U5']
    ids : np.ndarray [shape=(N,), dtype=str]
    classes : list of str
    manifest : dict
    config : SpectrogramConfig
    wait_seconds : float
        Total time the consumer of :meth:`batches` waited for data (the
        CLI reports it as a share of the epoch time).

    Raises
    ------
    PipelineError
        No ``manifest.json`` (unfinished or not a dataset) or inconsistent arrays.
    """

    def __init__(self, path):
        self.path = Path(path)
        mpath = self.path / "manifest.json"
        if not mpath.is_file():
            raise PipelineError(f"{self.path} is not a finished dataset (no manifest.json); run preprocess")
        try:  # every file against the manifest, before anything is mapped
            self.manifest = cachefile.read_manifest(mpath)
        except cachefile.DamagedCache as exc:
            raise cachefile.DamagedCache(f"{exc}; run the same preprocess (or train) command again to "
                                         f"rebuild the cache") from exc
        version = self.manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise PipelineError(
                f"{self.path} is a dataset cache of format {version}, this code reads format {FORMAT_VERSION} "
                f"({_FORMAT_CHANGE}); an old cache is never reused: rebuild it by running `python cli.py "
                f"preprocess` (or train) with the audio flags it was made from, then delete it")
        try:
            cachefile.check_files(self.path, self.manifest)
        except cachefile.DamagedCache as exc:
            raise cachefile.DamagedCache(f"{exc}; run the same preprocess (or train) command again to "
                                         f"rebuild the cache") from exc
        self.images = np.load(self.path / "images.npy", mmap_mode="r")
        self.widths = np.load(self.path / "widths.npy")
        self.keys = np.load(self.path / "keys.npy")
        self.labels = np.load(self.path / "labels.npy")
        self.split = np.load(self.path / "split.npy")
        self.ids = np.load(self.path / "ids.npy")
        self.classes = list(self.manifest["classes"])
        self.config = SpectrogramConfig.from_dict(self.manifest["config"])
        n = len(self.labels)
        if (self.images.ndim != 3 or self.images.shape[:2] != (n, self.config.height)
                or self.images.shape[2] < self.config.width or len(self.split) != n
                or self.widths.shape != (n,) or self.keys.shape != (n,)
                or (n and (self.widths.min() < 1 or self.widths.max() > self.images.shape[2]))):
            raise PipelineError(f"{self.path}: images {self.images.shape}, widths {self.widths.shape}, keys "
                                f"{self.keys.shape}, labels ({n},), split ({len(self.split)},) disagree")
        self.wait_seconds = 0.0

    def __len__(self):
        return len(self.labels)

    def _mode(self, mode):
        mode = self.config.mode if mode is None else mode
        if mode not in ("mono", "rgb"):
            raise PipelineError(f"mode must be 'mono' or 'rgb', got {mode!r}")
        return mode

    def n_channels(self, mode=None) -> int:
        """1 for 'mono', 3 for 'rgb' (None: the config's mode)."""
        return 1 if self._mode(mode) == "mono" else 3

    def image_shape(self, mode=None) -> tuple:
        """``(C, H, W)`` of a batch element for ``mode``."""
        return (self.n_channels(mode), self.config.height, self.config.width)

    def indices(self, split) -> np.ndarray:
        """Row indices (int64, ascending) of ``split`` ('train'|'val'|'test'|'all')."""
        if split == "all":
            return np.arange(len(self), dtype=np.int64)
        if split not in splits_mod.SPLITS:
            raise PipelineError(f"split must be one of {splits_mod.SPLITS} or 'all', got {split!r}")
        return np.flatnonzero(self.split == split).astype(np.int64)

    def class_counts(self, split="train") -> np.ndarray:
        """Images per class in ``split`` (int64 (n_classes,))."""
        return np.bincount(self.labels[self.indices(split)], minlength=len(self.classes))

    def levels(self, rows, windows: Windows | None = None) -> np.ndarray:
        """The crop windows of ``rows`` as uint8 levels: the read-time half up to the colormap.

        Parameters
        ----------
        rows : array_like [shape=(N,), int]
        windows : pipeline.spectrogram.Windows or None
            Which windows (None: ``Windows('even', n=1)``, the centre one).

        Returns
        -------
        np.ndarray [shape=(N * windows.n, H, W), dtype=uint8]
            Window ``k`` of row ``i`` at index ``i * n + k``
            (:func:`pipeline.spectrogram.window_starts`, :func:`~pipeline.spectrogram.cut_windows`).
        """
        windows = Windows() if windows is None else windows
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        widths = self.widths[rows]
        starts = window_starts(widths, self.config.width, windows, self.keys[rows]).reshape(-1)
        rep = np.repeat(rows, windows.n)
        return cut_windows([self.images[r] for r in rep], np.repeat(widths, windows.n), starts,
                           self.config.width)

    def decode(self, rows, mode=None, windows: Windows | None = None) -> np.ndarray:
        """Model input of ``rows``: float32 ``(N * windows.n, C, H, W)`` in [0, 1].

        :meth:`levels` then :func:`pipeline.spectrogram.model_input` (mode None: the config's).
        """
        return model_input(self.levels(rows, windows), self._mode(mode), self.config.colormap)

    def batches(self, split="train", batch_size=32, shuffle=True, seed=0, mode=None, drop_last=False,
                prefetch=2, windows: Windows | None = None, levels: bool = False):
        """Yield ``(x, y)`` batches, the next one prepared in a background thread.

        Parameters
        ----------
        split : {'train', 'val', 'test', 'all'}
        batch_size : int > 0
        shuffle : bool
            Order rows by ``np.random.default_rng(seed).permutation``; pass
            ``seed + epoch`` for a new order each epoch.
        seed : int
        mode : {'mono', 'rgb'} or None
            Channels: 1 (mono) or 3 (colormap); None uses the config's.
        drop_last : bool
            Drop a final partial batch.
        prefetch : int >= 0
            Batches prepared ahead (0: synchronous).
        windows : pipeline.spectrogram.Windows or None
            The crop windows cut from each clip (None: the centre one).
            Training passes ``Windows('random', seed, epoch)``; evaluation
            ``Windows('even', n=K)``, which gives ``K`` consecutive images per
            row (``y`` repeated): ``batch_size`` counts rows, not images.
        levels : bool
            Yield the uint8 levels ``(N, H, W)`` instead of the decoded model
            input (batch-time augmentation decodes them on the device).

        Yields
        ------
        x : np.ndarray [shape=(N * n, C, H, W), dtype=float32] in [0, 1]
            (uint8 ``(N * n, H, W)`` with ``levels=True``)
        y : np.ndarray [shape=(N * n,), dtype=int64]

        Raises
        ------
        PipelineError
            Bad split, mode or batch size, or an empty split.
        """
        if int(batch_size) != batch_size or batch_size < 1:
            raise PipelineError(f"batch_size must be a positive integer, got {batch_size!r}")
        mode = self._mode(mode)
        idx = self.indices(split)
        if len(idx) == 0:
            raise PipelineError(f"split {split!r} of {self.path} is empty")
        if shuffle:
            idx = idx[np.random.default_rng(seed).permutation(len(idx))]
        stops = list(range(0, len(idx), int(batch_size)))
        if drop_last and len(idx) % batch_size:
            stops = stops[:-1]

        windows = Windows() if windows is None else windows

        def make(s):
            rows = idx[s:s + batch_size]
            q = self.levels(rows, windows)
            y = np.repeat(self.labels[rows], windows.n)
            return (q if levels else model_input(q, mode, self.config.colormap)), y

        if prefetch <= 0:
            for s in stops:
                yield make(s)
            return
        q = queue.Queue(maxsize=int(prefetch))
        stop = threading.Event()

        def put(item):
            """Put unless the consumer has left; True when the item was queued."""
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def producer():
            try:
                for s in stops:
                    if not put(make(s)):
                        return
                put(None)
            except BaseException as exc:  # hand the error to the consumer
                put(exc)

        t = threading.Thread(target=producer, daemon=True, name="hitcnn-batches")
        t.start()
        try:
            while True:
                t0 = time.perf_counter()
                item = q.get()
                self.wait_seconds += time.perf_counter() - t0
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            t.join()


# ---------------------------------------------------------------- entry points

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
        As :func:`build_cache`.

    Returns
    -------
    pathlib.Path
        The dataset directory (open it with :class:`Dataset`).

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
        As :func:`prepare_fma` / :func:`build_cache`.
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
