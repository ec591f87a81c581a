"""A cached dataset directory, opened read-only: its arrays and its batches.

The directory is written by :func:`pipeline.cache.build_cache` (its layout is
described there). :class:`Dataset` maps ``images.npy``, checks every file
against the manifest, and cuts the crop windows of a batch when it is read
(:class:`pipeline.windows.Windows`, :func:`~pipeline.windows.cut_windows`,
:func:`pipeline.spectrogram.model_input`). Batches are made synchronously;
reading ahead is the consumer's (``engine.batches.Prefetcher``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import cachefile
from . import splits as splits_mod
from .cache import _FORMAT_CHANGE, FORMAT_VERSION
from .errors import PipelineError
from .spectrogram import SpectrogramConfig, model_input
from .windows import Windows, cut_windows, window_starts

__all__ = ["Dataset"]


class Dataset:
    """A cached dataset directory, opened read-only.

    Parameters
    ----------
    path : str or os.PathLike
        Directory written by :func:`pipeline.cache.build_cache`.

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
        windows : pipeline.windows.Windows or None
            Which windows (None: ``Windows('even', n=1)``, the centre one).

        Returns
        -------
        np.ndarray [shape=(N * windows.n, H, W), dtype=uint8]
            Window ``k`` of row ``i`` at index ``i * n + k``
            (:func:`pipeline.windows.window_starts`, :func:`~pipeline.windows.cut_windows`).
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
                windows: Windows | None = None, levels: bool = False):
        """Yield ``(x, y)`` batches, each made when it is asked for.

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
        windows : pipeline.windows.Windows or None
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
        for s in stops:
            rows = idx[s:s + batch_size]
            q = self.levels(rows, windows)
            y = np.repeat(self.labels[rows], windows.n)
            yield (q if levels else model_input(q, mode, self.config.colormap)), y
