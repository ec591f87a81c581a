"""Augmentation ablation (issue 8): train FSDD (random and speaker-disjoint splits) and the demo with each
augmentation on / off, and write bench/results/augment_ablation.md (one row per finished cell).

Not a test: each cell is a full training run (FSDD: cnn6_rgb, 10 epochs, the README's flags; several
minutes to tens of minutes each on a shared 2-core CPU). Cells run sequentially in the order given; a cell
whose run directory already holds report.json is not run again, so the script can be restarted.

A cell is ``DATA-AUG``: DATA one of ``random`` / ``speaker`` (FSDD, stratified or speaker-disjoint split) /
``demo``, or ``loso_SPEAKER`` (FSDD speaker-disjoint with SPEAKER as the test speaker: the ``--split-seed``
whose group split puts it there; ``loso_nicolas`` is split seed 0, the ``speaker`` cells' split); AUG a key of
``AUG``. ``--loso AUG1,AUG2`` runs the five leave-one-speaker-out folds of each and tabulates mean and range
(the nicolas fold reuses the ``speaker-AUG`` run when it exists: the same command).

    python bench/augment_ablation.py --runs runs/ablation [--cells speaker-default,speaker-off,...]
    python bench/augment_ablation.py --runs runs/ablation --loso default,warp
    python bench/augment_ablation.py --list          # the cells and their flags
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FSDD = ["--audio-dir", "../shared/data/fsdd", "--label-regex", r"^(\d)_", "--group-regex", r"^\d_([a-z]+)_",
        "--sr", "8000", "--crop-seconds", "1", "--n-fft", "256", "--hop-length", "32", "--epochs", "10"]
FSDD_DIR = REPO / ".." / "shared" / "data" / "fsdd"
SPEAKERS = ("george", "jackson", "lucas", "nicolas", "yweweler")
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
    # VTLP (Jaitly and Hinton 2013): a random warp of the frequency axis, alpha ~ U[1 - W, 1 + W]
    "warp": ["--freq-warp", "0.1"],
    "warp-fixed": ["--freq-warp", "0.1", "--crops", "fixed"],
    "warp0.2": ["--freq-warp", "0.2"],
    "warp-only": ["--augment", "off", "--freq-warp", "0.1"],
    "warp-mixup0.4": ["--freq-warp", "0.1", "--mixup", "0.4"],
    "warp-no-mixup": ["--freq-warp", "0.1", "--mixup", "0"],
    # time stretch about the window's centre; with the warp: speed perturbation (Ko et al. 2015) on the image
    "stretch": ["--time-stretch", "0.2"],
    "speed": ["--freq-warp", "0.1", "--time-stretch", "0.2"],
    "speed-fixed": ["--freq-warp", "0.1", "--time-stretch", "0.2", "--crops", "fixed"],
    "speed0.3": ["--freq-warp", "0.1", "--time-stretch", "0.3"],
    # spectrogram settings of the FSDD command (not augmentation): mel images, STFT size / hop
    "mel": ["--spectrogram", "mel", "--n-mels", "128"],
    "mel40": ["--spectrogram", "mel", "--n-mels", "40"],
    "mel40-warp": ["--spectrogram", "mel", "--n-mels", "40", "--freq-warp", "0.1"],
    "mel-warp": ["--spectrogram", "mel", "--n-mels", "128", "--freq-warp", "0.1"],
    "mel64-warp": ["--spectrogram", "mel", "--n-mels", "64", "--height", "64", "--freq-warp", "0.1"],
    "fft512-warp": ["--n-fft", "512", "--hop-length", "64", "--freq-warp", "0.1"],
    # image normalisation (pipeline.spectrogram.NORMS): each frequency row's noise floor subtracted
    "floor": ["--image-norm", "floor"],
    "minmax": ["--image-norm", "minmax"],
    # additive stationary noise (engine.augment noise_db): the loudest noise D dB below the image's peak
    "noise30": ["--noise-db", "30"],
    "noise20": ["--noise-db", "20"],
    "noise40": ["--noise-db", "40"],
    "warp-noise30": ["--freq-warp", "0.1", "--noise-db", "30"],
}
ORDER = ["speaker-default", "speaker-off", "random-default", "random-off", "speaker-no-mixup", "speaker-no-masks",
         "speaker-no-gain", "speaker-no-shift", "demo-default", "demo-off", "random-no-mixup", "random-no-masks",
         "random-no-gain", "random-no-shift"]


def loso_seed(speaker, fsdd_dir=FSDD_DIR):
    """The ``--split-seed`` whose speaker-disjoint split of FSDD puts ``speaker`` in test (the first from 0)."""
    from pipeline import splits

    rx = re.compile(FSDD[FSDD.index("--group-regex") + 1])
    names = sorted(p.name for p in Path(fsdd_dir).glob("*.wav"))
    groups = [rx.match(n).group(1) for n in names]
    if speaker not in groups:
        raise SystemExit(f"no speaker {speaker!r} in {fsdd_dir}")
    first = groups.index(speaker)
    for seed in range(1000):
        if splits.group_split(groups, (0.8, 0.1, 0.1), seed)[first] == "test":
            return seed
    raise SystemExit(f"no split seed < 1000 puts {speaker!r} in test")


def cell_args(cell):
    """The ``cli.py train`` flags of a cell ``"DATA-AUG"`` (list of str): the data's flags then the augmentation's.

    A ``loso_SPEAKER`` data part is the speaker-disjoint split with the split seed that puts SPEAKER in test.
    Raises KeyError on an unknown data or augmentation name.
    """
    data, aug = cell.split("-", 1)
    if data.startswith("loso_"):
        return DATA["speaker"] + ["--split-seed", str(loso_seed(data[5:]))] + AUG[aug]
    return DATA[data] + AUG[aug]


def cell_dir(runs, cell):
    """The run directory of a cell (a LOSO fold with split seed 0 is the ``speaker`` cell: the same command)."""
    data, aug = cell.split("-", 1)
    if data.startswith("loso_") and loso_seed(data[5:]) == 0:
        return runs / f"speaker-{aug}"
    return runs / cell


def main(argv=None):
    """Run the requested cells (each skipped if its run directory holds a final report) and write the table.

    ``argv``: command-line arguments (None: ``sys.argv[1:]``). Returns the process exit code.
    """
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="runs/ablation", help="parent of the run directories")
    ap.add_argument("--cells", default=",".join(ORDER), help="comma-separated cells, in order")
    ap.add_argument("--cache-dir", default=None, help="passed to train (dataset caches)")
    ap.add_argument("--table", default=str(REPO / "bench" / "results" / "augment_ablation.md"))
    ap.add_argument("--extra", default="", help="extra train flags for every cell (space-separated)")
    ap.add_argument("--loso", default="", help="comma-separated AUG keys: run their 5 leave-one-speaker-out folds")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--table-only", action="store_true", help="rewrite the table from the finished runs")
    a = ap.parse_args(argv)
    cells = [c for c in a.cells.split(",") if c]
    loso = [x for x in a.loso.split(",") if x]
    if loso and a.cells == ap.get_default("cells"):
        cells = []
    todo = cells + [f"loso_{sp}-{aug}" for aug in loso for sp in SPEAKERS]
    if a.list:
        for c in todo:
            print(c, " ".join(cell_args(c)))
        return 0
    runs = Path(a.runs)
    if a.table_only:
        todo = []
    for c in todo:
        out = cell_dir(runs, c)
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
        write_table(runs, Path(a.table))
    write_table(runs, Path(a.table))
    return 0


def cell_result(out):
    """(report, config, summed epoch seconds, last epoch's train accuracy) of a finished run directory, or None."""
    rp = out / "report.json"
    if not rp.is_file():
        return None
    rep = json.loads(rp.read_text())
    conf = json.loads((out / "config.json").read_text())
    hist = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines() if s.strip()]
    last = hist[-1].get("train_acc") if hist else None
    return rep, conf, sum(h.get("seconds") or 0 for h in hist), float("nan") if last is None else float(last)


