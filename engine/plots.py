"""PNG plots of a run: learning curves, confusion matrix, ``inspect`` statistics.

matplotlib with the non-interactive Agg backend (no display needed), one
figure per file, closed after saving so that long grid searches do not leak
figures.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: list, path) -> Path:
    """Loss and accuracy per epoch (train and validation) side by side.

    Parameters
    ----------
    history : list of dict
        Lines of ``metrics.jsonl``: keys ``epoch``, ``train_loss``, ``val_loss``,
        ``train_acc``, ``val_acc`` (accuracies as fractions).
    path : path-like
        PNG to write.

    Returns
    -------
    Path of the written file.
    """
    plt = _plt()
    ep = [h["epoch"] for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    a1.plot(ep, [h["val_loss"] for h in history], "s-", label="validation")
    a1.set_xlabel("epoch")
    a1.set_ylabel("cross-entropy loss")
    a1.set_title("loss")
    a1.legend()
    a2.plot(ep, [h["train_acc"] for h in history], "o-", label="train")
    a2.plot(ep, [h["val_acc"] for h in history], "s-", label="validation")
    a2.set_xlabel("epoch")
    a2.set_ylabel("accuracy")
    a2.set_ylim(0, 1)
    a2.set_title("accuracy")
    a2.legend()
    for a in (a1, a2):
        a.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_confusion(cm, class_names, path, title: str = "confusion matrix") -> Path:
    """Confusion matrix as an image with counts (rows = true, columns = predicted)."""
    plt = _plt()
    cm = np.asarray(cm)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.2 * k + 2.5, 1.2 * k + 2))
    im = ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    thr = cm.max() / 2 if cm.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > thr else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_inspect(rows: list, path) -> Path:
    """Bar charts of the per-layer statistics of ``inspect``.

    ``rows``: dicts with ``layer``, ``act_mean``, ``act_std``, ``dead_frac``
    (may be None), ``grad_norm``, ``update_ratio`` (may be None).
    """
    plt = _plt()
    names = [r["layer"] for r in rows]
    x = np.arange(len(names))
    fig, axes = plt.subplots(4, 1, figsize=(max(6, 0.5 * len(names) + 2), 11), sharex=True)

    def val(key):
        return np.array([np.nan if r.get(key) is None else r[key] for r in rows], dtype=float)

    axes[0].bar(x, val("act_mean"), yerr=val("act_std"), color="tab:blue", alpha=0.8)
    axes[0].set_ylabel("activation\nmean ± std")
    axes[1].bar(x, val("dead_frac"), color="tab:red")
    axes[1].set_ylabel("dead ReLU\nfraction")
    axes[1].set_ylim(0, 1)
    axes[2].bar(x, val("grad_norm"), color="tab:green")
    axes[2].set_yscale("log")
    axes[2].set_ylabel("param grad\nL2 norm")
    axes[3].bar(x, val("update_ratio"), color="tab:purple")
    axes[3].set_yscale("log")
    axes[3].axhline(1e-3, color="k", ls="--", lw=0.8)
    axes[3].set_ylabel("|update| / |weight|")
    axes[3].set_xticks(x, names, rotation=60, ha="right")
    for a in axes:
        a.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
