"""Every check of the command line's flags that can be made before any work (used by cli.py).

:func:`problems` returns one message per invalid flag of a parsed command
(``argparse.Namespace``), each naming the flag and its value, so that
``cli.py`` can stop with one line and exit code 2 before any audio is
decoded, any cache built or any run folder made. Checked here:

* seeds (``--seed``, ``--split-seed``) are >= 0 (NumPy's generators refuse
  negative seeds, deep inside the run);
* one data source: ``--data`` (a finished cache) excludes ``--audio-dir``,
  ``--metadata``, ``--labels``, ``--label-regex``, ``--group-regex``,
  ``--split`` and ``--bucket-edges``, which would be silently ignored;
* STFT settings against the sample rate and the crop: ``n_fft >= 2`` and a
  crop of at least half a frame (``pipeline.spectrogram.SpectrogramConfig``'s
  own rule), so no track is decoded for nothing;
* ``--demo-tracks >= 30`` (``pipeline.synth.generate``'s minimum: every
  class needs validation and test clips);
* the image size against each model's pools (every block halves H and W:
  ``engine.models.min_side``), from the flags or from the ``--data`` cache;
* that ``--out`` and the cache folder can be written (the nearest existing
  folder is a folder and accepts a file), so a read-only mount or a path
  under a regular file fails now, not after preprocessing;
* the bounds of ``models`` (``--height``, ``--width``, ``--n-classes``),
  ``gradcheck`` (``--batch``, ``--height``, ``--width``, ``--tol``) and
  ``inspect`` (``--batch-size``).
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from pipeline import sources

__all__ = ["problems", "writable_problem", "pool_problem"]

#: pipeline.synth.generate refuses fewer clips (every class needs val / test clips)
MIN_DEMO_TRACKS = 30

_SOURCE_FLAGS = (("--audio-dir", "audio_dir"), ("--metadata", "metadata"), ("--labels", "labels"),
                 ("--label-regex", "label_regex"), ("--group-regex", "group_regex"), ("--split", "split"),
                 ("--bucket-edges", "bucket_edges"))


def writable_problem(flag: str, path) -> str | None:
    """None when a file can be created in ``path`` (or in the folder that would hold it), else why not.

    Nothing is created: the nearest existing ancestor must be a folder in
    which a temporary file can be made (and is removed at once).
    """
    p = Path(os.fspath(path)).expanduser()
    q = p
    while not os.path.lexists(q) and q != q.parent:
        q = q.parent
    if not q.is_dir():
        what = "a file" if q.exists() else "a broken link"
        return f"{flag} {path}: {q} is {what}, not a folder"
    try:
        with tempfile.TemporaryFile(dir=q):
            pass
    except OSError as exc:
        return f"{flag} {path}: cannot write in {q} ({exc.strerror or exc})"
    return None


def pool_problem(model: str, height: int, width: int, where: str = "--height / --width") -> str | None:
    """None when ``(height, width)`` images fit ``model``'s max-pools, else a message naming the flags."""
    from engine import models

    if model not in models.MODELS:
        return None  # the model flag's own check names it
    side = models.min_side(model)
    if height < side or width < side:
        k = len(models.MODELS[model][1])
        return (f"{where} {height} x {width}: {model} has {k} 2x2 max-pools and needs images of at least "
                f"{side} x {side}")
    return None


def _int_at_least(flag, v, lo):
    if v is not None and v < lo:
        return f"{flag} {v}: expected an integer >= {lo}"
    return None


def _data_flags_given(args) -> bool:
    return any(getattr(args, name, None) for _, name in _SOURCE_FLAGS[:5]) or bool(getattr(args, "data", None))


