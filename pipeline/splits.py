"""Train / validation / test splits: stratified, FMA's own, or group-disjoint.

Every function returns an array of ``'train' | 'val' | 'test'`` (dtype
``<U5``), one entry per item, so the three splits are disjoint and their
union is every item by construction. All are reproducible from their seed
(``numpy.random.default_rng(seed)``).
"""
from __future__ import annotations

import numpy as np

from .errors import PipelineError

__all__ = ["SPLITS", "stratified_split", "fma_split", "group_split", "split_counts"]

SPLITS = ("train", "val", "test")
FMA_NAMES = {"training": "train", "validation": "val", "test": "test"}


def _check_fractions(fractions):
    f = np.asarray(fractions, dtype=np.float64)
    if f.shape != (3,) or np.any(f <= 0) or abs(f.sum() - 1) > 1e-6:
        raise PipelineError(f"split fractions must be 3 positive numbers summing to 1, got {fractions!r}")
    return f


def stratified_split(labels, fractions=(0.8, 0.1, 0.1), seed=0, class_names=None):
    """Stratified split: each class is divided in ``fractions`` on its own.

    Parameters
    ----------
    labels : array-like of int [shape=(n,)]
        Class codes.
    fractions : (train, val, test)
        Shares (0.8, 0.1, 0.1).
    seed : int
        Seed of the per-class shuffles.
    class_names : list of str or None
        For error messages.

    Returns
    -------
    np.ndarray [shape=(n,), dtype='<U5']
        Per class with ``m`` items: ``val = max(1, round(f_val m))``,
        ``test = max(1, round(f_test m))``, the rest train.

    Raises
    ------
    PipelineError
        A class with fewer than 3 items (it cannot appear in all three
        splits); the message names the class and its count.
    """
    y = np.asarray(labels)
    f = _check_fractions(fractions)
    rng = np.random.default_rng(seed)
    out = np.empty(len(y), dtype="<U5")
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        m = len(idx)
        name = class_names[int(c)] if class_names is not None else c
        if m < 3:
            raise PipelineError(
                f"class {name!r} has only {m} item(s); a stratified train/val/test split needs >= 3 per class")
        n_val = max(1, int(round(f[1] * m)))
        n_test = max(1, int(round(f[2] * m)))
        if n_val + n_test >= m:
            n_val, n_test = 1, 1
        idx = idx[rng.permutation(m)]
        out[idx[:n_val]] = "val"
        out[idx[n_val:n_val + n_test]] = "test"
        out[idx[n_val + n_test:]] = "train"
    return out


def fma_split(values):
    """FMA's own ``('set', 'split')`` column mapped to train / val / test.

    Parameters
    ----------
    values : array-like of str [shape=(n,)]
        ``'training' | 'validation' | 'test'``.

    Returns
    -------
    np.ndarray [shape=(n,), dtype='<U5']

    Raises
    ------
    PipelineError
        Any other value (NaN included), naming it.
    """
    out = []
    for v in values:
        if v not in FMA_NAMES:
            raise PipelineError(f"('set', 'split') value {v!r} is not one of {sorted(FMA_NAMES)}")
        out.append(FMA_NAMES[v])
    return np.array(out, dtype="<U5")


def group_split(groups, fractions=(0.8, 0.1, 0.1), seed=0):
    """Group-disjoint split: all items of a group (artist, speaker) go to one split.

    Groups are shuffled with ``seed`` and each is given to the split whose item
    count is furthest below its target, relative to the target
    (``(target - count) / target``, first split on ties), so the first three
    groups seed train, val and test and the item shares approach ``fractions``.

    Parameters
    ----------
    groups : array-like [shape=(n,)]
        Group of each item (str or int; None/NaN is an error).
    fractions : (train, val, test)
    seed : int

    Returns
    -------
    np.ndarray [shape=(n,), dtype='<U5']

    Raises
    ------
    PipelineError
        Fewer than 3 groups, or a missing group value.
    """
    f = _check_fractions(fractions)
    g = np.asarray([str(v) if v is not None and v == v else "" for v in groups], dtype=object)
    if np.any(g == ""):
        raise PipelineError(f"group column has {int(np.sum(g == ''))} missing value(s); every item needs a group")
    names, inverse, sizes = np.unique(g.astype(str), return_inverse=True, return_counts=True)
    if len(names) < 3:
        raise PipelineError(f"a group-disjoint train/val/test split needs >= 3 groups, got {len(names)}: "
                            f"{names.tolist()}")
    target = f * len(g)
    count = np.zeros(3)
    assign = np.empty(len(names), dtype=np.int64)
    for k in np.random.default_rng(seed).permutation(len(names)):
        s = int(np.argmax((target - count) / target))
        assign[k] = s
        count[s] += sizes[k]
    return np.array(SPLITS, dtype="<U5")[assign[inverse]]


def split_counts(split, labels, n_classes):
    """``{split: [count per class]}`` (for the manifest and reports)."""
    split = np.asarray(split)
    labels = np.asarray(labels)
    return {s: np.bincount(labels[split == s], minlength=n_classes).astype(int).tolist() for s in SPLITS}
