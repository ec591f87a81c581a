"""Many training runs in one command: the grid search and the paper's reproduction share :func:`sweep`.

A *cell* is one run's hyperparameters (``model``, ``lr``, ``batch_size``,
``dropout``, ``weight_decay``) and its run-directory name. :func:`sweep`
prepares each input mode's dataset once, trains every cell into
``base/<name>`` and returns one row per cell (best validation accuracy, its
epoch and training accuracy, test accuracy of the best checkpoint). Under
``--distributed`` (``dist``) the cells are divided over the ranks, each run a
single process, and rank 0 gathers every row. :func:`write_table` writes
rows as CSV and Markdown; :func:`paper_table` sets ``reproduce``'s rows beside
the paper's published accuracies (:data:`PAPER_RESULTS`).
"""
from __future__ import annotations

import csv
import itertools
from pathlib import Path

from engine.config import model_mode

__all__ = ["PAPER_RESULTS", "grid_cells", "paper_cells", "sweep", "write_table", "paper_table"]

#: the paper's results (train / validation / test accuracy in %, per architecture)
PAPER_RESULTS = {
    "cnn2_mono": (44, 41, 42),
    "cnn4_mono": (46, 51, 51),
    "cnn4_rgb": (53, 55, 53),
    "cnn6_rgb": (59, 63, 61),
}


def grid_cells(models, lrs, batch_sizes, dropouts, weight_decays) -> list:
    """Every combination, in ``itertools.product`` order, named ``<model>_lr<lr>_bs<bs>_do<p>_wd<wd>``."""
    return [dict(name=f"{m}_lr{lr:g}_bs{bs}_do{dr:g}_wd{wd:g}", model=m, lr=lr, batch_size=bs, dropout=dr,
                 weight_decay=wd)
            for m, lr, bs, dr, wd in itertools.product(models, lrs, batch_sizes, dropouts, weight_decays)]


def paper_cells(models) -> list:
    """The paper's hyperparameters (Adam lr 5e-4, batch 16, dropout 0.4, no weight decay) per model, named by it."""
    return [dict(name=m, model=m, lr=5e-4, batch_size=16, dropout=0.4, weight_decay=0.0) for m in models]


def sweep(cells, base, prepare, make_config, train, log=print, dist=None, rank0_first=None) -> list:
    """Train every cell into ``base/<name>``; one result row per cell (all of them on rank 0 under ``dist``).

    Parameters
    ----------
    cells : list of dict
        From :func:`grid_cells` or :func:`paper_cells`.
    base : Path
        The sweep's folder.
    prepare : callable
        ``prepare(mode) -> (dataset, source)``, called once per input mode ('mono' / 'rgb').
    make_config : callable
        ``make_config(cell, source) -> engine.config.TrainConfig``.
    train : callable
        ``train(dataset, source, cfg, out) -> dict`` with fit's result and ``report`` (the test report).
    log : callable
    dist : engine.distributed.Distributed or None
        Divide the cells over the ranks (rank ``r`` trains cells ``r, r + size, ...``).
    rank0_first : callable or None
        ``rank0_first(fn)``: the dataset built on rank 0 before the others read it (under ``dist``).

    Returns
    -------
    rows : list of dict
        ``run, model, lr, batch_size, dropout, weight_decay, val_acc, train_acc, best_epoch, test_acc``
        in cell order (under ``dist``: every rank's on rank 0, [] on the others).
    """
    datasets = {}
    mine = list(cells)
    if dist is not None:
        mine = cells[dist.rank::dist.size]
        log(f"grid --distributed: {dist.size} ranks, rank {dist.rank} trains {len(mine)} of the runs")
        for mode in sorted({model_mode(c["model"]) for c in cells}):
            datasets[mode] = rank0_first(lambda: prepare(mode))
    rows = []
    for cell in mine:
        mode = model_mode(cell["model"])
        if mode not in datasets:
            datasets[mode] = prepare(mode)
        ds, src = datasets[mode]
        res = train(ds, src, make_config(cell, src), Path(base) / cell["name"])
        best = next((h for h in res["history"] if h["epoch"] == res["best_epoch"]), {})
        rows.append(dict(run=cell["name"], model=cell["model"], lr=cell["lr"], batch_size=cell["batch_size"],
                         dropout=cell["dropout"], weight_decay=cell["weight_decay"], val_acc=res["best_val_acc"],
                         train_acc=best.get("train_acc"), best_epoch=res["best_epoch"],
                         test_acc=res["report"]["accuracy"]))
    if dist is not None:  # rank 0 gathers the table of every rank's runs
        parts = dist.comm.gather(rows, root=0)
        rows = [r for part in parts or [] for r in part] if dist.is_writer else []
    return rows


def write_table(rows, csv_path, md_path, title) -> None:
    """``rows`` (dicts with the same keys) as a CSV file and a Markdown table under ``# title``."""
    keys = list(rows[0].keys()) if rows else []
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)

    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) and abs(v) < 10 and v == v and v not in (0.0,) and v > 1e-3 \
            else (f"{v:g}" if isinstance(v, float) else str(v))

    lines = [f"# {title}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows]
    Path(md_path).write_text("\n".join(lines) + "\n")


def paper_table(rows, csv_path, md_path) -> str:
    """``reproduce``'s results (accuracy in %) beside :data:`PAPER_RESULTS`; writes both files, returns the Markdown."""
    out = []
    for r in rows:
        ptr, pva, pte = PAPER_RESULTS[r["model"]]
        tr = r["train_acc"]
        out.append(dict(model=r["model"], train=100 * (tr if tr is not None else float("nan")),
                        val=100 * r["val_acc"], test=100 * r["test_acc"], paper_train=ptr, paper_val=pva,
                        paper_test=pte, best_epoch=r["best_epoch"]))
    lines = ["# Results: accuracy (%) of the four architectures, ours beside the paper's", "",
             "| model | train | val | test | paper train | paper val | paper test | best epoch |",
             "|---|---|---|---|---|---|---|---|"]
    for r in out:
        lines.append(f"| {r['model']} | {r['train']:.1f} | {r['val']:.1f} | {r['test']:.1f} | {r['paper_train']} | "
                     f"{r['paper_val']} | {r['paper_test']} | {r['best_epoch']} |")
    lines += ["", "The paper's best model (cnn6_rgb) reached 61 % test accuracy."]
    text = "\n".join(lines) + "\n"
    Path(md_path).write_text(text)
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(out[0].keys()))
        w.writeheader()
        w.writerows(out)
    return text