def _order(name):
    known = ORDER.index(name) if name in ORDER else len(ORDER)
    return known, name


#: Measurements of earlier code, kept in the results file (their run directories are gone).
HISTORY = """\
## Earlier code (kept; not regenerated)

Format-3 cache (whole clips, per-epoch crops), main at d5e65de, 2026-12-02, `--runs runs/ablation` (same
transform and augmentation as the cells above; speaker-default measured 0.630 there, 0.608 here: the spread of
reruns of one cell across code revisions):

| cell | flags beyond the data's | crops | best val acc (epoch) | test acc | macro-F1 | train s |
| --- | --- | --- | --- | --- | --- | --- |
| speaker-default | `(none)` | random | 0.900 (10) | **0.630** | 0.606 | 539 |
| random-default | `(none)` | random | 0.996 (6) | **0.984** | 0.984 | 609 |
| demo-default | `(none)` | random | 1.000 (3) | **1.000** | 1.000 | 61 |
| demo-fixed | `--crops fixed` | fixed | 1.000 (3) | **1.000** | 1.000 | 59 |
| demo-speed | `--freq-warp 0.1 --time-stretch 0.2` | random | 1.000 (3) | **1.000** | 1.000 | 62 |
| speaker-fixed | `--crops fixed` | fixed | 0.882 (10) | **0.610** | 0.572 | 186 |
| speaker-mel40 | `--spectrogram mel --n-mels 40` | random | 0.820 (10) | **0.594** | 0.556 | 334 |
| speaker-speed | `--freq-warp 0.1 --time-stretch 0.2` | random | 0.854 (10) | **0.572** | 0.541 | 1154 |
| speaker-warp | `--freq-warp 0.1` | random | 0.864 (5) | **0.640** | 0.610 | 547 |

Before the transform fix (main at 0ac67e7, 2026-11-29: the cache stored red(viridis(x)) for RGB runs, so
training saw the colormap applied twice; no augmentation; one fixed crop per track; README's FSDD flags):

| data | best val acc (epoch) | test acc | macro-F1 | predict on the test files |
| --- | --- | --- | --- | --- |
| FSDD speaker-disjoint | 0.738 (7) | **0.670** | 0.647 | |
| FSDD random | 0.984 (6) | **0.976** | 0.976 | 0.116 (evaluate said 0.972) |
| demo (8 epochs) | | **0.972** | | 0.42-0.44 (`--crops 1`) |

After the transform fix, with the format-2 cache (one seeded crop per track cached, so no per-epoch crops;
7b5a06f / 9a85918, 2026-12-01/02; `python bench/augment_ablation.py --runs /tmp/i8b/runs`):

| cell | augmentation | best val acc (epoch) | test acc | macro-F1 |
| --- | --- | --- | --- | --- |
| speaker-default | masks 12/20 x2, gain 6, shift 0.1, mixup 0.2 | 0.858 (10) | **0.742** | 0.723 |
| speaker-off | off | 0.764 (10) | **0.682** | 0.668 |
| speaker-no-mixup | default without mixup | 0.890 (10) | **0.726** | 0.722 |
| speaker-no-masks | default without masks | 0.812 (10) | **0.548** | 0.550 |
| speaker-no-gain | default without gain | 0.854 (10) | **0.684** | 0.656 |
| speaker-no-shift | default without shift | 0.866 (10) | **0.642** | 0.635 |
| random-default | default | 0.976 (7) | **0.980** | 0.980 |
| random-off | off | 0.984 (8) | **0.972** | 0.972 |
| random-no-mixup | default without mixup | 0.996 (10) | **0.972** | 0.972 |
| demo-default | default | 1.000 (3) | **1.000** | 1.000 |
| demo-off | off | 1.000 (3) | **1.000** | 1.000 |
"""


