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

import dataclasses
import json
import os
import shlex
import sys
import time
from pathlib import Path

from cli_args import DEMO_EPOCHS, EXPECTED_LAYOUT, MODEL_NAMES, augment_config
from cli_args import build_parser as _build_parser
from pipeline import sources

REPO = Path(__file__).resolve().parent


class UsageError(Exception):
    """Bad arguments or dataset path: exit code 2, message + expected layout."""

    def __init__(self, msg, layout=False):
        super().__init__(msg)
        self.layout = layout


# ============================================================================ helpers


def _device_check(device: str) -> None:
    """Raise UsageError with the backend's message when the device is unusable (``<backend>.device.check_available``)."""
    import kernels

    try:
        kernels.get_backend(device).device.check_available()
    except (RuntimeError, ValueError) as exc:
        raise UsageError(f"--device {device}: {exc}") from exc


#: TrainConfig field -> the flag that sets it (for error messages)
_FLAG = {"batch_size": "--batch-size", "weight_decay": "--weight-decay", "checkpoint_every": "--checkpoint-every",
         "freq_mask": "--freq-mask",
         "time_mask": "--time-mask", "n_masks": "--n-masks", "gain_db": "--gain-db", "time_shift": "--time-shift",
         "freq_warp": "--freq-warp", "time_stretch": "--time-stretch", "eval_crops": "--eval-crops"}


def _check_train_config(cfg, where="") -> None:
    """Raise UsageError naming each invalid setting of a TrainConfig by its flag (engine.config.config_problems)."""
    from engine.config import config_problems

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
    from engine.config import TrainConfig

    cf = run / "config.json"
    conf = _read_json(cf)
    try:
        # runs written before the loop's debugging knobs left the configuration carry them: dropped
        cfg = TrainConfig(**{k: v for k, v in conf["train"].items() if k not in ("max_steps", "step_delay")})
        conf["data"]["dataset_dir"]
    except (KeyError, TypeError) as exc:
        raise UsageError(f"{cf}: not a hitcnn run configuration (bad or missing entry {exc})") from exc
    return conf, cfg


# ============================================================================ arguments


# ============================================================================ commands


def _default_run_name(src: dict, model: str) -> str:
    tag = {"demo": "demo", "fma": "fma", "csv": "folder", "regex": "folder", "cache": "data"}[src["kind"]]
    if src["kind"] in ("csv", "regex", "fma"):
        tag = Path(src["audio_dir"]).name or tag
    return f"runs/{tag}-{model}-{time.strftime('%Y%m%d-%H%M%S')}"


def _train_config(args, model=None, lr=None, batch_size=None, dropout=None, weight_decay=None, demo=False):
    from engine.config import TrainConfig

    epochs = args.epochs if args.epochs is not None else (DEMO_EPOCHS if demo else 100)
    return TrainConfig(model=model or args.model, epochs=epochs,
                       batch_size=batch_size if batch_size is not None else args.batch_size,
                       lr=lr if lr is not None else args.lr,
                       dropout=dropout if dropout is not None else args.dropout,
                       weight_decay=weight_decay if weight_decay is not None else args.weight_decay,
                       patience=args.patience, device=args.device, seed=args.seed,
                       checkpoint_every=args.checkpoint_every,
                       overfit_batch=bool(getattr(args, "overfit_batch", False)),
                       progress=not args.quiet,
                       augment=augment_config(args), sync_bn=bool(getattr(args, "sync_bn", False)),
                       crops=getattr(args, "crops", "random"), eval_crops=getattr(args, "eval_crops", 3))


def run_training(ds, src, cfg, out: Path, argv, resume=False, log=print, write_config=None, dist="job",
                 max_steps=None, step_delay=0.0) -> dict:
    """``engine.job.train_run`` (config.json, the configuration table, fit, report.json and plots) after the
    flag checks. ``dist``: the job's MPI ranks (default) or None (one process: grid runs). ``max_steps``,
    ``step_delay``: the hidden debugging flags, handed to ``engine.train.fit``."""
    from engine.job import train_run

    _check_train_config(cfg)
    return train_run(ds, src, cfg, out, argv, resume=resume, log=log, write_config=write_config,
                     dist=_DIST if dist == "job" else None, max_steps=max_steps, step_delay=step_delay)


def training_done_message(res: dict, cfg, resumed=False, max_steps=None) -> str:
    """``engine.job.training_done_message`` (kept here for callers of the CLI module)."""
    from engine.job import training_done_message as message

    return message(res, cfg, resumed=resumed, max_steps=max_steps)


