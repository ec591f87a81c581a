"""Classification metrics: accuracy, per-class precision / recall / F1, macro-F1,
confusion matrix and the majority-class baseline.

Conventions follow scikit-learn (``sklearn.metrics``): the confusion matrix is
``C[i, j]`` = number of samples of true class ``i`` predicted as ``j``; a
precision or recall whose denominator is zero is 0 (sklearn's
``zero_division=0``); macro-F1 is the unweighted mean of the per-class F1.
"""
from __future__ import annotations

import numpy as np


def _check(y_true, y_pred, n_classes):
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.ndim != 1 or y_pred.shape != y_true.shape:
        raise ValueError(f"y_true and y_pred must be 1-D of the same shape, got {y_true.shape} and {y_pred.shape}")
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes!r}")
    for name, a in (("y_true", y_true), ("y_pred", y_pred)):
        if a.size and (a.min() < 0 or a.max() >= n_classes):
            raise ValueError(f"{name} values must lie in [0, {n_classes}), got range [{a.min()}, {a.max()}]")
    return y_true.astype(np.int64), y_pred.astype(np.int64)


def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    """Confusion matrix ``C[i, j]`` = count of true class ``i`` predicted as ``j``.

    Parameters
    ----------
    y_true, y_pred : array-like of int [shape=(N,)]
        Class indices in ``[0, n_classes)``.
    n_classes : int >= 1

    Returns
    -------
    C : np.ndarray [shape=(n_classes, n_classes), dtype=int64]

    Raises
    ------
    ValueError
        If shapes differ, are not 1-D, or a label is out of range.
    """
    y_true, y_pred = _check(y_true, y_pred, n_classes)
    C = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(C, (y_true, y_pred), 1)
    return C


def classification_report(y_true, y_pred, class_names) -> dict:
    """Every metric that ``evaluate`` and ``report.json`` show.

    Parameters
    ----------
    y_true, y_pred : array-like of int [shape=(N,)]
        True and predicted class indices.
    class_names : sequence of str [length n_classes]

    Returns
    -------
    report : dict
        ``n`` (samples), ``accuracy``, ``macro_f1``, ``per_class`` (list of
        dicts: ``class``, ``precision``, ``recall``, ``f1``, ``support``),
        ``confusion_matrix`` (list of lists, rows = true class),
        ``majority_class`` and ``majority_baseline`` (the accuracy of always
        predicting the most frequent true class of these samples; ties -> the
        lowest index). Accuracies are fractions in [0, 1]; empty input gives
        NaN-free zeros.
    """
    names = [str(c) for c in class_names]
    k = len(names)
    y_true, y_pred = _check(y_true, y_pred, k)
    C = confusion_matrix(y_true, y_pred, k)
    n = int(y_true.size)
    tp = np.diag(C).astype(np.float64)
    pred_tot = C.sum(axis=0).astype(np.float64)
    true_tot = C.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, pred_tot, out=np.zeros(k), where=pred_tot > 0)
    recall = np.divide(tp, true_tot, out=np.zeros(k), where=true_tot > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    support = C.sum(axis=1)
    maj = int(np.argmax(support)) if n else 0
    return {
        "n": n,
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "macro_f1": float(f1.mean()) if k else 0.0,
        "per_class": [
            {"class": names[i], "precision": float(precision[i]), "recall": float(recall[i]),
             "f1": float(f1[i]), "support": int(support[i])}
            for i in range(k)
        ],
        "confusion_matrix": C.tolist(),
        "classes": names,
        "majority_class": names[maj] if k else None,
        "majority_baseline": float(support[maj] / n) if n else 0.0,
    }


def format_report(rep: dict, title: str = "") -> str:
    """Plain-text table of a :func:`classification_report` (for the terminal)."""
    lines = []
    if title:
        lines.append(title)
    lines.append(f"accuracy {rep['accuracy']:.4f}   macro-F1 {rep['macro_f1']:.4f}   "
                 f"majority baseline {rep['majority_baseline']:.4f} (always '{rep['majority_class']}')   "
                 f"n = {rep['n']}")
    w = max([len("class")] + [len(p["class"]) for p in rep["per_class"]])
    lines.append(f"{'class':<{w}}  precision  recall     f1  support")
    for p in rep["per_class"]:
        lines.append(f"{p['class']:<{w}}  {p['precision']:9.4f}  {p['recall']:6.4f}  {p['f1']:5.4f}  {p['support']:7d}")
    names = rep["classes"]
    cw = max(6, max(len(c) for c in names) + 1)
    lines.append("confusion matrix (rows = true, columns = predicted):")
    lines.append(" " * (w + 2) + "".join(f"{c:>{cw}}" for c in names))
    for c, row in zip(names, rep["confusion_matrix"]):
        lines.append(f"{c:<{w}}  " + "".join(f"{v:>{cw}d}" for v in row))
    return "\n".join(lines)


def window_probabilities(logits, n_windows: int = 1) -> np.ndarray:
    """Class probabilities of each clip: softmax of every window's logits, averaged over its windows.

    The one rule ``evaluate`` (validation, test, ``--audio-dir``) and ``predict``
    share, so the two agree bit for bit on the same file.

    Parameters
    ----------
    logits : array_like [shape=(N * n_windows, n_classes)]
        Window ``k`` of clip ``i`` at row ``i * n_windows + k``; computed in float64.
    n_windows : int >= 1

    Returns
    -------
    np.ndarray [shape=(N, n_classes), dtype=float64]
        Mean over the windows of ``exp(l - max l) / sum exp(l - max l)``.

    Raises
    ------
    ValueError
        When the rows are not a multiple of ``n_windows``.
    """
    lg = np.asarray(logits, dtype=np.float64)
    k = int(n_windows)
    if lg.ndim != 2 or k < 1 or lg.shape[0] % k:
        raise ValueError(f"logits of shape {lg.shape} are not N x {k} windows of (n_classes,) rows")
    p = np.exp(lg - lg.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return p.reshape(lg.shape[0] // k, k, lg.shape[1]).mean(axis=1)
