#!/usr/bin/env python
"""hitcnn command line: train, preprocess, evaluate, predict, grid, reproduce,
models, gradcheck, inspect.

``python cli.py train`` with no data arguments trains on the embedded
**synthetic** demo dataset (pipeline/synth.py), built once into
``$HITCNN_CACHE`` (default ``~/.cache/hitcnn``). Run ``python cli.py CMD --help``
for every flag and its default.

Exit codes: 0 success; 1 unexpected error (with its traceback); 2 bad
arguments (checked before any data is built or folder made), a missing /
malformed dataset (the expected layout is printed), a damaged run file
(config.json, checkpoint) or, for ``predict``, any file that could not be
predicted; 3 NaN / inf loss or weights; 4 a checkpoint could not be written
when the run ended (a full disk: the message gives the resume command); 130
interrupted with Ctrl-C (training: a checkpoint was saved; preprocessing:
finished tracks are kept, run the same command again). Every flag is checked
before any work (``cli_checks.problems``). ``train --resume`` on a run stopped before its first
checkpoint starts it again from scratch with its saved configuration.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from pipeline import sources

REPO = Path(__file__).resolve().parent

MODEL_NAMES = ("cnn2_mono", "cnn4_mono", "cnn4_rgb", "cnn6_rgb")

#: the paper's results (train / validation / test accuracy in %, per architecture)
PAPER_RESULTS = {
    "cnn2_mono": (44, 41, 42),
    "cnn4_mono": (46, 51, 51),
    "cnn4_rgb": (53, 55, 53),
    "cnn6_rgb": (59, 63, 61),
}

#: the demo default: fewer epochs than the paper's 100 cap (the synthetic task is easy)
DEMO_EPOCHS = 8

EXPECTED_LAYOUT = """\
expected dataset layouts:
  FMA (github.com/mdeff/fma: unzip fma_metadata.zip and fma_small.zip):
    --audio-dir DATA/fma_small --metadata DATA/fma_metadata/tracks.csv
      DATA/fma_metadata/tracks.csv      FMA's tracks.csv (2 header rows + a track_id row)
      DATA/fma_small/000/000002.mp3     AUDIO_DIR/{id:06d}[:3]/{id:06d}.mp3
  any audio folder, labels from a CSV:
    --audio-dir DIR --labels labels.csv     (columns: path,label[,group]; paths relative to DIR)
  any audio folder, labels from file names:
    --audio-dir DIR --label-regex '^(\\d)_'  (e.g. FSDD: DIR/7_jackson_32.wav is the digit 7)
  a dataset cache made by `python cli.py preprocess`:
    --data DATASET_DIR                      (holds manifest.json and the image arrays)"""


class UsageError(Exception):
    """Bad arguments or dataset path: exit code 2, message + expected layout."""

    def __init__(self, msg, layout=False):
        super().__init__(msg)
        self.layout = layout


# ============================================================================ helpers


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


def _list_of(convert, what):
    """An argparse ``type`` for a comma-separated list; its ``__name__`` is what argparse's error names."""

    def parse(s: str):
        parts = [x.strip() for x in s.split(",") if x.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {s!r}")
        try:
            return [convert(x) for x in parts]
        except ValueError:
            bad = next(x for x in parts if not _converts(convert, x))
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {bad!r}") from None

    parse.__name__ = f"comma-separated {what}"
    return parse


def _converts(convert, x) -> bool:
    try:
        convert(x)
        return True
    except ValueError:
        return False


_floats = _list_of(float, "numbers")
_ints = _list_of(int, "integers")
_strs = _list_of(str, "names")


def _device_check(device: str) -> None:
    """Raise UsageError with the backend's message when the device is unusable."""
    import kernels

    try:
        kernels.get_backend(device)
    except (RuntimeError, ValueError) as exc:
        raise UsageError(f"--device {device}: {exc}") from exc
    if device == "gpu":
        try:
            import cupy

            if cupy.cuda.runtime.getDeviceCount() < 1:
                raise UsageError("--device gpu: no CUDA device found (cupy sees 0 devices); use --device cpu")
        except UsageError:
            raise
        except Exception as exc:
            raise UsageError(f"--device gpu: CUDA is unavailable ({exc}); use --device cpu") from exc


#: TrainConfig field -> the flag that sets it (for error messages)
_FLAG = {"batch_size": "--batch-size", "weight_decay": "--weight-decay", "checkpoint_every": "--checkpoint-every",
         "max_steps": "--max-steps", "step_delay": "--step-delay", "freq_mask": "--freq-mask",
         "time_mask": "--time-mask", "n_masks": "--n-masks", "gain_db": "--gain-db", "time_shift": "--time-shift",
         "freq_warp": "--freq-warp", "time_stretch": "--time-stretch", "eval_crops": "--eval-crops"}


def _check_train_config(cfg, where="") -> None:
    """Raise UsageError naming each invalid setting of a TrainConfig by its flag (engine.train.config_problems)."""
    from engine.train import config_problems

    bad = config_problems(cfg)
    if bad:
        raise UsageError(where + "; ".join(f"{_FLAG.get(f, '--' + f)} {v!r}: expected {e}" for f, v, e in bad))


def _check_data_args(args) -> None:
    """Raise UsageError for data / spectrogram flags no pipeline run could use (before anything is built)."""
    workers = getattr(args, "workers", None)
    if workers is not None and workers < 0:
        raise UsageError(f"--workers {workers}: expected an integer >= 0 (0: preprocess in this process)")
    for flag, name in (("--demo-tracks", "demo_tracks"), ("--sr", "sr"), ("--n-fft", "n_fft"),
                       ("--hop-length", "hop_length"), ("--height", "height"), ("--width", "width"),
                       ("--n-mels", "n_mels")):
        v = getattr(args, name, None)
        if v is not None and v < 1:
            raise UsageError(f"{flag} {v}: expected an integer >= 1")
    for flag, name in (("--crop-seconds", "crop_seconds"), ("--demo-seconds", "demo_seconds"),
                       ("--clip-seconds", "clip_seconds")):
        v = getattr(args, name, None)
        if v is not None and not (v > 0 and v != float("inf")):
            raise UsageError(f"{flag} {v}: expected a finite number of seconds > 0")
    clip_s, crop_s = getattr(args, "clip_seconds", None), getattr(args, "crop_seconds", None)
    if clip_s is not None and crop_s is not None and clip_s < crop_s:
        raise UsageError(f"--clip-seconds {clip_s:g}: expected at least --crop-seconds {crop_s:g} (the windows "
                         f"are cut from the clip)")


def _check_flags(args, command: str) -> None:
    """Raise UsageError (one line, every problem) for flags of ``command`` no run could use (cli_checks.problems)."""
    import cli_checks

    bad = cli_checks.problems(args, command)
    if bad:
        raise UsageError("; ".join(bad))


def _read_json(path: Path, what="config.json") -> dict:
    """``json.loads`` of a file; UsageError naming the file when it is unreadable or not a JSON object."""
    try:
        conf = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: unreadable {what} ({exc})") from exc
    if not isinstance(conf, dict):
        raise UsageError(f"{path}: unreadable {what} (not a JSON object)")
    return conf


def _run_config(run: Path):
    """(config dict, TrainConfig) of a run directory, with clear errors for a missing or damaged config.json."""
    from engine.train import TrainConfig

    cf = run / "config.json"
    conf = _read_json(cf)
    try:
        cfg = TrainConfig(**conf["train"])
        conf["data"]["dataset_dir"]
    except (KeyError, TypeError) as exc:
        raise UsageError(f"{cf}: not a hitcnn run configuration (bad or missing entry {exc})") from exc
    return conf, cfg


# ============================================================================ arguments


def add_data_args(p: argparse.ArgumentParser) -> None:
    """Flags that choose the data and how it becomes images (shared by train / preprocess / grid)."""
    g = p.add_argument_group("data (none given: the embedded synthetic demo dataset)")
    g.add_argument("--data", metavar="DATASET_DIR", default=None,
                   help="a dataset cache made by `preprocess` (default: none)")
    g.add_argument("--audio-dir", metavar="DIR", default=None,
                   help="audio folder: FMA's fma_small/ (with --metadata), or any folder "
                        "(with --labels or --label-regex) (default: none)")
    g.add_argument("--metadata", metavar="TRACKS_CSV", default=None,
                   help="FMA's fma_metadata/tracks.csv: popularity labels from ('track','listens') (default: none)")
    g.add_argument("--labels", metavar="CSV", default=None,
                   help="CSV with columns path,label[,group] for an audio folder (default: none)")
    g.add_argument("--label-regex", metavar="REGEX", default=None,
                   help=r"regex on file names whose group 1 (or (?P<label>..)) is the label, e.g. FSDD '^(\d)_' "
                        "(default: none)")
    g.add_argument("--group-regex", metavar="REGEX", default=None,
                   help=r"regex on file names whose group 1 is the group for --split group, e.g. the FSDD "
                        r"speaker '^\d_([a-z]+)_' (default: none)")
    g.add_argument("--target", choices=("popularity", "genre"), default="popularity",
                   help="FMA label: popularity buckets from listens, or genre_top (default: popularity)")
    g.add_argument("--bucket-edges", metavar="E1,E2", type=_floats, default=None,
                   help="explicit listens thresholds low < E1 <= medium < E2 <= high (default: quantiles "
                        "reproducing the paper's shares 16.8/46.7/36.5%%)")
    g.add_argument("--subset", choices=("small", "medium", "large"), default="small",
                   help="FMA subset to use, subset <= this (default: small)")
    g.add_argument("--split", choices=("stratified", "fma", "group"), default=None,
                   help="stratified 80/10/10 by class; FMA's own ('set','split'); or group-disjoint (FMA: artist, "
                        "folders: --group-regex / CSV group column) (default: stratified, as in the paper; the demo uses its own fma split)")
    g.add_argument("--split-seed", type=int, default=0, help="seed of the stratified / group split (default: 0)")
    g.add_argument("--cache-dir", metavar="DIR", default=None,
                   help="where dataset caches (and the demo data) are built (default: $HITCNN_CACHE or "
                        "~/.cache/hitcnn)")
    g.add_argument("--workers", type=int, default=None,
                   help="preprocessing processes; 0 = in this process, no worker processes (default: all cores)")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bars (default: off)")
    s = p.add_argument_group("spectrogram images (the paper's defaults)")
    s.add_argument("--sr", type=int, default=22050, help="sample rate in Hz the audio is resampled to (default: 22050)")
    s.add_argument("--crop-seconds", type=float, default=10.0,
                   help="length of the crop window the model sees, in seconds (default: 10)")
    s.add_argument("--clip-seconds", type=float, default=None,
                   help="longest stretch of each file that is cached (its centre), from which the crop windows "
                        "are cut (default: 3 x --crop-seconds = 30 s, an FMA clip)")
    s.add_argument("--n-fft", type=int, default=2048, help="STFT size in samples (default: 2048 = 93 ms at 22050 Hz)")
    s.add_argument("--hop-length", type=int, default=512, help="STFT hop in samples (default: 512 = 23 ms at 22050 Hz)")
    s.add_argument("--spectrogram", choices=("stft", "mel"), default="stft",
                   help="linear STFT (the paper's) or Slaney mel (default: stft)")
    s.add_argument("--n-mels", type=int, default=128, help="mel bands with --spectrogram mel (default: 128)")
    s.add_argument("--height", type=int, default=102, help="image height = frequency rows (default: 102)")
    s.add_argument("--width", type=int, default=159, help="image width = time columns (default: 159)")
    s.add_argument("--colormap", default="viridis", help="matplotlib colormap for the rgb models (default: viridis)")
    d = p.add_argument_group("embedded demo dataset (used when no data flag is given)")
    d.add_argument("--demo-tracks", type=int, default=360,
                   help="number of synthetic clips (default: 360)")
    d.add_argument("--demo-seconds", type=float, default=12.0,
                   help="length of each synthetic clip in seconds, cropped to --crop-seconds (default: 12)")


def add_train_args(p: argparse.ArgumentParser, grid: bool = False, augment_off: bool = False) -> None:
    """Hyperparameters, device, seed (lists of values for ``grid``)."""
    g = p.add_argument_group("training")
    if not grid:
        g.add_argument("--model", choices=MODEL_NAMES, default="cnn6_rgb",
                       help="architecture (default: cnn6_rgb, the paper's best)")
        g.add_argument("--batch-size", "-b", type=int, default=16, help="mini-batch size (default: 16)")
        g.add_argument("--lr", type=float, default=5e-4, help="Adam learning rate (default: 5e-4)")
        g.add_argument("--dropout", type=float, default=0.4,
                       help="dropout probability before the last layer, 0 <= p < 1 (default: 0.4)")
        g.add_argument("--weight-decay", type=float, default=0.0, help="Adam L2 weight decay (default: 0)")
    g.add_argument("--epochs", "-e", type=int, default=None,
                   help=f"maximum epochs (default: 100, the paper's cap; {DEMO_EPOCHS} on the embedded demo data)")
    g.add_argument("--patience", type=int, default=None,
                   help="early stopping: stop after this many (>= 1) epochs in a row without a better "
                        "validation accuracy (default: off)")
    g.add_argument("--device", "-d", choices=("cpu", "gpu"), default="cpu",
                   help="cpu (Numba kernels) or gpu (CuPy kernels; needs CuPy and CUDA) (default: cpu)")
    g.add_argument("--seed", type=int, default=0, help="seed of weights, data order and dropout (default: 0)")
    g.add_argument("--checkpoint-every", type=int, default=50,
                   help="also checkpoint every N steps inside an epoch, for --resume (default: 50; 0 = epoch ends)")
    g.add_argument("--distributed", action="store_true",
                   help="data-parallel over MPI ranks: launch with `mpirun -n K python cli.py ... --distributed` "
                        "(train: the global --batch-size is split over the K ranks; grid: the runs are divided "
                        "over the ranks) (default: off; needs pip install -e '.[mpi]')")
    g.add_argument("--sync-bn", action="store_true",
                   help="with --distributed: BatchNorm statistics over the whole global batch, as one process "
                        "(default: per-rank statistics, as PyTorch DDP)")
    g.add_argument("--crops", choices=("random", "fixed"), default="fixed" if augment_off else "random",
                   help="training crop windows: 'random' = a new random --crop-seconds window of each cached clip "
                        "every epoch, 'fixed' = one seeded window per track for the whole run (default here: "
                        f"{'fixed' if augment_off else 'random'})")
    g.add_argument("--eval-crops", type=int, default=1 if augment_off else 3, metavar="K",
                   help="validation / test / evaluate / predict: average the probabilities of K evenly spaced "
                        f"windows per clip (1: the centre window) (default here: {1 if augment_off else 3})")
    g.add_argument("--max-steps", type=int, default=None, help=argparse.SUPPRESS)
    g.add_argument("--step-delay", type=float, default=0.0, help=argparse.SUPPRESS)
    add_augment_args(p, default="off" if augment_off else "default")


def add_augment_args(p: argparse.ArgumentParser, default: str = "default") -> None:
    """Batch-time augmentation flags (engine.augment.AugmentConfig); unset ones come from ``--augment``."""
    from engine.augment import DEFAULT

    a = p.add_argument_group(
        "augmentation of the training batches (engine.augment; evaluation and predict never augment)")
    a.add_argument("--augment", choices=("default", "off"), default=default,
                   help=f"starting point of the flags below: 'default' = --freq-mask {DEFAULT.freq_mask} "
                        f"--time-mask {DEFAULT.time_mask} --n-masks {DEFAULT.n_masks} --gain-db {DEFAULT.gain_db:g} "
                        f"--time-shift {DEFAULT.time_shift:g} --mixup {DEFAULT.mixup:g} "
                        f"--freq-warp {DEFAULT.freq_warp:g} --time-stretch {DEFAULT.time_stretch:g}; 'off' = all 0 "
                        f"(default here: {default})")
    a.add_argument("--freq-mask", type=int, default=None, metavar="F",
                   help="SpecAugment: largest frequency-mask height in image rows (0: none; default: from --augment)")
    a.add_argument("--time-mask", type=int, default=None, metavar="T",
                   help="SpecAugment: largest time-mask width in image columns (0: none; default: from --augment)")
    a.add_argument("--n-masks", type=int, default=None, metavar="M",
                   help="SpecAugment: masks of each kind per image (0: none; default: from --augment)")
    a.add_argument("--gain-db", type=float, default=None, metavar="G",
                   help="random gain up to G dB either way, as a brightness shift of the image (0: none; default: from --augment)")
    a.add_argument("--time-shift", type=float, default=None, metavar="S",
                   help="random time shift up to this fraction of the window either way (0: none; default: from --augment)")
    a.add_argument("--mixup", type=float, default=None, metavar="ALPHA",
                   help="mixup with lam ~ Beta(ALPHA, ALPHA), soft targets (0: off; default: from --augment)")
    a.add_argument("--freq-warp", type=float, default=None, metavar="W",
                   help="VTLP (Jaitly and Hinton 2013): warp the frequency axis by a random factor in [1 - W, 1 + W] "
                        "(0: none; default: from --augment)")
    a.add_argument("--time-stretch", type=float, default=None, metavar="S",
                   help="stretch the time axis about the window's centre by a random factor in [1 - S, 1 + S] "
                        "(0: none; default: from --augment)")


def augment_config(args) -> dict:
    """The AugmentConfig fields of the parsed flags: ``--augment``'s set, then every flag given."""
    from engine.augment import DEFAULT, OFF

    base = (OFF if getattr(args, "augment", "default") == "off" else DEFAULT).to_dict()
    for k in base:
        v = getattr(args, k, None)
        if v is not None:
            base[k] = v
    return base


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser with every subcommand."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = argparse.ArgumentParser(
        prog="python cli.py",
        description="hitcnn: train CNNs from scratch (no deep-learning framework) on audio spectrograms. "
                    "`python cli.py train` with no data flags trains on the embedded SYNTHETIC demo dataset.",
        epilog=EXPECTED_LAYOUT, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    t = sub.add_parser("train", help="train a model (no data flags: the synthetic demo)",
                       description="Train a model into a run directory (config.json, metrics.jsonl, checkpoints/, "
                                   "report.json, curves.png, confusion.png). With no data flags it builds and trains "
                                   f"on the embedded SYNTHETIC demo dataset ({DEMO_EPOCHS} epochs unless --epochs).",
                       epilog=EXPECTED_LAYOUT, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(t)
    add_train_args(t)
    t.add_argument("--out", "-o", metavar="RUN_DIR", default=None,
                   help="run directory (default: runs/<data>-<model>-<time>)")
    t.add_argument("--resume", "-r", action="store_true",
                   help="continue the run in --out from its last checkpoint, with its saved config (default: off)")
    t.add_argument("--overfit-batch", action="store_true",
                   help="debug: train on one fixed batch; the loss must go to ~0 (default: off)")
    t.set_defaults(func=cmd_train)

    pp = sub.add_parser("preprocess", help="build a dataset cache (images, labels, split, manifest)",
                        description="Decode, crop and turn audio into spectrogram images once; writes a dataset "
                                    "directory usable with `train --data DIR`.",
                        epilog=EXPECTED_LAYOUT, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(pp)
    pp.add_argument("--mode", choices=("mono", "rgb"), default="rgb",
                    help="image channels: mono for *_mono models, rgb for *_rgb (default: rgb)")
    pp.add_argument("--out", "-o", metavar="PARENT_DIR", default=None,
                    help="folder in which the dataset directory <name>-<hash> is made "
                         "(default: <cache-dir>/datasets)")
    pp.set_defaults(func=cmd_preprocess)

    e = sub.add_parser("evaluate", help="test metrics of a run's best checkpoint", formatter_class=fmt,
                       description="Accuracy, per-class precision/recall/F1, macro-F1, confusion matrix and the "
                                   "majority-class baseline of a run's best checkpoint on one split.")
    e.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by train")
    e.add_argument("--split", choices=("train", "val", "test"), default="test", help="split to evaluate")
    e.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which checkpoint")
    e.add_argument("--json", action="store_true", help="print JSON instead of tables")
    e.add_argument("--crops", type=int, default=None, metavar="K",
                   help="evenly spaced windows per clip whose probabilities are averaged (default: the run's "
                        "--eval-crops, as in its validation and test)")
    e.add_argument("--audio-dir", metavar="DIR", default=None,
                   help="evaluate on this folder of new labelled audio instead of a split (preprocessed with "
                        "the run's spectrogram settings into the cache); labels from --label-regex or --labels")
    e.add_argument("--label-regex", metavar="REGEX", default=None,
                   help="with --audio-dir: regex on file names whose group 1 is the label (a class of the run)")
    e.add_argument("--labels", metavar="CSV", default=None,
                   help="with --audio-dir: CSV with columns path,label (labels: classes of the run)")
    e.add_argument("--cache-dir", metavar="DIR", default=None,
                   help="where the --audio-dir cache, or a rebuilt missing cache of the run, is built "
                        "(default: the run's, else $HITCNN_CACHE or ~/.cache/hitcnn)")
    e.add_argument("--workers", type=int, default=None, help="preprocessing processes (default: all cores)")
    e.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    e.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser("predict", help="class and probabilities of audio files", formatter_class=fmt,
                        description="Class and probabilities for each audio file, averaged over --crops evenly "
                                    "spaced windows of its clip (the run's spectrogram settings and evaluation "
                                    "rule: the same probabilities as `evaluate` gives the file).")
    pr.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by train")
    pr.add_argument("files", metavar="FILE", nargs="+", help="audio files (mp3, wav, flac, ogg)")
    pr.add_argument("--crops", type=int, default=None, metavar="K",
                    help="evenly spaced windows per clip whose probabilities are averaged (default: the run's "
                         "--eval-crops)")
    pr.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which checkpoint")
    pr.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    pr.set_defaults(func=cmd_predict)

    gr = sub.add_parser("grid", help="the paper's grid search over lr, batch size, dropout",
                        description="Train one run per combination (each a normal run directory under --out) and "
                                    "write grid.csv and grid.md: validation accuracy per combination, best first.",
                        epilog=EXPECTED_LAYOUT, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(gr)
    add_train_args(gr, grid=True)
    gr.add_argument("--model", type=_strs, default=["cnn6_rgb"], help="comma-separated architectures (default: cnn6_rgb)")
    gr.add_argument("--lr", type=_floats, default=[1e-3, 5e-4, 1e-4], help="comma-separated learning rates "
                                                                             "(default: 1e-3,5e-4,1e-4)")
    gr.add_argument("--batch-size", type=_ints, default=[16, 32], help="comma-separated batch sizes (default: 16,32)")
    gr.add_argument("--dropout", type=_floats, default=[0.3, 0.4, 0.5],
                    help="comma-separated dropout rates (default: 0.3,0.4,0.5)")
    gr.add_argument("--weight-decay", type=_floats, default=[0.0], help="comma-separated weight decays (default: 0)")
    gr.add_argument("--out", "-o", metavar="DIR", default=None, help="grid directory (default: runs/grid-<time>)")
    gr.set_defaults(func=cmd_grid)

    rp = sub.add_parser("reproduce", help="the paper's results table (four architectures on FMA)",
                        description="Train the four architectures with the paper's hyperparameters (batch 16, "
                                    "lr 5e-4, dropout 0.4, up to 100 epochs) and write results.md: train / "
                                    "validation / test accuracy beside the paper's numbers.",
                        epilog=EXPECTED_LAYOUT, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(rp)
    add_train_args(rp, grid=True, augment_off=True)
    rp.add_argument("--models", type=_strs, default=list(MODEL_NAMES),
                    help="comma-separated architectures (default: all four)")
    rp.add_argument("--out", "-o", metavar="DIR", default=None, help="output directory (default: runs/reproduce-<time>)")
    rp.set_defaults(func=cmd_reproduce)

    m = sub.add_parser("models", help="layers, output shapes and parameter counts", formatter_class=fmt,
                       description="Each architecture's layers, output shapes and parameter counts.")
    m.add_argument("--model", choices=MODEL_NAMES, default=None, help="only this architecture (default: all)")
    m.add_argument("--height", type=int, default=102, help="input height")
    m.add_argument("--width", type=int, default=159, help="input width")
    m.add_argument("--n-classes", type=int, default=3, help="output classes")
    m.set_defaults(func=cmd_models)

    gc = sub.add_parser("gradcheck", help="finite-difference gradient check in float64", formatter_class=fmt,
                        description="Compare every parameter's backprop gradient with centred finite differences "
                                    "in float64 on a tiny input; prints the relative error per parameter.")
    gc.add_argument("--model", choices=MODEL_NAMES, default="cnn2_mono", help="architecture")
    gc.add_argument("--height", type=int, default=None, help="input height (default: the smallest that fits)")
    gc.add_argument("--width", type=int, default=None, help="input width (default: the smallest that fits)")
    gc.add_argument("--batch", type=int, default=2, help="batch size of the tiny input")
    gc.add_argument("--seed", type=int, default=0, help="seed of weights and input")
    gc.add_argument("--tol", type=float, default=1e-6, help="maximum relative error allowed")
    gc.set_defaults(func=cmd_gradcheck)

    ins = sub.add_parser("inspect", help="per-layer activation / gradient / update statistics", formatter_class=fmt,
                         description="For one training batch: per layer activation mean/std, fraction of dead "
                                     "ReLUs, gradient norm and the ratio of the Adam update size to the weight size. "
                                     "Written as inspect.md / inspect.json and inspect.png in the run directory.")
    ins.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by train")
    ins.add_argument("--split", choices=("train", "val", "test"), default="train", help="split the batch comes from")
    ins.add_argument("--checkpoint", choices=("best", "last"), default="last", help="which checkpoint")
    ins.add_argument("--batch-size", type=int, default=None, help="batch size (default: the run's)")
    ins.set_defaults(func=cmd_inspect)
    return p


# ============================================================================ commands


def _default_run_name(src: dict, model: str) -> str:
    tag = {"demo": "demo", "fma": "fma", "csv": "folder", "regex": "folder", "cache": "data"}[src["kind"]]
    if src["kind"] in ("csv", "regex", "fma"):
        tag = Path(src["audio_dir"]).name or tag
    return f"runs/{tag}-{model}-{time.strftime('%Y%m%d-%H%M%S')}"


def _train_config(args, model=None, lr=None, batch_size=None, dropout=None, weight_decay=None, demo=False):
    from engine.train import TrainConfig

    epochs = args.epochs if args.epochs is not None else (DEMO_EPOCHS if demo else 100)
    return TrainConfig(model=model or args.model, epochs=epochs,
                       batch_size=batch_size if batch_size is not None else args.batch_size,
                       lr=lr if lr is not None else args.lr,
                       dropout=dropout if dropout is not None else args.dropout,
                       weight_decay=weight_decay if weight_decay is not None else args.weight_decay,
                       patience=args.patience, device=args.device, seed=args.seed,
                       checkpoint_every=args.checkpoint_every,
                       overfit_batch=bool(getattr(args, "overfit_batch", False)),
                       progress=not args.quiet, max_steps=args.max_steps, step_delay=args.step_delay,
                       augment=augment_config(args), sync_bn=bool(getattr(args, "sync_bn", False)),
                       crops=getattr(args, "crops", "random"), eval_crops=getattr(args, "eval_crops", 3))


def run_training(ds, src, cfg, out: Path, argv, resume=False, log=print, write_config=None, dist="job") -> dict:
    """Write config.json (unless resuming, or ``write_config`` is False), print it, train, then write
    report.json and the plots. ``dist``: the job's MPI ranks (default) or None (one process: grid runs)."""
    from engine import train as tr

    global _DIST
    if dist is None and _DIST is not None:  # a single-process run inside a distributed grid
        saved, _DIST = _DIST, None
        try:
            return run_training(ds, src, cfg, out, argv, resume, log, write_config)
        finally:
            _DIST = saved

    _check_train_config(cfg)
    out.mkdir(parents=True, exist_ok=True)
    conf = {
        "train": tr.config_dict(cfg),
        "data": {k: v for k, v in src.items() if k != "demo"},
        "demo": src.get("demo"),
        "spectrogram": (getattr(ds, "manifest", {}) or {}).get("config"),
        "classes": list(ds.classes),
        "n_images": {s: int((ds.split == s).sum()) for s in ("train", "val", "test")},
        "image_shape": list(ds.image_shape(tr.model_mode(cfg.model))),
        "dataset_manifest_hash": sources.manifest_hash(ds),
        "code_version": code_version(),
        "command": shlex.join(["python", "cli.py"] + list(argv)),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "threads": os.environ.get("NUMBA_NUM_THREADS") or str(os.cpu_count()),
    }
    if ((not resume) if write_config is None else write_config) and (_DIST is None or _DIST.is_writer):
        (out / "config.json").write_text(json.dumps(conf, indent=2, default=str))
    rows = [("run directory", out), ("data", src["kind"] + (" (SYNTHETIC demo)" if src["kind"] == "demo" else "")),
            ("dataset", src.get("dataset_dir", "")), ("manifest hash", conf["dataset_manifest_hash"][:16]),
            ("classes", ", ".join(conf["classes"])),
            ("images train/val/test", "/".join(str(conf["n_images"][s]) for s in ("train", "val", "test"))),
            ("image shape (C,H,W)", tuple(conf["image_shape"]))]
    rows += [(k, v) for k, v in tr.config_dict(cfg).items() if k not in ("extra",)]
    rows += [("code version", conf["code_version"]), ("resume", resume)]
    print_table("configuration", rows)
    res = tr.fit(ds, cfg, out, resume=resume, log=log, dist=_DIST)
    log(training_done_message(res, cfg, resumed=resume))
    if _DIST is not None and not _DIST.is_writer:  # rank 0 evaluates and writes report.json and the plots
        return dict(res, report=None)
    rep = tr.final_report(out, ds, cfg, log=log)
    log(f"run directory: {out}  (report.json, metrics.jsonl, checkpoints/, curves.png, confusion.png)")
    return dict(res, report=rep)


def training_done_message(res: dict, cfg, resumed=False) -> str:
    """'training done: 3 epochs (reached --epochs), best validation accuracy ...' from a fit() result.

    After a resume it gives the training time of every session (the sum of
    the epochs' ``seconds`` in metrics.jsonl) besides this session's.
    """
    n = len(res["history"])
    why = {"epochs": f"reached --epochs {cfg.epochs}",
           "patience": f"early stopping: no better validation accuracy for {cfg.patience} "
                       f"epoch{'s' if cfg.patience != 1 else ''}",
           "max_steps": f"reached --max-steps {cfg.max_steps}"}.get(res["stopped"], str(res["stopped"]))
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


def _no_checkpoint_reason(out: Path) -> str:
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


def cmd_train(args, argv) -> int:
    """`train`: prepare (or reuse) the dataset, then train, checkpoint and report into a run directory; returns the exit code."""
    from engine.train import model_mode

    if args.resume:
        if not args.out:
            raise UsageError("--resume needs --out RUN_DIR (the run to continue)")
        out = Path(args.out)
        cf = out / "config.json"
        if not cf.is_file():
            raise UsageError(f"--resume: {cf} not found; is {out} a run directory?")
        _check_flags(args, "train")
        conf, cfg = _run_config(out)
        cfg.progress = not args.quiet
        if args.epochs is not None:
            cfg.epochs = args.epochs
        cfg.max_steps = args.max_steps
        cfg.step_delay = args.step_delay
        if args.patience is not None:
            cfg.patience = args.patience
        if args.sync_bn and not cfg.sync_bn:
            raise UsageError(f"--resume {out}: the run was started without --sync-bn; resume it the same way")
        _check_train_config(cfg, f"--resume {out}: ")
        from pipeline.dataset import Dataset

        _device_check(cfg.device)
        ds = Dataset(conf["data"]["dataset_dir"])
        if not (out / "checkpoints" / "last.npz").is_file():
            # no checkpoint on disk (killed before the first one, or every write failed): start over
            print(f"{out} has no checkpoint yet ({_no_checkpoint_reason(out)}): nothing can be resumed, "
                  f"starting it from scratch with its saved configuration")
            run_training(ds, conf["data"], cfg, out, argv, resume=False, write_config=False)
            return 0
        print(f"resuming {out} with its saved configuration")
        run_training(ds, conf["data"], cfg, out, argv, resume=True)
        return 0
    # every flag is checked before any data is built or any folder made
    _check_data_args(args)
    _check_train_config(_train_config(args))
    _check_flags(args, "train")
    _device_check(args.device)
    src0 = sources.data_source(args)
    out = Path(args.out) if args.out else Path(_default_run_name(src0, args.model))
    if (out / "checkpoints" / "last.npz").exists():
        raise UsageError(f"{out} already holds a run; continue it with --resume or pick another --out")
    ds, src = _rank0_first(lambda: sources.prepare_data(args, model_mode(args.model)))
    sources.status_report(ds, src)
    cfg = _train_config(args, demo=src["kind"] == "demo")
    run_training(ds, src, cfg, out, argv)
    return 0


def cmd_preprocess(args, argv) -> int:
    """`preprocess`: build the dataset cache only and print its directory; returns the exit code."""
    _check_data_args(args)
    _check_flags(args, "preprocess")
    ds, src = sources.prepare_data(args, args.mode, out_dir=args.out)
    sources.status_report(ds, src)
    n = {s: int((ds.split == s).sum()) for s in ("train", "val", "test")}
    print(f"dataset ready: {src['dataset_dir']}  classes {list(ds.classes)}  images {n}  "
          f"windows {ds.config.height}x{ds.config.width} cut from clips of up to {ds.images.shape[2]} columns")
    print(f"train on it with: {shlex.join(['python', 'cli.py', 'train', '--data', src['dataset_dir']])}")
    return 0


def _load_run(run_dir, which="best"):
    """(config dict, TrainConfig, model with the checkpoint loaded, extra), from the run directory alone.

    The model's input shape and classes come from config.json (``image_shape``,
    ``classes``): nothing here reads the dataset cache, so ``predict`` works
    after the cache is deleted.
    """
    from engine import train as tr

    run = Path(run_dir)
    cf = run / "config.json"
    if not cf.is_file():
        raise UsageError(f"{run_dir}: not a run directory (no config.json); make one with `python cli.py train`")
    conf, cfg = _run_config(run)
    ck = run / "checkpoints" / f"{which}.npz"
    if not ck.is_file():
        raise UsageError(f"{ck} not found (has the run finished an epoch?)")
    try:
        in_shape = tuple(int(v) for v in conf["image_shape"])
        classes = [str(c) for c in conf["classes"]]
        if len(in_shape) != 3 or not classes:
            raise ValueError(conf["image_shape"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"{cf}: no usable image_shape / classes ({exc})") from exc
    _device_check(cfg.device)
    model = tr.build_model(cfg, in_shape, len(classes))
    extra = tr.load_state(ck, model, None)
    return conf, cfg, model, extra


def _run_dataset(run_dir, conf, cache_dir=None, log=None):
    """The run's dataset cache; rebuilt (same hash, same settings) when it has been deleted.

    Raises
    ------
    UsageError
        The cache is missing and cannot be rebuilt (a ``--data`` run, or a run
        whose config.json predates the saved data flags), or the rebuilt cache
        has another hash than the run's.
    """
    from pipeline.dataset import Dataset

    log = log or (lambda m: print(m, file=sys.stderr))
    path = Path(conf["data"]["dataset_dir"])
    if (path / "manifest.json").is_file():
        return Dataset(path)
    dargs = conf["data"].get("data_args")
    if not dargs or conf["data"].get("kind") == "cache":
        raise UsageError(f"{run_dir}: its dataset cache {path} is missing and the run does not record how to "
                         f"rebuild it ({'trained on --data' if dargs else 'config.json predates the saved data flags'}); "
                         f"rebuild it with `python cli.py preprocess` and the flags of the run's command: "
                         f"{conf.get('command', '?')}")
    ns = build_parser().parse_args(["train"])
    for k, v in dargs.items():
        setattr(ns, k, v)
    if cache_dir is not None:
        ns.cache_dir = cache_dir
    elif path.parent.name == "datasets":
        ns.cache_dir = str(path.parent.parent)  # where it was (the run's --cache-dir or the default)
    log(f"note: the dataset cache of {run_dir} ({path}) is missing: rebuilding it with the run's settings "
        f"(same parameters, same hash)")
    from engine.train import model_mode

    _, cfg = _run_config(Path(run_dir))
    ds, src = sources.prepare_data(ns, model_mode(cfg.model), log=log)
    want = conf.get("dataset_manifest_hash") or ""
    if want and sources.manifest_hash(ds) != want:
        raise UsageError(f"{run_dir}: the rebuilt cache {src['dataset_dir']} has hash {sources.manifest_hash(ds)[:12]}, "
                         f"the run was trained on {want[:12]} (the audio or labels changed?)")
    log(f"rebuilt {src['dataset_dir']}")
    return ds


def cmd_evaluate(args, argv) -> int:
    """`evaluate RUN_DIR`: accuracy, per-class P/R/F1, macro-F1, confusion matrix and majority baseline of a
    checkpoint on a split of the run's data, or on a folder of new labelled audio (--audio-dir)."""
    from engine import metrics
    from engine import train as tr

    if args.audio_dir is None and (args.label_regex or args.labels):
        raise UsageError("--label-regex / --labels need --audio-dir (the folder of new labelled audio)")
    if args.audio_dir is not None:
        if not Path(args.audio_dir).is_dir():
            raise UsageError(f"--audio-dir {args.audio_dir}: no such directory")
        if bool(args.label_regex) == bool(args.labels):
            raise UsageError("--audio-dir needs exactly one of --label-regex or --labels")
        if args.labels and not Path(args.labels).is_file():
            raise UsageError(f"--labels {args.labels}: no such file")
    if args.workers is not None and args.workers < 0:
        raise UsageError(f"--workers {args.workers}: expected an integer >= 0")
    if args.crops is not None and args.crops < 1:
        raise UsageError(f"--crops {args.crops}: expected an integer >= 1")
    conf, cfg, model, extra = _load_run(args.run_dir, args.checkpoint)
    crops = cfg.eval_crops if args.crops is None else args.crops
    classes = [str(c) for c in conf["classes"]]
    if args.audio_dir is None:
        ds = _run_dataset(args.run_dir, conf, args.cache_dir)
        split, where = args.split, f"{args.split} split"
    else:
        ds = _folder_dataset(args, conf, classes)
        split, where = "test", f"{len(ds)} files of {args.audio_dir}"
    if list(ds.classes) != classes:
        raise UsageError(f"{ds.path}: classes {list(ds.classes)} differ from the run's {classes}")
    loss, yt, yp, _ = tr.evaluate_split(model, ds, split, cfg.batch_size, cfg.device, tr.model_mode(cfg.model),
                                        eval_crops=crops)
    rep = metrics.classification_report(yt, yp, classes)
    rep.update(split=split, loss=loss, checkpoint=args.checkpoint, epoch=extra.get("best_epoch"), crops=crops)
    if args.audio_dir is not None:
        rep.update(audio_dir=str(Path(args.audio_dir).resolve()), dataset_dir=str(ds.path))
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        print(metrics.format_report(rep, f"{args.run_dir}: {where}, {args.checkpoint} checkpoint, "
                                         f"{crops} window{'s' if crops != 1 else ''} per clip (loss {loss:.4f})"))
    return 0


def _folder_dataset(args, conf, classes):
    """`evaluate --audio-dir`: the folder preprocessed with the run's spectrogram settings, every file in 'test'."""
    from pipeline.spectrogram import SpectrogramConfig

    spec = conf.get("spectrogram")
    if not spec:
        raise UsageError(f"{args.run_dir}/config.json has no spectrogram settings; cannot preprocess new audio")
    seed = int((conf["data"].get("data_args") or {}).get("split_seed") or 0)
    return sources.folder_dataset(args.audio_dir, SpectrogramConfig.from_dict(spec), classes, args.cache_dir,
                                  labels_csv=args.labels, label_regex=args.label_regex, seed=seed,
                                  workers=args.workers, progress=not args.quiet)


def cmd_predict(args, argv) -> int:
    """`predict RUN_DIR FILE...`: class and probabilities per file, averaged over --crops windows; exit 2 if any file failed."""
    import numpy as np

    import kernels
    from engine import train as tr
    from engine.metrics import window_probabilities
    from pipeline.clips import track_images
    from pipeline.errors import PipelineError
    from pipeline.spectrogram import SpectrogramConfig

    if args.crops is not None and args.crops < 1:
        raise UsageError(f"--crops {args.crops}: expected an integer >= 1")
    conf, cfg, model, _ = _load_run(args.run_dir, args.checkpoint)  # the run directory alone, no cache
    spec = conf.get("spectrogram")
    if not spec:
        raise UsageError(f"{args.run_dir}/config.json has no spectrogram settings; cannot predict")
    crops = cfg.eval_crops if args.crops is None else args.crops
    # the run's own transform and evaluation rule (pipeline.clips.track_images): the clip's mono
    # image quantised as the cache stores it, the evenly spaced windows, the model input of the run's mode
    mode = tr.model_mode(cfg.model)
    sc = dataclasses.replace(SpectrogramConfig.from_dict(spec), mode=mode)
    classes = [str(c) for c in conf["classes"]]
    xp = kernels.get_backend(cfg.device).xp
    model.eval()
    failed = []
    rows = []
    for f in args.files:
        try:
            x, info = track_images(f, sc, n_crops=crops)
        except (PipelineError, OSError) as exc:  # unreadable, undecodable, or shorter than one STFT frame
            msg = str(exc) if str(f) in str(exc) else f"{f}: {exc}"
            print(f"error: {msg}", file=sys.stderr)
            failed.append(f)
            continue
        if "silence" in info.get("reason", ""):
            print(f"warning: {f}: the analysed {info['decoded_s']:.1f} s are digital silence; the prediction "
                  f"says nothing about the recording", file=sys.stderr)
        logits = tr.to_numpy(model.forward(xp.asarray(x) if xp is not np else x)).astype(np.float64)
        prob = window_probabilities(logits, len(x))[0]
        k = int(prob.argmax())
        if args.json:
            print(json.dumps({"file": f, "class": classes[k], "probabilities": dict(zip(classes, prob.tolist())),
                              "logits": logits.tolist(), "crops": int(crops), "offsets_s": info.get("offsets_s"),
                              "status": info.get("status"), "reason": info.get("reason", ""),
                              "duration_s": info.get("duration_s"), "analysed_s": info.get("decoded_s")}))
        else:
            rows.append((f, classes[k], _clip_status(info), prob))
    if rows:
        print(format_predictions(rows, classes))
    if failed:
        print(f"{len(failed)} of {len(args.files)} file(s) could not be predicted: {', '.join(map(str, failed))}",
              file=sys.stderr)
    return 2 if failed else 0


def _clip_status(info: dict) -> str:
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


def cmd_grid(args, argv) -> int:
    """`grid`: train every combination of --lr, --batch-size, --dropout; write grid.csv and grid.md, best validation accuracy first."""
    from engine.train import model_mode

    _check_data_args(args)
    for m in args.model:
        if m not in MODEL_NAMES:
            raise UsageError(f"--model: unknown architecture {m!r}; choose from {MODEL_NAMES}")
    for model, lr, bs, dr, wd in itertools.product(args.model, args.lr, args.batch_size, args.dropout,
                                                    args.weight_decay):
        _check_train_config(_train_config(args, model=model, lr=lr, batch_size=bs, dropout=dr, weight_decay=wd))
    _check_flags(args, "grid")
    _device_check(args.device)
    base = Path(args.out) if args.out else Path(f"runs/grid-{time.strftime('%Y%m%d-%H%M%S')}")
    base.mkdir(parents=True, exist_ok=True)
    combos = list(itertools.product(args.model, args.lr, args.batch_size, args.dropout, args.weight_decay))
    print(f"grid: {len(combos)} combinations into {base}")
    rows = []
    datasets = {}
    dist = _DIST
    if dist is not None:  # the runs divided over the ranks, each run single-process
        mine = combos[dist.rank::dist.size]
        print(f"grid --distributed: {dist.size} ranks, rank {dist.rank} trains {len(mine)} of the runs")
        for mode in sorted({model_mode(c[0]) for c in combos}):
            datasets[mode] = _rank0_first(lambda: sources.prepare_data(args, mode))
        combos = mine
    for model, lr, bs, dr, wd in combos:
        mode = model_mode(model)
        if mode not in datasets:
            datasets[mode] = sources.prepare_data(args, mode)
        ds, src = datasets[mode]
        name = f"{model}_lr{lr:g}_bs{bs}_do{dr:g}_wd{wd:g}"
        cfg = _train_config(args, model=model, lr=lr, batch_size=bs, dropout=dr, weight_decay=wd,
                            demo=src["kind"] == "demo")
        res = run_training(ds, src, cfg, base / name, argv, dist=None)
        best = next((h for h in res["history"] if h["epoch"] == res["best_epoch"]), {})
        rows.append(dict(run=name, model=model, lr=lr, batch_size=bs, dropout=dr, weight_decay=wd,
                         val_acc=res["best_val_acc"], train_acc=best.get("train_acc"),
                         best_epoch=res["best_epoch"], test_acc=res["report"]["accuracy"]))
    if dist is not None:  # rank 0 writes the table of every rank's runs
        rows = [r for part in dist.comm.gather(rows, root=0) or [] for r in part]
        if not dist.is_writer:
            return 0
    rows.sort(key=lambda r: -r["val_acc"])
    _write_table(rows, base / "grid.csv", base / "grid.md", "Grid search: best validation accuracy per combination")
    print((base / "grid.md").read_text())
    return 0


def _write_table(rows, csv_path, md_path, title):
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


def cmd_reproduce(args, argv) -> int:
    """`reproduce`: train the paper's four architectures with its hyperparameters and write the results table beside the paper's."""
    from engine.train import model_mode

    _device_check(args.device)
    for m in args.models:
        if m not in MODEL_NAMES:
            raise UsageError(f"--models: unknown architecture {m!r}; choose from {MODEL_NAMES}")
    _check_data_args(args)
    for m in args.models:
        _check_train_config(_train_config(args, model=m, lr=5e-4, batch_size=16, dropout=0.4, weight_decay=0.0))
    _check_flags(args, "reproduce")
    base = Path(args.out) if args.out else Path(f"runs/reproduce-{time.strftime('%Y%m%d-%H%M%S')}")
    base.mkdir(parents=True, exist_ok=True)
    rows = []
    datasets = {}
    for model in args.models:
        mode = model_mode(model)
        if mode not in datasets:
            datasets[mode] = sources.prepare_data(args, mode)
        ds, src = datasets[mode]
        cfg = _train_config(args, model=model, lr=5e-4, batch_size=16, dropout=0.4, weight_decay=0.0,
                            demo=src["kind"] == "demo")
        res = run_training(ds, src, cfg, base / model, argv)
        best = next((h for h in res["history"] if h["epoch"] == res["best_epoch"]), {})
        ptr, pva, pte = PAPER_RESULTS[model]
        rows.append(dict(model=model, train=100 * best.get("train_acc", float("nan")),
                         val=100 * res["best_val_acc"], test=100 * res["report"]["accuracy"],
                         paper_train=ptr, paper_val=pva, paper_test=pte, best_epoch=res["best_epoch"]))
    lines = ["# Results: accuracy (%) of the four architectures, ours beside the paper's", "",
             "| model | train | val | test | paper train | paper val | paper test | best epoch |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['train']:.1f} | {r['val']:.1f} | {r['test']:.1f} | {r['paper_train']} | "
                     f"{r['paper_val']} | {r['paper_test']} | {r['best_epoch']} |")
    lines += ["", "The paper's best model (cnn6_rgb) reached 61 % test accuracy."]
    (base / "results.md").write_text("\n".join(lines) + "\n")
    with open(base / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    print("\n".join(lines))
    return 0


def cmd_models(args, argv) -> int:
    """`models`: each architecture's layers, output shapes and parameter counts."""
    from engine import models

    _check_flags(args, "models")
    names = [args.model] if args.model else list(MODEL_NAMES)
    for name in names:
        c = 3 if name.endswith("rgb") else 1
        model = models.build(name, in_shape=(c, args.height, args.width), n_classes=args.n_classes)
        print(f"== {name}  input ({c}, {args.height}, {args.width})")
        print(model.summary((c, args.height, args.width)))
        print()
    return 0


def cmd_gradcheck(args, argv) -> int:
    """`gradcheck`: float64 finite-difference check of every parameter's gradient of a model; exit 1 above the tolerance."""
    import numpy as np

    from engine import gradcheck, models

    _check_flags(args, "gradcheck")
    c, widths = models.MODELS[args.model]
    side = models.min_side(args.model)  # every MaxPool2d(2) halves H and W: the smallest input that fits
    h, w = args.height or side, args.width or side + side // 2
    model = models.build(args.model, in_shape=(c, h, w), n_classes=3, dropout=0.4, seed=args.seed,
                         dtype=np.float64)
    model.train()
    x = np.random.default_rng(args.seed).standard_normal((args.batch, c, h, w))
    res = gradcheck.gradcheck(model, x, seed=args.seed, check_input=False)
    shapes = {n: tuple(p.shape) for n, p, _ in model.parameters()}
    print(f"gradcheck {args.model}: float64, centred finite differences, input ({args.batch}, {c}, {h}, {w}), "
          f"train mode (batch statistics, fixed dropout mask)")
    print(f"{'parameter':<24} {'shape':<20} {'rel error':>10}")
    worst = 0.0
    for name, err in res.items():
        worst = max(worst, float(err))
        print(f"{name:<24} {str(shapes.get(name, '')):<20} {err:10.2e}")
    ok = worst < args.tol
    print(f"max relative error {worst:.2e}: {'PASS' if ok else 'FAIL'} (tolerance {args.tol:g})")
    return 0 if ok else 1


def cmd_inspect(args, argv) -> int:
    """`inspect RUN_DIR`: per-layer activation / gradient statistics for one batch, as a table and a plot."""
    from engine import inspect as insp

    _check_flags(args, "inspect")
    conf, cfg, model, extra = _load_run(args.run_dir, args.checkpoint)
    ds = _run_dataset(args.run_dir, conf)
    rows = insp.inspect_run(Path(args.run_dir), cfg, ds, model, split=args.split,
                            batch_size=args.batch_size if args.batch_size is not None else cfg.batch_size,
                            checkpoint=args.checkpoint)
    print(insp.format_table(rows))
    print(f"written: {Path(args.run_dir) / 'inspect.md'}, inspect.json, inspect.png")
    return 0


# ============================================================================ main


def main(argv=None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the command, return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)

    if getattr(args, "distributed", False):
        rc = _start_distributed(args)
        if rc:
            return rc
        rc = _main(args, argv)
        if rc and _DIST.size > 1:  # the other ranks may wait in a collective: stop them all
            _DIST.abort(f"stopped with exit code {rc} (see the error above); stopping every rank", rc)
        return rc
    return _main(args, argv)


#: the job's engine.distributed.Distributed under --distributed (None: one process)
_DIST = None


def _start_distributed(args) -> int:
    """Start MPI for --distributed; ranks > 0 print nothing on stdout and show no progress bars."""
    global _DIST
    from engine.distributed import DistributedError, init

    if args.command not in ("train", "grid"):
        print(f"error: --distributed applies to train and grid, not {args.command}", file=sys.stderr)
        return 2
    try:
        _DIST = init(getattr(args, "device", "cpu"))
    except DistributedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not _DIST.is_writer:
        args.quiet = True
        sys.stdout = open(os.devnull, "w")
    return 0


def _rank0_first(fn):
    """``fn()`` (data preparation) on rank 0 first and then on the others, which find the cache built."""
    return fn() if _DIST is None else _DIST.rank0_first(fn)


def _main(args, argv) -> int:
    from engine.checkpoint import CheckpointError
    from engine.distributed import DistributedError
    from engine.train import TrainingError
    from pipeline.errors import PipelineError

    try:
        return int(args.func(args, argv) or 0)
    except DistributedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if exc.layout:
            print(EXPECTED_LAYOUT, file=sys.stderr)
        return 2
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if getattr(exc, "show_layout", True):  # not after a full disk or a damaged cache file
            print(EXPECTED_LAYOUT, file=sys.stderr)
        return 2
    except TrainingError as exc:
        print(f"\n{type(exc).__name__}: {exc}", file=sys.stderr)
        return exc.exit_code
    except CheckpointError as exc:  # a truncated / foreign checkpoint: the message names the file
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except json.JSONDecodeError as exc:  # a damaged JSON file read outside _read_json (e.g. a dataset manifest)
        print(f"error: unreadable JSON file ({exc}); is the run or dataset directory damaged?", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        msg = f"{exc.filename}: {exc.strerror or 'no such file or directory'}" if exc.filename else str(exc)
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except sources.PrepInterrupted:
        print("\ninterrupted while building the dataset cache; run the same command again to resume; "
              "finished tracks are kept", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
