"""Augmentation ablation (issue 8): train FSDD (random and speaker-disjoint splits) and the demo with each
augmentation on / off, and write bench/results/augment_ablation.md (one row per finished cell).

Not a test: each cell is a full training run (FSDD: cnn6_rgb, 10 epochs, the README's flags; several
minutes to tens of minutes each on a shared 2-core CPU). Cells run sequentially in the order given; a cell
whose run directory already holds report.json is not run again, so the script can be restarted.

    python bench/augment_ablation.py --runs runs/ablation [--cells speaker-default,speaker-off,...]
    python bench/augment_ablation.py --list          # the cells and their flags
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FSDD = ["--audio-dir", "../shared/data/fsdd", "--label-regex", r"^(\d)_", "--group-regex", r"^\d_([a-z]+)_",
        "--sr", "8000", "--crop-seconds", "1", "--n-fft", "256", "--hop-length", "32", "--epochs", "10"]
DATA = {"random": FSDD, "speaker": FSDD + ["--split", "group"], "demo": []}
AUG = {
    "default": [],
    "off": ["--augment", "off"],
    "no-masks": ["--n-masks", "0"],
    "no-gain": ["--gain-db", "0"],
    "no-shift": ["--time-shift", "0"],
    "no-mixup": ["--mixup", "0"],
    "masks-only": ["--augment", "off", "--freq-mask", "12", "--time-mask", "20", "--n-masks", "2"],
    "mixup-only": ["--augment", "off", "--mixup", "0.2"],
    "fixed": ["--crops", "fixed"],  # default augmentation, one crop window per track for the whole run
    "off-fixed": ["--augment", "off", "--crops", "fixed"],  # nothing random: the paper's setting
}
ORDER = ["speaker-default", "speaker-off", "random-default", "random-off", "speaker-no-mixup", "speaker-no-masks",
         "speaker-no-gain", "speaker-no-shift", "demo-default", "demo-off", "random-no-mixup", "random-no-masks",
         "random-no-gain", "random-no-shift"]


def cell_args(cell):
    data, aug = cell.split("-", 1)
    return DATA[data] + AUG[aug]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="runs/ablation", help="parent of the run directories")
    ap.add_argument("--cells", default=",".join(ORDER), help="comma-separated cells, in order")
    ap.add_argument("--cache-dir", default=None, help="passed to train (dataset caches)")
    ap.add_argument("--table", default=str(REPO / "bench" / "results" / "augment_ablation.md"))
    ap.add_argument("--extra", default="", help="extra train flags for every cell (space-separated)")
    ap.add_argument("--list", action="store_true")
    a = ap.parse_args(argv)
    cells = [c for c in a.cells.split(",") if c]
    if a.list:
        for c in cells:
            print(c, " ".join(cell_args(c)))
        return 0
    runs = Path(a.runs)
    for c in cells:
        out = runs / c
        if not (out / "report.json").is_file():
            cmd = [sys.executable, "cli.py", "train", *cell_args(c), *a.extra.split(), "--out", str(out), "--quiet"]
            if a.cache_dir:
                cmd += ["--cache-dir", a.cache_dir]
            if (out / "checkpoints" / "last.npz").is_file():
                cmd = [sys.executable, "cli.py", "train", "--resume", "--out", str(out), "--quiet"]
            print(time.strftime("%H:%M:%S"), "run", " ".join(cmd), flush=True)
            t0 = time.time()
            r = subprocess.run(cmd, cwd=REPO)
            print(time.strftime("%H:%M:%S"), c, "exit", r.returncode, f"{time.time() - t0:.0f} s", flush=True)
        write_table(runs, cells, Path(a.table))
    return 0


def write_table(runs, cells, table):
    rows = ["| cell | augmentation (config.json) | best val acc (epoch) | test acc | macro-F1 | train s |",
            "| --- | --- | --- | --- | --- | --- |"]
    for c in cells:
        out = runs / c
        rp = out / "report.json"
        if not rp.is_file():
            continue
        rep = json.loads(rp.read_text())
        conf = json.loads((out / "config.json").read_text())
        hist = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines() if s.strip()]
        aug = conf["train"].get("augment") or {}
        on = ", ".join(f"{k}={v:g}" for k, v in aug.items() if v) or "off"
        secs = sum(h.get("seconds") or 0 for h in hist)
        rows.append(f"| {c} | {on} | {rep.get('val_accuracy', float('nan')):.3f} ({rep.get('best_epoch')}) | "
                    f"**{rep['accuracy']:.3f}** | {rep.get('macro_f1', float('nan')):.3f} | {secs:.0f} |")
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text("# Augmentation ablation (bench/augment_ablation.py)\n\n" + "\n".join(rows) + "\n")


if __name__ == "__main__":
    sys.exit(main())
