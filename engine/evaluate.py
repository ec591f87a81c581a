"""Evaluating a model on a split, and the run's final test report.

:func:`evaluate_split` is the one evaluation path (validation in the loop,
the test report, ``cli.py evaluate``): ``eval_crops`` evenly spaced windows
per clip, probabilities averaged as ``predict`` does
(:func:`engine.metrics.window_probabilities`). It runs on any backend through
its device policy (``kernels.<backend>.device``: feeding, copies kept on the
device, one read at the end).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from engine.batches import Prefetcher, take

__all__ = ["evaluate_split", "clip_probabilities", "clip_status", "format_predictions", "final_report"]


def evaluate_split(model, dataset, split: str, batch_size: int, device: str = "cpu", mode=None,
                   limit_batches=None, eval_crops: int = 1):
    """Forward every row of ``split`` in eval mode: ``eval_crops`` evenly spaced windows per clip.

    Each clip's probabilities are the mean over its windows of the softmax
    (:func:`engine.metrics.window_probabilities`, the rule ``predict`` uses),
    computed on the host in float64 from the model's logits.

    Parameters
    ----------
    model : engine.model.Sequential
    dataset : pipeline.dataset.Dataset (or an object with its ``batches``)
    split : {'train', 'val', 'test', 'all'}
    batch_size : int
        Clips per forward pass (``batch_size * eval_crops`` images).
    device : {'cpu', 'gpu'}
    mode : {'mono', 'rgb'} or None
    limit_batches : int or None
        Only the first batches (debug).
    eval_crops : int >= 1
        Windows per clip (``pipeline.windows.Windows('even', n=eval_crops)``).

    Returns
    -------
    loss : float
        Mean over the clips of ``-log p[y]`` of the averaged probabilities (float64;
        the cross-entropy when ``eval_crops == 1``).
    y_true, y_pred : np.ndarray [shape=(N,), dtype=int64]
    probs : np.ndarray [shape=(N, n_classes), dtype=float32]
    """
    import kernels
    from engine.metrics import window_probabilities
    from pipeline.windows import Windows

    k = int(eval_crops)
    windows = Windows("even", n=k)
    dev = kernels.get_backend(device).device
    was_training = getattr(model, "training", True)
    model.eval()
    lgs, ys = [], []
    try:
        with Prefetcher(dataset, split, batch_size, shuffle=False, seed=0, mode=mode, windows=windows) as batches:
            feed = dev.feed(take(batches, limit_batches))
            try:
                for x, y in feed:  # the feed's and the model's buffers are reused: keep copies
                    lgs.append(dev.keep(model.forward(x)))
                    ys.append(dev.keep(y))
            finally:
                feed.close()
    finally:
        if was_training:
            model.train()
    if not lgs:
        return float("nan"), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    y = dev.stack_to_host(ys).astype(np.int64)[::k]  # y is repeated once per window
    p = window_probabilities(dev.stack_to_host(lgs).astype(np.float64), k)
    loss = float(-np.log(np.maximum(p[np.arange(len(y)), y], np.finfo(np.float64).tiny)).mean())
    return loss, y, p.argmax(axis=1).astype(np.int64), p.astype(np.float32)


def clip_probabilities(model, x, device: str = "cpu"):
    """One clip's class probabilities from its windows, the rule :func:`evaluate_split` applies (``predict``'s).

    Parameters
    ----------
    model : engine.model.Sequential
        In eval mode.
    x : np.ndarray [shape=(K, C, H, W), dtype=float32]
        The clip's ``K`` windows as model input (``pipeline.clips.track_images``).
    device : {'cpu', 'gpu'}
        Where ``model`` lives.

    Returns
    -------
    prob : np.ndarray [shape=(n_classes,), dtype=float64]
        The mean over the windows of the softmax of the logits.
    logits : np.ndarray [shape=(K, n_classes), dtype=float64]
    """
    import kernels
    from engine.metrics import window_probabilities

    dev = kernels.get_backend(device).device
    logits = dev.to_host(model.forward(dev.to_device(x))).astype(np.float64)
    return window_probabilities(logits, len(x))[0], logits


def clip_status(info: dict) -> str:
    """'ok 30.0 s', 'padded 1.2 s', 'ok 21600.0 s (30.0 s analysed, digital silence)' (from track_images' info)."""
    d = info.get("duration_s")
    out = f"{info.get('status', '?')} {d:.1f} s" if isinstance(d, (int, float)) else str(info.get("status", "?"))
    notes = []
    a = info.get("decoded_s")
    if isinstance(d, (int, float)) and isinstance(a, (int, float)) and a < d - 0.05:
        notes.append(f"{a:.1f} s analysed")
    if "silence" in info.get("reason", ""):
        notes.append("digital silence")
    return out + (f" ({', '.join(notes)})" if notes else "")


def format_predictions(rows, classes) -> str:
    """The predict table: file, class, status, one probability column per class; widths fit the longest cell.

    ``rows`` holds ``(file, class, status, probabilities)`` tuples.
    """
    wf = max([len("file")] + [len(str(r[0])) for r in rows])
    wc = max([len("class")] + [len(r[1]) for r in rows])
    ws = max([len("status")] + [len(r[2]) for r in rows])
    wp = [max(8, len(c)) for c in classes]
    lines = [f"{'file':<{wf}}  {'class':<{wc}}  {'status':<{ws}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(classes, wp))]
    for f, c, st, prob in rows:
        lines.append(f"{str(f):<{wf}}  {c:<{wc}}  {st:<{ws}}  " + "  ".join(f"{v:{w}.4f}" for v, w in zip(prob, wp)))
    return "\n".join(line.rstrip() for line in lines)


def final_report(run_dir, dataset, cfg, log=print) -> dict:
    """Evaluate the best checkpoint on the test split; write ``report.json`` and the PNG plots.

    Returns the report dict (see :func:`engine.metrics.classification_report`)
    with ``best_epoch``, ``val_accuracy``, ``train_accuracy`` of that epoch
    added. A run stopped before its first epoch ended (``--max-steps``) has
    no validated (best) checkpoint: the report is of ``last.npz``, says so
    (``best_epoch`` None, ``checkpoint_note``) and gives its step. A file
    that cannot be written (full disk) is named in a warning; the report is
    still returned and printed.
    """
    from engine import metrics, plots
    from engine.config import build_model, input_shape, model_mode
    from engine.run import load_state

    run = Path(run_dir)
    best = run / "checkpoints" / "best.npz"
    if not best.is_file():
        best = run / "checkpoints" / "last.npz"
    mode = model_mode(cfg.model)
    classes = list(dataset.classes)
    model = build_model(cfg, input_shape(dataset, mode), len(classes))
    extra = load_state(best, model, None)
    split = "train" if cfg.overfit_batch else "test"
    loss, yt, yp, _ = evaluate_split(model, dataset, split, cfg.batch_size, cfg.device, mode,
                                     limit_batches=1 if cfg.overfit_batch else None,
                                     eval_crops=1 if cfg.overfit_batch else cfg.eval_crops)
    rep = metrics.classification_report(yt, yp, classes)
    rep["split"] = split
    rep["loss"] = loss
    hist = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines() if s.strip()] \
        if (run / "metrics.jsonl").is_file() else []
    best_epoch = int(extra.get("best_epoch", -1))
    if best.name == "best.npz" and best_epoch >= 1:
        title = f"{split} metrics of the best checkpoint (epoch {best_epoch}):"
        rep["best_epoch"] = best_epoch
    else:  # stopped inside the first epoch: nothing validated yet
        note = (f"last checkpoint (step {extra.get('global_step', '?')}, inside epoch "
                f"{int(extra.get('epoch', 0)) + 1}: the run stopped before any epoch ended, so no "
                f"validation and no best checkpoint)")
        title = f"{split} metrics of the {note}:"
        rep["best_epoch"] = None
        rep["checkpoint_note"] = note
    rec = next((h for h in hist if h["epoch"] == best_epoch), None)
    if rec is not None:
        rep["val_accuracy"] = rec["val_acc"]
        rep["train_accuracy"] = rec["train_acc"]
    rep["checkpoint"] = str(best)
    writes = [(run / "report.json", lambda p: p.write_text(json.dumps(rep, indent=2)))]
    if hist:
        writes.append((run / "curves.png", lambda p: plots.plot_curves(hist, p)))
    writes.append((run / "confusion.png", lambda p: plots.plot_confusion(
        rep["confusion_matrix"], classes, p, title=f"{split}: accuracy {rep['accuracy']:.3f}")))
    for path, write in writes:
        try:
            write(path)
        except OSError as exc:
            log(f"warning: cannot write {path}: {exc.strerror or exc}")
    log(metrics.format_report(rep, title))
    return rep
