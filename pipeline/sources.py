"""Data sources: which data the command-line flags name, and the dataset cache built from it.

The flags themselves are defined by ``cli_args.add_data_args``; this module reads
them from the parsed namespace (the attributes in :data:`DATA_FLAGS`):

- :func:`data_source` -- the source the flags name (``kind`` = demo | cache |
  fma | csv | regex), its paths checked;
- :func:`spectrogram_config` -- the :class:`~pipeline.spectrogram.SpectrogramConfig`
  of the flags;
- :func:`prepare_data` -- build (or reuse) the dataset cache of the source
  through :mod:`pipeline.prepare` (the demo's audio first, through
  :mod:`pipeline.synth`) and open it as a :class:`~pipeline.dataset.Dataset`;
- :func:`folder_dataset` -- new labelled audio preprocessed with a run's
  settings (``evaluate --audio-dir``);
- :func:`status_report` -- the skipped and padded tracks of a dataset, printed once.

A bad source raises :class:`DataSourceError` (a :class:`~pipeline.errors.PipelineError`
whose ``show_layout`` says whether the expected dataset layouts should be
printed after the message); Ctrl-C while a cache is built raises
:class:`PrepInterrupted` (the finished tracks are kept).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from .errors import PipelineError

__all__ = ["DATA_FLAGS", "DataSourceError", "PrepInterrupted", "spectrogram_config", "data_source", "cache_root",
           "data_args", "prepare_data", "folder_dataset", "manifest_hash", "status_report", "run_dataset"]

#: The namespace attributes the data source is resolved from (the ``dest`` of each flag of
#: ``cli_args.add_data_args``, in its order): :func:`data_args` records them in a run's config.json so
#: that a deleted cache can be rebuilt from them (tests/test_cli.py checks the two lists agree).
DATA_FLAGS = ("data", "audio_dir", "metadata", "labels", "label_regex", "group_regex", "target", "bucket_edges",
              "subset", "split", "split_seed", "cache_dir", "workers", "quiet", "sr", "crop_seconds",
              "clip_seconds", "n_fft", "hop_length", "spectrogram", "n_mels", "height", "width", "colormap",
              "image_norm", "demo_tracks", "demo_seconds")


class DataSourceError(PipelineError):
    """Missing paths or contradicting data flags; ``show_layout``: print the expected dataset layouts too."""

    def __init__(self, msg, layout=False):
        super().__init__(msg)
        self.show_layout = layout


class PrepInterrupted(KeyboardInterrupt):
    """Ctrl-C while a dataset cache was being built (the finished chunks of tracks are kept)."""


def spectrogram_config(args, mode: str):
    """``pipeline.spectrogram.SpectrogramConfig`` from the flags."""
    from .spectrogram import SpectrogramConfig

    return SpectrogramConfig(sr=args.sr, crop_seconds=args.crop_seconds, n_fft=args.n_fft,
                             hop_length=args.hop_length, spectrogram=args.spectrogram, n_mels=args.n_mels,
                             mode=mode, height=args.height, width=args.width, colormap=args.colormap,
                             clip_seconds=getattr(args, "clip_seconds", None),
                             norm=getattr(args, "image_norm", None) or "minmax")


def data_source(args) -> dict:
    """Which data the flags name (``kind`` = demo | cache | fma | csv | regex), validated.

    Raises
    ------
    DataSourceError
        Missing paths or contradicting flags (printed with the expected layout).
    """
    if args.data:
        d = Path(args.data)
        if not (d / "manifest.json").is_file():
            raise DataSourceError(f"--data {args.data}: not a dataset cache (no manifest.json there)", layout=True)
        return dict(kind="cache", data=str(d.resolve()))
    if not args.audio_dir:
        if args.metadata or args.labels or args.label_regex:
            raise DataSourceError("--metadata / --labels / --label-regex need --audio-dir", layout=True)
        return dict(kind="demo")
    ad = Path(args.audio_dir)
    if not ad.is_dir():
        raise DataSourceError(f"--audio-dir {args.audio_dir}: no such directory", layout=True)
    picked = [f for f in ("metadata", "labels", "label_regex") if getattr(args, f)]
    if len(picked) != 1:
        raise DataSourceError("--audio-dir needs exactly one of --metadata (FMA), --labels (CSV) or --label-regex "
                              f"(file names); got {picked or 'none'}", layout=True)
    if args.metadata:
        if not Path(args.metadata).is_file():
            raise DataSourceError(f"--metadata {args.metadata}: no such file", layout=True)
        _fma_dir_hint(ad)
        return dict(kind="fma", audio_dir=str(ad.resolve()), metadata=str(Path(args.metadata).resolve()))
    if args.labels:
        if not Path(args.labels).is_file():
            raise DataSourceError(f"--labels {args.labels}: no such file", layout=True)
        return dict(kind="csv", audio_dir=str(ad.resolve()), labels=str(Path(args.labels).resolve()))
    return dict(kind="regex", audio_dir=str(ad.resolve()), label_regex=args.label_regex,
                group_regex=args.group_regex)


def _fma_dir_hint(ad: Path) -> None:
    """DataSourceError when ``ad`` is the folder *above* FMA's audio (it holds fma_small/ but no 000/ ... folders)."""
    try:
        subs = [p for p in ad.iterdir() if p.is_dir()]
    except OSError:
        return
    if any(p.name.isdigit() and len(p.name) == 3 for p in subs):
        return
    inner = sorted(p for p in subs if p.name.startswith("fma_") and p.name != "fma_metadata")
    if inner:
        raise DataSourceError(f"--audio-dir {ad}: this folder holds {', '.join(p.name for p in inner)}/ but no "
                              f"000/ ... 155/ audio folders; pass --audio-dir {inner[0]}")