def _cache_image_size(data_dir):
    """(height, width) from a cache's manifest, or None when it cannot be read (data_source reports that)."""
    try:
        conf = json.loads((Path(data_dir) / "manifest.json").read_text())["config"]
        return int(conf["height"]), int(conf["width"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _data_problems(args, models_used) -> list:
    out = []
    for flag, name in (("--seed", "seed"), ("--split-seed", "split_seed")):
        bad = _int_at_least(flag, getattr(args, name, None), 0)
        if bad:
            out.append(bad)
    if getattr(args, "data", None):
        extra = [flag for flag, name in _SOURCE_FLAGS if getattr(args, name, None) not in (None, False)]
        if extra:
            out.append(f"--data {args.data} is a finished dataset cache and cannot be combined with "
                       f"{', '.join(extra)} (one data source: --data, or --audio-dir with its label flags)")
    demo = getattr(args, "demo_tracks", None)
    if demo is not None and not _data_flags_given(args) and demo < MIN_DEMO_TRACKS:
        out.append(f"--demo-tracks {demo}: expected an integer >= {MIN_DEMO_TRACKS} (every class needs "
                   f"validation and test clips)")
    size = None
    if getattr(args, "data", None):
        size = _cache_image_size(args.data)
    elif getattr(args, "n_fft", None) is not None:
        n_fft = args.n_fft
        if n_fft < 2:
            out.append(f"--n-fft {n_fft}: expected an integer >= 2 (one STFT frame needs 2 samples)")
        else:
            from pipeline.errors import PipelineError
            from pipeline.spectrogram import SpectrogramConfig

            try:
                SpectrogramConfig(sr=args.sr, crop_seconds=args.crop_seconds, n_fft=n_fft,
                                  hop_length=args.hop_length, spectrogram=args.spectrogram, n_mels=args.n_mels,
                                  mode="mono", height=args.height, width=args.width,
                                  clip_seconds=getattr(args, "clip_seconds", None))
            except (PipelineError, ValueError, TypeError) as exc:
                n_crop = int(round(args.crop_seconds * args.sr))
                if n_crop < n_fft // 2 + 1:
                    out.append(f"--crop-seconds {args.crop_seconds:g} at --sr {args.sr} is {n_crop} samples, "
                               f"shorter than half an --n-fft {n_fft} frame")
                else:
                    out.append(f"spectrogram flags: {exc}")
        size = (args.height, args.width)
    if size is not None:
        where = f"--data {args.data}: images" if getattr(args, "data", None) else "--height / --width"
        for m in models_used:
            bad = pool_problem(m, size[0], size[1], where)
            if bad:
                out.append(bad)
                break
    return out


def problems(args, command: str) -> list:
    """Every problem of the flags of ``command`` (a cli.py subcommand) as one-line messages; [] when all is well."""
    out = []
    if command in ("train", "preprocess", "grid", "reproduce"):
        if command == "train" and getattr(args, "resume", False):
            bad = writable_problem("--out", args.out) if args.out else None
            return [bad] if bad else []
        models_used = {"train": lambda: [args.model], "grid": lambda: list(args.model),
                       "reproduce": lambda: list(args.models), "preprocess": lambda: []}[command]()
        out += _data_problems(args, models_used)
        default_out = {"train": "runs", "grid": "runs", "reproduce": "runs", "preprocess": None}[command]
        if args.out or default_out:
            bad = writable_problem("--out", args.out or default_out)
            if bad:
                out.append(bad)
        if not getattr(args, "data", None) and not (command == "preprocess" and args.out and _data_flags_given(args)):
            bad = writable_problem("--cache-dir", sources.cache_root(args))
            if bad:
                out.append(bad)
    elif command == "models":
        for flag, name, lo in (("--height", "height", 1), ("--width", "width", 1), ("--n-classes", "n_classes", 2)):
            bad = _int_at_least(flag, getattr(args, name), lo)
            if bad:
                out.append(bad)
        if not out:
            from engine import models

            for m in [args.model] if args.model else list(models.MODELS):
                bad = pool_problem(m, args.height, args.width)
                if bad:
                    out.append(bad + (" (use --model to show a smaller one)" if not args.model else ""))
                    break
    elif command == "gradcheck":
        for flag, name, lo in (("--batch", "batch", 1), ("--seed", "seed", 0)):
            bad = _int_at_least(flag, getattr(args, name), lo)
            if bad:
                out.append(bad)
        if not (isinstance(args.tol, float) and math.isfinite(args.tol) and args.tol > 0):
            out.append(f"--tol {args.tol}: expected a finite number > 0")
        if args.height is not None or args.width is not None:
            from engine import models

            side = models.min_side(args.model)
            bad = pool_problem(args.model, args.height if args.height is not None else side,
                               args.width if args.width is not None else side + side // 2)
            if bad:
                out.append(bad)
    elif command == "inspect":
        bad = _int_at_least("--batch-size", args.batch_size, 1)
        if bad:
            out.append(bad)
    elif command in ("evaluate", "predict"):
        out += _eval_problems(args, command)
    return out


def _eval_problems(args, command: str) -> list:
    """The flags of ``evaluate`` / ``predict``: --crops K in 1..MAX_EVAL_CROPS, --workers >= 0, and for
    ``evaluate --audio-dir`` the folder, exactly one of --label-regex / --labels, and a usable cache folder."""
    from engine.config import MAX_EVAL_CROPS

    out = []
    if args.crops is not None and not 1 <= args.crops <= MAX_EVAL_CROPS:
        out.append(f"--crops {args.crops}: expected an integer from 1 to {MAX_EVAL_CROPS} (evenly spaced windows "
                   "per clip; more only repeat windows)")
    if getattr(args, "workers", None) is not None and args.workers < 0:
        out.append(f"--workers {args.workers}: expected an integer >= 0")
    if command == "predict":
        return out
    if args.audio_dir is None:
        if args.label_regex or args.labels:
            out.append("--label-regex / --labels need --audio-dir (the folder of new labelled audio)")
        return out
    if not Path(args.audio_dir).is_dir():
        out.append(f"--audio-dir {args.audio_dir}: no such directory")
    if bool(args.label_regex) == bool(args.labels):
        out.append("--audio-dir needs exactly one of --label-regex or --labels")
    elif args.labels and not Path(args.labels).is_file():
        out.append(f"--labels {args.labels}: no such file")
    bad = writable_problem("--cache-dir" if args.cache_dir else "the cache folder ($HITCNN_CACHE)",
                           sources.cache_root(args))
    if bad:
        out.append(bad)
    return out


#: train flags that --resume applies (the rest of the configuration is the run's saved one)
RESUME_APPLIES = {"resume", "out", "epochs", "patience", "quiet", "sync_bn", "max_steps", "step_delay", "distributed",
                  "workers", "help"}


def resume_ignored(argv, parser) -> list:
    """The option strings in ``argv`` (a ``train --resume`` command line, parsed by ``parser``) that --resume
    does not apply."""
    sub = next(a for a in parser._actions if a.dest == "command").choices["train"]
    dest = {o: a.dest for a in sub._actions for o in a.option_strings}
    given = (tok.split("=", 1)[0] for tok in argv if tok.startswith("-"))
    return list(dict.fromkeys(o for o in given if o in dest and dest[o] not in RESUME_APPLIES))
