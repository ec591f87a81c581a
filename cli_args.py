"""The command line's flags: every subcommand's arguments, their defaults and help (used by cli.py).

:func:`build_parser` makes the parser; the shared groups are
:func:`add_data_args` (where the audio comes from and how it becomes images),
:func:`add_train_args` (the run's settings) and :func:`add_augment_args`
(batch-time augmentation, :func:`augment_config` turns them into
``TrainConfig.augment``). Checks that need more than a type
(``cli_checks.problems``) run after parsing, before any work.
"""
from __future__ import annotations

import argparse

__all__ = ["MODEL_NAMES", "DEMO_EPOCHS", "EXPECTED_LAYOUT", "add_data_args", "add_train_args", "add_augment_args",
           "augment_config", "build_parser"]

MODEL_NAMES = ("cnn2_mono", "cnn4_mono", "cnn4_rgb", "cnn6_rgb")

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
    s.add_argument("--image-norm", choices=("minmax", "floor"), default="minmax",
                   help="dB image -> [0, 1]: min-max (the paper's), or 'floor': each frequency row's noise floor "
                        "(10th percentile over the clip) subtracted first (default: minmax)")
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
                        f"--freq-warp {DEFAULT.freq_warp:g} --time-stretch {DEFAULT.time_stretch:g} "
                        f"--noise-db {DEFAULT.noise_db:g}; 'off' = all 0 "
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
    a.add_argument("--noise-db", type=float, default=None, metavar="D",
                   help="add stationary noise to half the images, its floor U[D, top_db] dB below the image's peak "
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


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's default-showing formatter, except where the help already states its default."""

    def _get_help_string(self, action):
        text = action.help or ""
        return text if "(default" in text else super()._get_help_string(action)


def build_parser(commands: dict) -> argparse.ArgumentParser:
    """The argparse parser with every subcommand; ``commands`` maps each subcommand's name to its function
    (``args.func``, called as ``func(args, argv)``)."""
    fmt = _DefaultsFormatter
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
    t.set_defaults(func=commands['train'])

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
    pp.set_defaults(func=commands['preprocess'])

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
    e.set_defaults(func=commands['evaluate'])

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
    pr.set_defaults(func=commands['predict'])

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
    gr.set_defaults(func=commands['grid'])

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
    rp.set_defaults(func=commands['reproduce'])

    m = sub.add_parser("models", help="layers, output shapes and parameter counts", formatter_class=fmt,
                       description="Each architecture's layers, output shapes and parameter counts.")
    m.add_argument("--model", choices=MODEL_NAMES, default=None, help="only this architecture (default: all)")
    m.add_argument("--height", type=int, default=102, help="input height")
    m.add_argument("--width", type=int, default=159, help="input width")
    m.add_argument("--n-classes", type=int, default=3, help="output classes")
    m.set_defaults(func=commands['models'])

    gc = sub.add_parser("gradcheck", help="finite-difference gradient check in float64", formatter_class=fmt,
                        description="Compare every parameter's backprop gradient with centred finite differences "
                                    "in float64 on a tiny input; prints the relative error per parameter.")
    gc.add_argument("--model", choices=MODEL_NAMES, default="cnn2_mono", help="architecture")
    gc.add_argument("--height", type=int, default=None, help="input height (default: the smallest that fits)")
    gc.add_argument("--width", type=int, default=None, help="input width (default: the smallest that fits)")
    gc.add_argument("--batch", type=int, default=2, help="batch size of the tiny input")
    gc.add_argument("--seed", type=int, default=0, help="seed of weights and input")
    gc.add_argument("--tol", type=float, default=1e-6, help="maximum relative error allowed")
    gc.set_defaults(func=commands['gradcheck'])

    ins = sub.add_parser("inspect", help="per-layer activation / gradient / update statistics", formatter_class=fmt,
                         description="For one training batch: per layer activation mean/std, fraction of dead "
                                     "ReLUs, gradient norm and the ratio of the Adam update size to the weight size. "
                                     "Written as inspect.md / inspect.json and inspect.png in the run directory.")
    ins.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by train")
    ins.add_argument("--split", choices=("train", "val", "test"), default="train", help="split the batch comes from")
    ins.add_argument("--checkpoint", choices=("best", "last"), default="last", help="which checkpoint")
    ins.add_argument("--batch-size", type=int, default=None, help="batch size (default: the run's)")
    ins.set_defaults(func=commands['inspect'])
    return p