def cache_root(args) -> Path:
    """The cache folder: --cache-dir, else $HITCNN_CACHE, else ~/.cache/hitcnn (a Path; created on use)."""
    return _cache_root(args.cache_dir)


def _cache_root(cache_dir) -> Path:
    from .synth import default_cache_dir

    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


def data_args(args) -> dict:
    """The data and spectrogram flags of ``args`` (what :func:`prepare_data` needs to build the same cache)."""
    out = {}
    for d in DATA_FLAGS:
        v = getattr(args, d, None)
        out[d] = list(v) if isinstance(v, tuple) else v
    return out


def prepare_data(args, mode: str, out_dir=None, log=print):
    """Build (or reuse) the dataset cache the flags describe and open it.

    Returns
    -------
    dataset : pipeline.dataset.Dataset
    source : dict
        :func:`data_source` plus ``dataset_dir`` and, for the demo, its info.
    """
    from . import prepare
    from .dataset import Dataset

    src = data_source(args)
    src["data_args"] = data_args(args)  # config.json keeps them: a deleted cache is rebuilt from them
    if src["kind"] == "cache":
        ds = Dataset(src["data"])
        src["dataset_dir"] = src["data"]
        return ds, src
    config = spectrogram_config(args, mode)
    root = cache_root(args)
    edges = list(args.bucket_edges) if args.bucket_edges else None
    split = args.split
    if src["kind"] == "demo":
        from . import synth

        log(f"embedded demo: SYNTHETIC music in FMA layout ({args.demo_tracks} clips of {args.demo_seconds:g} s), "
            f"built once under {root}")
        info = synth.ensure_demo(root, progress=not getattr(args, "quiet", False),
                                 n_tracks=args.demo_tracks, seconds=args.demo_seconds)
        src.update(audio_dir=info["audio_dir"], metadata=info["metadata"], demo=info)
        edges = edges or info["bucket_edges"]
        split = split or "fma"
    out_root = Path(out_dir) if out_dir else root / "datasets"
    progress = not getattr(args, "quiet", False)
    kw = dict(config=config, seed=args.split_seed, workers=args.workers, progress=progress)
    t0 = time.time()
    try:
        path = _build(prepare, src, args, out_root, edges, split, kw)
    except KeyboardInterrupt as exc:
        raise PrepInterrupted() from exc
    ds = Dataset(path)
    src["dataset_dir"] = str(Path(path).resolve())
    src["reported"] = _reported_by_build(path, progress, t0)
    return ds, src


def _reported_by_build(path, progress, t0) -> bool:
    """Whether the cache at ``path`` was built since ``t0`` with progress on, which printed its skipped / padded
    report already (pipeline.cache)."""
    man = Path(path) / "manifest.json"
    return bool(progress and man.is_file() and man.stat().st_mtime >= t0)


def _build(prepare, src, args, out_root, edges, split, kw):
    """The ``pipeline.prepare.prepare_*`` call for the source kind; returns the dataset directory."""
    if src["kind"] in ("demo", "fma"):
        path = prepare.prepare_fma(src["audio_dir"], src["metadata"], out_root, subset=args.subset,
                                   target=args.target, bucket_edges=edges, split=split or "stratified", **kw)
    elif src["kind"] == "csv":
        path = prepare.prepare_folder(src["audio_dir"], out_root, labels_csv=src["labels"],
                                      split=split or "stratified", **kw)
    else:
        path = prepare.prepare_folder(src["audio_dir"], out_root, label_regex=src["label_regex"],
                                      group_regex=src["group_regex"], split=split or "stratified", **kw)
    return path