def write_table(runs, table):
    """The results file: every finished cell under ``runs`` (sorted by the script's order), LOSO folds, history."""
    rows = ["| cell | flags beyond the data's | augmentation (config.json) | crops | best val acc (epoch) | test acc "
            "| macro-F1 | train acc (last epoch) | train s |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    loso = {}
    dirs = sorted((d for d in runs.iterdir() if d.is_dir()), key=lambda d: _order(d.name)) if runs.is_dir() else []
    for out in dirs:
        c = out.name
        res = cell_result(out)
        if res is None or "-" not in c:
            continue
        rep, conf, secs, train_acc = res
        data, aug = c.split("-", 1)
        if data == "speaker":
            loso.setdefault(aug, {})["nicolas"] = (rep, conf)
        if data.startswith("loso_"):
            loso.setdefault(aug, {})[data[5:]] = (rep, conf)
            continue
        if aug not in AUG:
            continue
        au = conf["train"].get("augment") or {}
        on = ", ".join(f"{k}={v:g}" for k, v in au.items() if v) or "off"
        if (conf.get("spectrogram") or {}).get("norm", "minmax") != "minmax":
            on += f"; image norm {conf['spectrogram']['norm']}"
        flags = " ".join(AUG[aug]) or "(none)"
        rows.append(f"| {c} | `{flags}` | {on} | {conf['train'].get('crops')} | "
                    f"{rep.get('val_accuracy', float('nan')):.3f} ({rep.get('best_epoch')}) | "
                    f"**{rep['accuracy']:.3f}** | {rep.get('macro_f1', float('nan')):.3f} | {train_acc:.3f} | {secs:.0f} |")
    lo = ["| configuration | " + " | ".join(f"test {s}" for s in SPEAKERS) + " | mean | range |",
          "| --- | " + " | ".join("---" for _ in SPEAKERS) + " | --- | --- |"]
    for aug, folds in sorted(loso.items(), key=lambda kv: list(AUG).index(kv[0]) if kv[0] in AUG else 99):
        if len(folds) < 2 or aug not in AUG:
            continue
        accs = [folds[s][0]["accuracy"] for s in SPEAKERS if s in folds]
        cells = [f"{folds[s][0]['accuracy']:.3f}" if s in folds else "" for s in SPEAKERS]
        note = "" if len(accs) == len(SPEAKERS) else f" ({len(accs)} of {len(SPEAKERS)} folds)"
        lo.append(f"| {aug} (`{' '.join(AUG[aug]) or 'default'}`) | " + " | ".join(cells)
                  + f" | **{sum(accs) / len(accs):.3f}**{note} | {min(accs):.3f}-{max(accs):.3f} |")
    text = ["# Augmentation ablation (bench/augment_ablation.py)", "",
            f"Cells of this code (run directories under `{runs}`; cnn6_rgb, batch 16, lr 5e-4; FSDD: the README's "
            "flags, 10 epochs; demo: 8 epochs; 'crops' random = a new window per epoch, fixed = one per track):", "",
            *rows, ""]
    if len(lo) > 2:
        text += ["Leave-one-speaker-out (FSDD, `--split group --split-seed S`: 3 speakers train, 1 val, the named "
                 "one test; test accuracy of the best-validation checkpoint):", "", *lo, ""]
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text("\n".join(text) + "\n" + HISTORY)


if __name__ == "__main__":
    sys.exit(main())