def cmd_train(args, argv) -> int:
    """`train`: prepare (or reuse) the dataset, then train, checkpoint and report into a run directory; returns the exit code."""
    from engine.config import model_mode
    from engine.job import no_checkpoint_reason

    if args.max_steps is not None and args.max_steps < 1:
        raise UsageError(f"--max-steps {args.max_steps}: expected an integer >= 1")
    if not (args.step_delay >= 0 and args.step_delay < float("inf")):
        raise UsageError(f"--step-delay {args.step_delay}: expected a finite number of seconds >= 0")
    debug = dict(max_steps=args.max_steps, step_delay=args.step_delay)
    if args.resume:
        if not args.out:
            raise UsageError("--resume needs --out RUN_DIR (the run to continue)")
        out = Path(args.out)
        cf = out / "config.json"
        if not cf.is_file():
            raise UsageError(f"--resume: {cf} not found; is {out} a run directory?")
        _check_flags(args, "train")
        import cli_checks

        ignored = cli_checks.resume_ignored(argv, build_parser())
        if ignored:
            print(f"warning: --resume continues {out} with its saved configuration; ignored: {', '.join(ignored)} "
                  "(only --epochs and --patience change on resume)", file=sys.stderr)
        conf, cfg = _run_config(out)
        cfg.progress = not args.quiet
        if args.epochs is not None:
            cfg.epochs = args.epochs
        if args.patience is not None:
            cfg.patience = args.patience
        if args.sync_bn and not cfg.sync_bn:
            raise UsageError(f"--resume {out}: the run was started without --sync-bn; resume it the same way")
        _check_train_config(cfg, f"--resume {out}: ")
        _device_check(cfg.device)
        ds = _rank0_first(lambda: _run_dataset(out, conf))  # rebuilt with the run's settings when deleted
        if not (out / "checkpoints" / "last.npz").is_file():
            # no checkpoint on disk (killed before the first one, or every write failed): start over
            print(f"{out} has no checkpoint yet ({no_checkpoint_reason(out)}): nothing can be resumed, "
                  f"starting it from scratch with its saved configuration")
            run_training(ds, conf["data"], cfg, out, argv, resume=False, write_config=False, **debug)
            return 0
        print(f"resuming {out} with its saved configuration")
        run_training(ds, conf["data"], cfg, out, argv, resume=True, **debug)
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
    run_training(ds, src, cfg, out, argv, **debug)
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
    from engine.config import build_model
    from engine.run import load_state

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
    try:
        model = build_model(cfg, in_shape, len(classes))
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"{cf}: cannot build the run's model {cfg.model!r} for input {in_shape} ({exc})") from exc
    extra = load_state(ck, model, None)
    return conf, cfg, model, extra


def _run_dataset(run_dir, conf, cache_dir=None, log=None):
    """The run's dataset cache, rebuilt with the run's settings when deleted (``pipeline.sources.run_dataset``)."""
    from engine.config import model_mode

    _, cfg = _run_config(Path(run_dir))
    return sources.run_dataset(run_dir, conf, build_parser().parse_args(["train"]), model_mode(cfg.model),
                               cache_dir=cache_dir, log=log)


