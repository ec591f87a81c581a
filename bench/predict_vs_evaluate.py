"""predict vs evaluate on a trained run's test files (issue 8): the two user-facing paths on the same audio.

    python bench/predict_vs_evaluate.py RUN_DIR [RUN_DIR ...] [--out bench/results/predict_vs_evaluate.md]

For each run: ``evaluate`` (``cli.py evaluate RUN --json``: the cached rows, the run's ``eval_crops`` windows)
and ``predict`` (``cli.py predict RUN FILE... --json``: every test file decoded afresh from its path, the same
windows) are run as subprocesses, as a user runs them; the table gives both accuracies, the number of files
whose predicted class differs, and the largest probability difference. Not a test: it needs a trained run.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def compare(run: Path) -> dict:
    """Accuracy of evaluate and of predict on the run's test split, disagreements, max |dp|."""
    import cli

    conf, cfg, _, _ = cli._load_run(run)
    ds = cli._run_dataset(run, conf)
    rows = ds.indices("test")
    by_id = {t["id"]: t["path"] for t in ds.manifest["tracks"]}
    files = [by_id[str(ds.ids[r])] for r in rows]
    ev = json.loads(subprocess.run([sys.executable, "cli.py", "evaluate", str(run), "--json"], cwd=REPO,
                                   check=True, capture_output=True, text=True).stdout)
    out = subprocess.run([sys.executable, "cli.py", "predict", str(run), *files, "--json"], cwd=REPO,
                         check=True, capture_output=True, text=True).stdout
    recs = [json.loads(s) for s in out.splitlines() if s.strip()]
    classes = list(ds.classes)
    pred = np.array([classes.index(r["class"]) for r in recs])
    y = ds.labels[rows]
    from engine.config import model_mode
    from engine.evaluate import evaluate_split

    _, net_cfg, net, _ = cli._load_run(run)
    _, yt, yp, probs = evaluate_split(net, ds, "test", net_cfg.batch_size, net_cfg.device,
                                      model_mode(net_cfg.model), eval_crops=net_cfg.eval_crops)
    p_pred = np.array([[r["probabilities"][c] for c in classes] for r in recs])
    return dict(run=str(run), model=cfg.model, crops=cfg.crops, eval_crops=cfg.eval_crops, files=len(files),
                evaluate_acc=ev["accuracy"], predict_acc=float((pred == y).mean()),
                disagree=int((pred != yp).sum()), max_abs_dp=float(np.abs(p_pred - probs).max()))


def main(argv=None):
    """For each run directory in ``argv``: predict vs evaluate on its test files, printed (and --out) as Markdown."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out", default=None, help="also write the markdown table here")
    a = ap.parse_args(argv)
    lines = ["| run | model | crops / eval windows | test files | evaluate acc | predict acc | files that disagree "
             "| max abs prob diff |", "|---|---|---|---|---|---|---|---|"]
    for run in a.runs:
        r = compare(Path(run))
        lines.append(f"| {Path(r['run']).name} | {r['model']} | {r['crops']} / {r['eval_crops']} | {r['files']} | "
                     f"{r['evaluate_acc']:.4f} | {r['predict_acc']:.4f} | {r['disagree']} | {r['max_abs_dp']:.2e} |")
        print(lines[-1], flush=True)
    text = "\n".join(["# predict vs evaluate on the test files (bench/predict_vs_evaluate.py)", ""] + lines) + "\n"
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
