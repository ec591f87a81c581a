"""One training job of the command line, start to end: config.json, the configuration table, fit, the report.

:func:`train_run` is what ``python cli.py train`` (and each run of ``grid``
and ``reproduce``, :mod:`engine.sweep`) does once the flags are checked:
write ``config.json`` (:func:`run_config`), print the configuration (as
llm.c's ``train_gpt2`` prints its table), train (:func:`engine.train.fit`),
then evaluate the best checkpoint on the test split and write
``report.json`` and the plots (:func:`engine.evaluate.final_report`).
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["code_version", "print_table", "run_config", "train_run", "training_done_message",
           "no_checkpoint_reason"]

REPO = Path(__file__).resolve().parents[1]


def code_version() -> str:
    """``git describe --always --dirty --tags`` of the checkout, else the package version."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=REPO,
                             capture_output=True, text=True, timeout=5)
        if out.returncode == 0 and out.stdout.strip():
            return "git " + out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from importlib.metadata import version

        return "hitcnn " + version("hitcnn")
    except Exception:
        return "unknown"


def print_table(title: str, rows, file=None) -> None:
    """Print a 'Parameter | Value' table (as llm.c's train_gpt2 does)."""
    file = file or sys.stdout
    rows = [(str(k), str(v)) for k, v in rows]
    w = max([len("Parameter")] + [len(k) for k, _ in rows])
    v = max([len("Value")] + [len(x) for _, x in rows])
    line = "+" + "-" * (w + 2) + "+" + "-" * (v + 2) + "+"
    print(title, file=file)
    print(line, file=file)
    print(f"| {'Parameter':<{w}} | {'Value':<{v}} |", file=file)
    print(line, file=file)
    for k, x in rows:
        print(f"| {k:<{w}} | {x:<{v}} |", file=file)
    print(line, file=file)


def run_config(ds, src: dict, cfg, argv) -> dict:
    """The content of ``config.json``: the settings, the data source, the spectrogram, the classes and sizes.

    Parameters
    ----------
    ds : pipeline.dataset.Dataset
    src : dict
        The data source (``pipeline.sources.prepare_data``'s); its ``demo`` entry goes in its own key.
    cfg : engine.config.TrainConfig
    argv : list of str
        The command line after ``cli.py`` (recorded as ``command``).
    """
    from engine.config import config_dict, model_mode
    from pipeline import sources

    return {
        "train": config_dict(cfg),
        "data": {k: v for k, v in src.items() if k != "demo"},
        "demo": src.get("demo"),
        "spectrogram": (getattr(ds, "manifest", {}) or {}).get("config"),
        "classes": list(ds.classes),
        "n_images": {s: int((ds.split == s).sum()) for s in ("train", "val", "test")},
        "image_shape": list(ds.image_shape(model_mode(cfg.model))),
        "dataset_manifest_hash": sources.manifest_hash(ds),
        "code_version": code_version(),
        "command": shlex.join(["python", "cli.py"] + list(argv)),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "threads": os.environ.get("NUMBA_NUM_THREADS") or str(os.cpu_count()),
    }


def train_run(ds, src: dict, cfg, out, argv, resume=False, log=print, write_config=None, dist=None,
              max_steps=None, step_delay=0.0) -> dict:
    """One run of ``cli.py train``: write config.json, print the configuration, train, write the report.

    Parameters
    ----------
    ds, src, cfg, argv
        As for :func:`run_config`.
    out : Path
        The run directory (created).
    resume : bool
        Continue from ``out/checkpoints/last.npz`` (config.json is then kept as it is).
    log : callable
    write_config : bool or None
        Write config.json (None: unless resuming).
    dist : engine.distributed.Distributed or None
        The MPI job (only rank 0 writes files and the report).
    max_steps, step_delay
        ``engine.train.fit``'s debugging arguments.

    Returns
    -------
    dict
        ``engine.train.fit``'s result plus ``report`` (``engine.evaluate.final_report``; None on ranks > 0).
    """
    from engine.config import config_dict
    from engine.evaluate import final_report
    from engine.train import fit

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    conf = run_config(ds, src, cfg, argv)
    if ((not resume) if write_config is None else write_config) and (dist is None or dist.is_writer):
        (out / "config.json").write_text(json.dumps(conf, indent=2, default=str))
    rows = [("run directory", out), ("data", src["kind"] + (" (SYNTHETIC demo)" if src["kind"] == "demo" else "")),
            ("dataset", src.get("dataset_dir", "")), ("manifest hash", conf["dataset_manifest_hash"][:16]),
            ("classes", ", ".join(conf["classes"])),
            ("images train/val/test", "/".join(str(conf["n_images"][s]) for s in ("train", "val", "test"))),
            ("image shape (C,H,W)", tuple(conf["image_shape"]))]
    rows += [(k, v) for k, v in config_dict(cfg).items() if k not in ("extra",)]
    rows += [("code version", conf["code_version"]), ("resume", resume)]
    print_table("configuration", rows)
    res = fit(ds, cfg, out, resume=resume, log=log, dist=dist, max_steps=max_steps, step_delay=step_delay)
    log(training_done_message(res, cfg, resumed=resume, max_steps=max_steps))
    if dist is not None and not dist.is_writer:  # rank 0 evaluates and writes report.json and the plots
        return dict(res, report=None)
    rep = final_report(out, ds, cfg, log=log)
    log(f"run directory: {out}  (report.json, metrics.jsonl, checkpoints/, curves.png, confusion.png)")
    return dict(res, report=rep)


def training_done_message(res: dict, cfg, resumed=False, max_steps=None) -> str:
    """'training done: 3 epochs (reached --epochs), best validation accuracy ...' from a fit() result.

    After a resume it gives the training time of every session (the sum of
    the epochs' ``seconds`` in metrics.jsonl) besides this session's.
    """
    n = len(res["history"])
    why = {"epochs": f"reached --epochs {cfg.epochs}",
           "patience": f"early stopping: no better validation accuracy for {cfg.patience} "
                       f"epoch{'s' if cfg.patience != 1 else ''}",
           "max_steps": f"reached --max-steps {max_steps}"}.get(res["stopped"], str(res["stopped"]))
    if res.get("best_epoch", -1) < 1:  # stopped inside the first epoch: no validation has run
        msg = (f"training stopped after {res.get('global_step', '?')} step{'s' if res.get('global_step') != 1 else ''}"
               f" ({why}), before the first epoch ended: no validation yet, so no best checkpoint; "
               f"the test report below is of last.npz, {res['seconds']:.1f} s")
    else:
        msg = (f"training done: {n} epoch{'s' if n != 1 else ''} ({why}), best validation accuracy "
               f"{res['best_val_acc']:.4f} at epoch {res['best_epoch']}, {res['seconds']:.1f} s")
    if resumed:
        total = sum(float(h.get("seconds") or 0.0) for h in res["history"])
        msg += f" in this session, {total:.1f} s of training over all sessions"
    return msg


def no_checkpoint_reason(out: Path) -> str:
    """Why a run directory has no last.npz, from what it does hold (metrics.jsonl)."""
    m = out / "metrics.jsonl"
    try:
        n = sum(1 for line in m.read_text().splitlines() if line.strip()) if m.is_file() else 0
    except OSError:
        n = 0
    if n:
        return (f"metrics.jsonl records {n} finished epoch{'s' if n != 1 else ''}, but no checkpoint was "
                f"written (a full disk?), so that training is lost")
    return "stopped before the first checkpoint was written"
