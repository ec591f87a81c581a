"""Crop windows, cut from the cached clip images when a batch is read (the read-time half's first step).

:class:`Windows` says which ``width``-column windows of each clip make a
batch ('random': a new one per epoch, 'fixed': one per track, 'even': ``n``
evenly spaced ones for evaluation and prediction); :func:`window_starts`
draws their first columns from ``(seed, epoch, key)`` alone (resume-exact,
order-free), and :func:`cut_windows` cuts them out of the uint8 rows, the
image floor (level 0) outside a clip. ``Dataset.levels``,
``pipeline.clips.track_images`` and the training loop all use these.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .errors import PipelineError

__all__ = ["Windows", "WINDOW_RULES", "window_starts", "cut_windows"]


#: crop-window rules: 'random' (a new window per epoch), 'fixed' (one seeded window per track),
#: 'even' (``n`` evenly spaced windows, evaluation and prediction)
WINDOW_RULES = ("random", "fixed", "even")
_KIND_RANDOM, _KIND_FIXED = 5, 6


@dataclasses.dataclass(frozen=True)
class Windows:
    """Which ``width``-column windows of each cached clip make a batch.

    Attributes
    ----------
    rule : {'random', 'fixed', 'even'}
        'random': per track and epoch, start ~ U{min(0, w - W) .. max(0, w - W)}
        (``w`` the clip's columns, ``W`` the window's) drawn from
        ``numpy.random.default_rng([seed, key, 5, epoch])``: a new crop each
        epoch, a function of ``(seed, epoch, key)`` only (resume-exact,
        order-free). A clip shorter than the window lands at a random offset
        in it. 'fixed': the same with ``[seed, key, 6]`` (one crop per track
        for the whole run, the paper's preprocessing). 'even': ``n`` windows
        at ``round(k (w - W) / (n - 1))``, ``k = 0..n-1`` (``floor((w - W) / 2)``,
        the centre, for ``n = 1``): from the clip's start to its end, or for
        a short clip ``n`` placements across the window.
    seed, epoch : int
        'random' / 'fixed' only.
    n : int
        Windows per clip ('even' only; 1 otherwise).
    """

    rule: str = "even"
    seed: int = 0
    epoch: int = 0
    n: int = 1

    def __post_init__(self):
        if self.rule not in WINDOW_RULES:
            raise PipelineError(f"window rule must be one of {WINDOW_RULES}, got {self.rule!r}")
        if isinstance(self.n, bool) or int(self.n) != self.n or self.n < 1:
            raise PipelineError(f"windows per clip must be a positive integer, got {self.n!r}")
        if self.rule != "even" and self.n != 1:
            raise PipelineError(f"rule {self.rule!r} gives one window per clip, got n={self.n}")
        for name in ("seed", "epoch"):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or v < 0:
                raise PipelineError(f"Windows.{name} must be an integer >= 0, got {v!r}")


def window_starts(columns, width: int, windows: Windows, keys=None) -> np.ndarray:
    """First column of every window (may be negative for a clip narrower than the window).

    Parameters
    ----------
    columns : array_like [shape=(N,), int]
        Columns of each clip's image (``Dataset.widths``, ``track_clip``'s ``info['columns']``).
    width : int
        Window width ``W`` (``SpectrogramConfig.width``).
    windows : Windows
    keys : array_like [shape=(N,), int >= 0] or None
        Per-track keys seeding 'random' / 'fixed' (``Dataset.keys``: FMA id or
        CRC32 of the path); needed for those rules.

    Returns
    -------
    np.ndarray [shape=(N, windows.n), dtype=int64]
        Window ``k`` of clip ``i`` covers clip columns ``starts[i, k] ..
        starts[i, k] + width - 1``; columns outside ``0 .. columns[i] - 1``
        are the image floor (level 0), see :func:`cut_windows`.
    """
    w = np.asarray(columns, dtype=np.int64).reshape(-1)
    span = w - int(width)
    if windows.rule == "even":
        if windows.n == 1:
            return (span // 2)[:, None]
        k = np.arange(windows.n, dtype=np.float64)
        return np.rint(k[None, :] * span[:, None] / (windows.n - 1)).astype(np.int64)
    if keys is None:
        raise PipelineError(f"window rule {windows.rule!r} needs the tracks' keys")
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    if keys.shape != w.shape:
        raise PipelineError(f"keys {keys.shape} and columns {w.shape} differ in length")
    lo, hi = np.minimum(span, 0), np.maximum(span, 0)
    out = np.empty((len(w), 1), np.int64)
    for i in range(len(w)):
        ent = ([windows.seed, int(keys[i]), _KIND_RANDOM, windows.epoch] if windows.rule == "random"
               else [windows.seed, int(keys[i]), _KIND_FIXED])
        out[i, 0] = lo[i] + int(np.random.default_rng(ent).integers(0, hi[i] - lo[i] + 1))
    return out


def cut_windows(q, columns, starts, width: int, out=None) -> np.ndarray:
    """Cut windows from cached clip rows: ``out[i] = q[i][:, starts[i] : starts[i] + width]``, floor outside.

    Parameters
    ----------
    q : sequence of np.ndarray [shape=(H, >= columns[i]), dtype=uint8]
        Quantised clip images (rows of ``Dataset.images``, or one ``track_clip``).
    columns : array_like [shape=(N,), int]
        Valid columns of each row (the rest of a cache row is padding).
    starts : array_like [shape=(N,), int]
        From :func:`window_starts` (one column of it).
    width : int
    out : np.ndarray [shape=(N, H, width), dtype=uint8] or None
        Written in place when given.

    Returns
    -------
    np.ndarray [shape=(N, H, width), dtype=uint8]
        Columns outside ``0 .. columns[i] - 1`` are level 0 (the image floor,
        what a zero-padded crop's silence becomes).
    """
    n = len(starts)
    h = int(q[0].shape[0]) if n else 0
    if out is None:
        out = np.zeros((n, h, int(width)), np.uint8)
    else:
        out[...] = 0
    for i in range(n):
        s, w = int(starts[i]), int(columns[i])
        a, b = max(s, 0), min(s + int(width), w)
        if b > a:
            out[i, :, a - s:b - s] = q[i][:, a:b]
    return out