def cmd_evaluate(args, argv) -> int:
    """`evaluate RUN_DIR`: accuracy, per-class P/R/F1, macro-F1, confusion matrix and majority baseline of a
    checkpoint on a split of the run's data, or on a folder of new labelled audio (--audio-dir)."""
    from engine import metrics
    from engine.config import model_mode
    from engine.evaluate import evaluate_split

    _check_flags(args, "evaluate")
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
    loss, yt, yp, _ = evaluate_split(model, ds, split, cfg.batch_size, cfg.device, model_mode(cfg.model),
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
    from engine.config import model_mode
    from engine.evaluate import clip_probabilities, clip_status, format_predictions
    from pipeline.clips import track_images
    from pipeline.errors import PipelineError
    from pipeline.spectrogram import SpectrogramConfig

    _check_flags(args, "predict")
    conf, cfg, model, _ = _load_run(args.run_dir, args.checkpoint)  # the run directory alone, no cache
    spec = conf.get("spectrogram")
    if not spec:
        raise UsageError(f"{args.run_dir}/config.json has no spectrogram settings; cannot predict")
    crops = cfg.eval_crops if args.crops is None else args.crops
    # the run's own transform and evaluation rule (pipeline.clips.track_images): the clip's mono
    # image quantised as the cache stores it, the evenly spaced windows, the model input of the run's mode
    mode = model_mode(cfg.model)
    sc = dataclasses.replace(SpectrogramConfig.from_dict(spec), mode=mode)
    classes = [str(c) for c in conf["classes"]]
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
        prob, logits = clip_probabilities(model, x, cfg.device)
        k = int(prob.argmax())
        if args.json:
            print(json.dumps({"file": f, "class": classes[k], "probabilities": dict(zip(classes, prob.tolist())),
                              "logits": logits.tolist(), "crops": int(crops), "offsets_s": info.get("offsets_s"),
                              "status": info.get("status"), "reason": info.get("reason", ""),
                              "duration_s": info.get("duration_s"), "analysed_s": info.get("decoded_s")}))
        else:
            rows.append((f, classes[k], clip_status(info), prob))
    if rows:
        print(format_predictions(rows, classes))
    if failed:
        print(f"{len(failed)} of {len(args.files)} file(s) could not be predicted: {', '.join(map(str, failed))}",
              file=sys.stderr)
    return 2 if failed else 0


def _sweep_config(args, cell, src):
    return _train_config(args, model=cell["model"], lr=cell["lr"], batch_size=cell["batch_size"],
                         dropout=cell["dropout"], weight_decay=cell["weight_decay"], demo=src["kind"] == "demo")


def cmd_grid(args, argv) -> int:
    """`grid`: train every combination of --lr, --batch-size, --dropout; write grid.csv and grid.md, best validation accuracy first."""
    from engine import sweep

    _check_data_args(args)
    for m in args.model:
        if m not in MODEL_NAMES:
            raise UsageError(f"--model: unknown architecture {m!r}; choose from {MODEL_NAMES}")
    cells = sweep.grid_cells(args.model, args.lr, args.batch_size, args.dropout, args.weight_decay)
    for c in cells:
        _check_train_config(_train_config(args, model=c["model"], lr=c["lr"], batch_size=c["batch_size"],
                                          dropout=c["dropout"], weight_decay=c["weight_decay"]))
    _check_flags(args, "grid")
    _device_check(args.device)
    base = Path(args.out) if args.out else Path(f"runs/grid-{time.strftime('%Y%m%d-%H%M%S')}")
    base.mkdir(parents=True, exist_ok=True)
    print(f"grid: {len(cells)} combinations into {base}")
    rows = sweep.sweep(cells, base, lambda mode: sources.prepare_data(args, mode),
                       lambda cell, src: _sweep_config(args, cell, src),
                       lambda ds, src, cfg, out: run_training(ds, src, cfg, out, argv, dist=None),
                       dist=_DIST, rank0_first=_rank0_first)
    if _DIST is not None and not _DIST.is_writer:
        return 0
    rows.sort(key=lambda r: -r["val_acc"])
    sweep.write_table(rows, base / "grid.csv", base / "grid.md", "Grid search: best validation accuracy per combination")
    print((base / "grid.md").read_text())
    return 0


def cmd_reproduce(args, argv) -> int:
    """`reproduce`: train the paper's four architectures with its hyperparameters and write the results table beside the paper's."""
    from engine import sweep

    _device_check(args.device)
    for m in args.models:
        if m not in MODEL_NAMES:
            raise UsageError(f"--models: unknown architecture {m!r}; choose from {MODEL_NAMES}")
    _check_data_args(args)
    cells = sweep.paper_cells(args.models)
    for c in cells:
        _check_train_config(_sweep_config(args, c, {"kind": ""}))
    _check_flags(args, "reproduce")
    base = Path(args.out) if args.out else Path(f"runs/reproduce-{time.strftime('%Y%m%d-%H%M%S')}")
    base.mkdir(parents=True, exist_ok=True)
    rows = sweep.sweep(cells, base, lambda mode: sources.prepare_data(args, mode),
                       lambda cell, src: _sweep_config(args, cell, src),
                       lambda ds, src, cfg, out: run_training(ds, src, cfg, out, argv))
    print(sweep.paper_table(rows, base / "results.csv", base / "results.md"), end="")
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


def build_parser():
    """The argparse parser of every subcommand (``cli_args.build_parser`` over :data:`COMMANDS`)."""
    return _build_parser(COMMANDS)


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
    from engine.errors import TrainingError
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
    except OSError as exc:  # NotADirectoryError, IsADirectoryError, PermissionError, ... on a named path
        if not exc.filename:
            raise
        print(f"error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except MemoryError as exc:
        print(f"error: out of memory ({exc or 'MemoryError'}); try a smaller --batch-size or fewer --crops",
              file=sys.stderr)
        return 2
    except sources.PrepInterrupted:
        print("\ninterrupted while building the dataset cache; run the same command again to resume; "
              "finished tracks are kept", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


#: subcommand -> its function (``args.func``)
COMMANDS = {"train": cmd_train, "preprocess": cmd_preprocess, "evaluate": cmd_evaluate, "predict": cmd_predict,
            "grid": cmd_grid, "reproduce": cmd_reproduce, "models": cmd_models, "gradcheck": cmd_gradcheck,
            "inspect": cmd_inspect}


if __name__ == "__main__":
    sys.exit(main())