def folder_dataset(audio_dir, config, classes, cache_dir=None, labels_csv=None, label_regex=None, seed=0,
                   workers=None, progress=True):
    """New labelled audio (``evaluate --audio-dir``) preprocessed with ``config``, every file in 'test'.

    The cache is ``<cache root>/datasets/eval-<folder>-<hash>``; ``classes``
    are the run's (a label outside them is an error naming it and the file).
    """
    from . import prepare
    from .dataset import Dataset

    root = _cache_root(cache_dir)
    t0 = time.time()
    try:
        path = prepare.prepare_folder(audio_dir, root / "datasets", config=config, labels_csv=labels_csv,
                                      label_regex=label_regex, split="test", seed=seed, workers=workers,
                                      progress=progress, classes=classes,
                                      name=f"eval-{Path(audio_dir).resolve().name}")
    except KeyboardInterrupt as exc:
        raise PrepInterrupted() from exc
    ds = Dataset(path)
    if not _reported_by_build(path, progress, t0):
        status_report(ds, log=lambda m: print(m, file=sys.stderr))
    return ds


def manifest_hash(ds) -> str:
    """The parameter hash of a dataset's manifest ('' when it has none)."""
    man = getattr(ds, "manifest", {}) or {}
    return str(man.get("param_hash") or man.get("hash") or "")


def status_report(ds, src=None, log=print, show_padded=5) -> None:
    """Print every track that preprocessing skipped, and the padded ones (the first few), from the manifest.

    Printed once: nothing when the pipeline has just printed its own report
    while building the cache (``src['reported']``, see :func:`prepare_data`).
    """
    if src is not None and src.get("reported"):
        return
    man = getattr(ds, "manifest", {}) or {}
    tracks = man.get("tracks") or []
    skipped = [t for t in tracks if isinstance(t, dict) and t.get("status") == "skipped"]
    padded = [t for t in tracks if isinstance(t, dict) and t.get("status") == "padded"]
    if skipped:
        log(f"{len(skipped)} track(s) skipped (not in the dataset):")
        for t in skipped:
            log(f"  skipped  {t.get('path', t.get('id'))}  {t.get('reason', '')}")
    if padded:
        log(f"{len(padded)} track(s) shorter than the crop, zero-padded:")
        for t in padded[:show_padded]:
            log(f"  padded   {t.get('path', t.get('id'))}  {t.get('reason', '')}")
        if len(padded) > show_padded:
            log(f"  ... and {len(padded) - show_padded} more (see {getattr(ds, 'path', '')}/manifest.json)")
    from .labels import unmatched_lines

    for line in unmatched_lines(man):
        log(line)


def run_dataset(run_dir, conf: dict, defaults, mode: str, cache_dir=None, log=None):
    """A run's dataset cache; rebuilt (same hash, same settings) when it has been deleted.

    Parameters
    ----------
    run_dir : path-like
        The run directory (for messages).
    conf : dict
        Its ``config.json`` (``data.dataset_dir``, ``data.data_args``, ``dataset_manifest_hash``, ``command``).
    defaults : argparse.Namespace
        ``train``'s flags at their defaults; the run's saved data flags are set on it.
    mode : {'mono', 'rgb'}
        The run's input mode.
    cache_dir : path-like or None
        Rebuild under this cache folder (default: where it was).
    log : callable or None
        Messages (default: standard error).

    Returns
    -------
    pipeline.dataset.Dataset

    Raises
    ------
    DataSourceError
        The cache is missing and cannot be rebuilt (a ``--data`` run, or a run
        whose config.json predates the saved data flags), or the rebuilt cache
        has another hash than the run's.
    """
    import sys

    from .dataset import Dataset

    log = log or (lambda m: print(m, file=sys.stderr))
    path = Path(conf["data"]["dataset_dir"])
    if (path / "manifest.json").is_file():
        return Dataset(path)
    dargs = conf["data"].get("data_args")
    if not dargs or conf["data"].get("kind") == "cache":
        raise DataSourceError(
            f"{run_dir}: its dataset cache {path} is missing and the run does not record how to rebuild it "
            f"({'trained on --data' if dargs else 'config.json predates the saved data flags'}); rebuild it with "
            f"`python cli.py preprocess` and the flags of the run's command: {conf.get('command', '?')}")
    ns = defaults
    for k, v in dargs.items():
        setattr(ns, k, v)
    if cache_dir is not None:
        ns.cache_dir = cache_dir
    elif path.parent.name == "datasets":
        ns.cache_dir = str(path.parent.parent)  # where it was (the run's --cache-dir or the default)
    log(f"note: the dataset cache of {run_dir} ({path}) is missing: rebuilding it with the run's settings "
        f"(same parameters, same hash)")
    ds, src = prepare_data(ns, mode, log=log)
    want = conf.get("dataset_manifest_hash") or ""
    if want and manifest_hash(ds) != want:
        raise DataSourceError(f"{run_dir}: the rebuilt cache {src['dataset_dir']} has hash {manifest_hash(ds)[:12]}, "
                              f"the run was trained on {want[:12]} (the audio or labels changed?)")
    log(f"rebuilt {src['dataset_dir']}")
    return ds
