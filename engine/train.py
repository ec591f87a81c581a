"""The training loop used by ``python cli.py train``.

One run lives in a run directory ``OUT/``::

    OUT/config.json            every setting (written by the caller, cli.py)
    OUT/metrics.jsonl          one JSON line per epoch (see ``EPOCH_KEYS``)
    OUT/checkpoints/last.npz   the latest state (mid-epoch too): resume from here
    OUT/checkpoints/best.npz   the state of the epoch with the best validation accuracy
    OUT/report.json            test metrics of the best checkpoint (engine.metrics)
    OUT/curves.png, OUT/confusion.png

Determinism and resume
----------------------
The data order of epoch ``e`` is fully given by ``epoch_seed(seed, e)`` (the
seed handed to ``Dataset.batches``) and its crop windows by
``train_windows(cfg, e)`` (``(seed, epoch, track)`` with ``crops='random'``),
so neither needs an RNG state of its own. Validation and test average
``eval_crops`` evenly spaced windows per clip, as ``predict`` does.
Checkpoints are written every ``checkpoint_every`` steps and at the end of
every epoch; each stores the epoch, the number of batches already trained in
it, the epoch's running sums (loss, correct, count), the early-stopping
state, and the RNG state of every Dropout layer. On ``--resume`` the model,
Adam and Dropout states are restored, ``metrics.jsonl`` is cut back to the
finished epochs, and the finished batches of the current epoch are skipped
(drawn from the same ordering and dropped), so a run killed with SIGKILL and
resumed ends bit-identical to one never interrupted (on the CPU, same thread
count).

Batch-time augmentation (``TrainConfig.augment``, :mod:`engine.augment`):
the training batches then arrive as the cached uint8 levels
(``engine.augment.LevelBatches``, the same order) and are augmented and
decoded on the training device by ``engine.augment.augment_batch`` with the
parameters of ``(seed, epoch, step_in_epoch)``: a function of the position,
not of a generator state, so resume stays bit-exact. With mixup the loss gets
soft targets; ``train_acc`` counts each image's own label.

GPU (``device='gpu'``)
----------------------
Training batches reach the device through ``kernels.gpu.prefetch.PinnedPrefetcher``
(pinned host buffers, asynchronous copies on a side stream, one batch
ahead) instead of a synchronous copy per step. Correct predictions are
counted on the device (``argmax == y`` summed into a device counter) and read
only at checkpoints and at the end of the epoch; the one host
synchronisation per step is reading the loss (logging and the NaN check).
Dropout draws from a counter-based stream whose state is two integers, so
GPU checkpoints resume bit-exactly too (see ``engine.layers.Dropout``);
parameters and Adam moments are copied to the host for the checkpoint.
The CPU path is unchanged.

Signals and failures
--------------------
SIGINT (Ctrl-C) sets a flag; after the current step the loop saves
``last.npz`` and raises :class:`Interrupted` whose message gives the resume
command. A NaN or inf loss stops before backward (so no bad update is ever
applied or saved) with :class:`NonFiniteLoss` naming the step and suggesting a
lower learning rate; ``last.npz`` stays the last good checkpoint. Weights or
Adam moments that overflow to NaN / inf are caught at the next checkpoint
(:class:`NonFiniteWeights`, also exit 3): a non-finite state is never saved.

A checkpoint write that fails (a full disk) logs one warning naming the file
and training goes on: the previous file is intact, the unsaved state is kept
in memory and written at the next checkpoint. If a state is still unsaved
when the run ends, the user decides on a terminal (free space, press Enter
to retry), otherwise :class:`CheckpointNotSaved` (exit 4) says what is on
disk and prints the resume command. ``metrics.jsonl`` is rewritten whole
(atomically) each epoch, so a failed write is made good by the next one.
"""
from __future__ import annotations

import json
import math
import os
import resource
import shlex
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

EPOCH_KEYS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds",
              "images_per_s", "data_wait_share", "peak_rss_mib")


class TrainingError(RuntimeError):
    """A training run stopped abnormally; ``exit_code`` is what the CLI returns."""

    exit_code = 1


class Interrupted(TrainingError):
    """SIGINT: a checkpoint was saved; the message says how to resume."""

    exit_code = 130


class NonFiniteLoss(TrainingError):
    """The loss became NaN or inf; the message names the step."""

    exit_code = 3


class NonFiniteWeights(NonFiniteLoss):
    """Weights, BatchNorm statistics or Adam moments became NaN / inf; they were not saved."""


class CheckpointNotSaved(TrainingError):
    """The run ended with a checkpoint it could not write (e.g. a full disk); the message says how to resume."""

    exit_code = 4


def resume_command(out) -> str:
    """The shell-quoted command that resumes the run in ``out``."""
    return shlex.join(["python", "cli.py", "train", "--resume", "--out", os.fspath(out)])


@dataclass
class TrainConfig:
    """Settings of one training run (all land in ``config.json``).

    Attributes
    ----------
    model : str
        Architecture name in ``engine.models.MODELS`` (default 'cnn6_rgb', the paper's best).
    epochs : int
        Maximum number of epochs (100, the paper's cap).
    batch_size : int
        Mini-batch size (16, the paper's).
    lr : float
        Adam learning rate (5e-4).
    dropout : float
        Dropout probability before the last Linear (0.4).
    weight_decay : float
        Adam's L2 weight decay (0).
    patience : int or None
        Stop when validation accuracy has not improved for this many epochs (None: off).
    device : {'cpu', 'gpu'}
    seed : int
        Seeds the weights, the data order and dropout.
    checkpoint_every : int
        Also checkpoint every this many steps inside an epoch (0: only at epoch ends).
    overfit_batch : bool
        Debug: every epoch trains one step on the same first training batch,
        and "validation" is that batch in eval mode.
    progress : bool
        Show a tqdm progress bar per epoch.
    max_steps : int or None
        Stop after this many steps in total (debug / tests).
    step_delay : float
        Seconds to sleep after every step (tests: makes a run slow enough to kill mid-epoch).
    augment : dict
        Batch-time augmentation of the training batches, ``engine.augment.AugmentConfig``'s
        fields (empty: off; evaluation never augments; ``--overfit-batch`` ignores it).
    sync_bn : bool
        Under ``--distributed``: BatchNorm statistics over the global batch (all ranks), not per rank.
    crops : {'random', 'fixed'}
        Training crop windows cut from each cached clip (``pipeline.windows.Windows``):
        'random' a new one per epoch from ``(seed, epoch, track)`` (default: the
        paper's "random 10 s crop", and more distinct images to learn from);
        'fixed' one per track for the whole run (as a cache of single crops).
    eval_crops : int
        Evenly spaced windows per clip whose probabilities are averaged in
        validation, test and ``evaluate`` (``predict`` uses the same number by
        default): 3 spans a 30 s clip with 10 s windows.
    """

    model: str = "cnn6_rgb"
    epochs: int = 100
    batch_size: int = 16
    lr: float = 5e-4
    dropout: float = 0.4
    weight_decay: float = 0.0
    patience: int | None = None
    device: str = "cpu"
    seed: int = 0
    checkpoint_every: int = 50
    overfit_batch: bool = False
    progress: bool = True
    max_steps: int | None = None
    step_delay: float = 0.0
    augment: dict = field(default_factory=dict)
    sync_bn: bool = False
    crops: str = "random"
    eval_crops: int = 3
    extra: dict = field(default_factory=dict)


def config_problems(cfg: TrainConfig) -> list:
    """Every invalid setting of ``cfg`` as ``(field, value, expected)`` triples (empty: all valid).

    The checks are those PyTorch's ``Adam`` / ``Dropout`` / ``DataLoader``
    make (lr > 0, weight_decay >= 0, 0 <= p < 1, batch_size >= 1), plus
    finite values and the loop's own limits: epochs >= 1, patience >= 1 (or
    None: off), checkpoint_every >= 0 (0: only at epoch ends), max_steps >= 1
    (or None), a known architecture and device.
    """
    from engine import models

    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    def is_num(v):
        return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)

    bad = []
    if cfg.model not in models.MODELS:
        bad.append(("model", cfg.model, f"one of {sorted(models.MODELS)}"))
    if cfg.device not in ("cpu", "gpu"):
        bad.append(("device", cfg.device, "'cpu' or 'gpu'"))
    if not is_int(cfg.epochs) or cfg.epochs < 1:
        bad.append(("epochs", cfg.epochs, "an integer >= 1"))
    if not is_int(cfg.batch_size) or cfg.batch_size < 1:
        bad.append(("batch_size", cfg.batch_size, "an integer >= 1"))
    if not is_num(cfg.lr) or not math.isfinite(cfg.lr) or cfg.lr <= 0:
        bad.append(("lr", cfg.lr, "a finite number > 0"))
    if not is_num(cfg.weight_decay) or not math.isfinite(cfg.weight_decay) or cfg.weight_decay < 0:
        bad.append(("weight_decay", cfg.weight_decay, "a finite number >= 0"))
    if not is_num(cfg.dropout) or not (0.0 <= cfg.dropout < 1.0):
        bad.append(("dropout", cfg.dropout, "a probability with 0 <= p < 1"))
    if cfg.patience is not None and (not is_int(cfg.patience) or cfg.patience < 1):
        bad.append(("patience", cfg.patience, "an integer >= 1 (or unset: no early stopping)"))
    if not is_int(cfg.checkpoint_every) or cfg.checkpoint_every < 0:
        bad.append(("checkpoint_every", cfg.checkpoint_every, "an integer >= 0 (0: only at epoch ends)"))
    if cfg.max_steps is not None and (not is_int(cfg.max_steps) or cfg.max_steps < 1):
        bad.append(("max_steps", cfg.max_steps, "an integer >= 1"))
    if not is_num(cfg.step_delay) or not math.isfinite(cfg.step_delay) or cfg.step_delay < 0:
        bad.append(("step_delay", cfg.step_delay, "a finite number of seconds >= 0"))
    if cfg.crops not in ("random", "fixed"):
        bad.append(("crops", cfg.crops, "'random' or 'fixed'"))
    if not is_int(cfg.eval_crops) or cfg.eval_crops < 1:
        bad.append(("eval_crops", cfg.eval_crops, "an integer >= 1"))
    from engine import augment as aug_mod

    if not isinstance(cfg.augment, dict):
        bad.append(("augment", cfg.augment, "a dict of engine.augment.AugmentConfig fields"))
    else:
        unknown = sorted(set(cfg.augment) - set(aug_mod.AugmentConfig().to_dict()))
        if unknown:
            bad.append(("augment", unknown, f"fields of AugmentConfig {sorted(aug_mod.AugmentConfig().to_dict())}"))
        else:
            bad += aug_mod.config_problems(aug_mod.AugmentConfig.from_dict(cfg.augment))
    return bad


def check_config(cfg: TrainConfig) -> None:
    """Raise ValueError naming every invalid setting of ``cfg`` (see :func:`config_problems`).

    Raises
    ------
    ValueError
        e.g. ``"TrainConfig: batch_size = 0, expected an integer >= 1"``.
    """
    bad = config_problems(cfg)
    if bad:
        raise ValueError("TrainConfig: " + "; ".join(f"{f} = {v!r}, expected {e}" for f, v, e in bad))


#: a step loss above this (or above EXPLODE_FACTOR x the session's first loss, floored at 1) logs a warning
EXPLODE_LOSS = 1e6
EXPLODE_FACTOR = 100.0


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of epoch ``epoch``'s data order (a fixed function of the run seed)."""
    return (int(seed) * 1_000_003 + 7919 * int(epoch) + 1) % (2 ** 31 - 1)


def train_windows(cfg: TrainConfig, epoch: int):
    """The crop windows of epoch ``epoch``'s training batches (``pipeline.windows.Windows``)."""
    from pipeline.windows import Windows

    return Windows(cfg.crops, seed=int(cfg.seed), epoch=int(epoch) if cfg.crops == "random" else 0)


def model_mode(name: str) -> str:
    """'rgb' for the 3-channel models (``*_rgb``), else 'mono'."""
    return "rgb" if name.endswith("rgb") else "mono"


def peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB (``ru_maxrss``: KiB on Linux)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if sys.platform != "darwin" else r / 2 ** 20


def to_numpy(a):
    """A NumPy array from a NumPy or CuPy array."""
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def _as_device(x, xp):
    return x if xp is np else xp.asarray(x)


# ----------------------------------------------------------------------------- model / state


def build_model(cfg: TrainConfig, in_shape, n_classes: int):
    """``engine.models.build`` with the config's architecture, dropout and seed, on its device."""
    from engine import models

    model = models.build(cfg.model, in_shape=tuple(in_shape), n_classes=n_classes,
                         dropout=cfg.dropout, seed=cfg.seed)
    if cfg.device != "cpu":
        moved = model.to(cfg.device)
        model = moved if moved is not None else model
    return model


def make_optimizer(model, cfg: TrainConfig):
    """PyTorch-convention Adam over every parameter of ``model``."""
    from engine.optim import Adam

    return Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def save_state(path, model, opt, extra: dict) -> None:
    """``engine.checkpoint.save_checkpoint`` (weights, BN statistics, Adam, Dropout RNG states, ``extra``)."""
    from engine.checkpoint import save_checkpoint

    save_checkpoint(str(path), model, opt, extra)


def load_state(path, model, opt=None) -> dict:
    """Load a checkpoint written by :func:`save_state`; returns its ``extra`` dict."""
    from engine.checkpoint import load_checkpoint

    return load_checkpoint(str(path), model, opt) or {}


# ----------------------------------------------------------------------------- evaluation


def evaluate_split(model, dataset, split: str, batch_size: int, device: str = "cpu", mode=None,
                   limit_batches=None, eval_crops: int = 1):
    """Forward every row of ``split`` in eval mode: ``eval_crops`` evenly spaced windows per clip.

    Each clip's probabilities are the mean over its windows of the softmax
    (:func:`engine.metrics.window_probabilities`, the rule ``predict`` uses),
    computed on the host in float64 from the model's logits.

    Parameters
    ----------
    model : engine.model.Sequential
    dataset : pipeline.dataset.Dataset (or an object with its ``batches``)
    split : {'train', 'val', 'test', 'all'}
    batch_size : int
        Clips per forward pass (``batch_size * eval_crops`` images).
    device : {'cpu', 'gpu'}
    mode : {'mono', 'rgb'} or None
    limit_batches : int or None
        Only the first batches (debug).
    eval_crops : int >= 1
        Windows per clip (``pipeline.windows.Windows('even', n=eval_crops)``).

    Returns
    -------
    loss : float
        Mean over the clips of ``-log p[y]`` of the averaged probabilities (float64;
        the cross-entropy when ``eval_crops == 1``).
    y_true, y_pred : np.ndarray [shape=(N,), dtype=int64]
    probs : np.ndarray [shape=(N, n_classes), dtype=float32]
    """
    from engine.metrics import window_probabilities
    from pipeline.windows import Windows

    k = int(eval_crops)
    windows = Windows("even", n=k)
    was_training = getattr(model, "training", True)
    model.eval()
    lgs, ys = [], []
    try:
        with Prefetcher(dataset, split, batch_size, shuffle=False, seed=0, mode=mode, windows=windows) as batches:
            if device == "gpu":
                lgs, ys = _evaluate_gpu(model, batches, limit_batches)
            else:
                for x, y in _take(batches, limit_batches):
                    lgs.append(to_numpy(model.forward(x)).astype(np.float64))
                    ys.append(np.asarray(y, dtype=np.int64))
    finally:
        if was_training:
            model.train()
    if not lgs:
        return float("nan"), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    y = np.concatenate(ys)[::k]  # y is repeated once per window
    p = window_probabilities(np.concatenate(lgs), k)
    loss = float(-np.log(np.maximum(p[np.arange(len(y)), y], np.finfo(np.float64).tiny)).mean())
    return loss, y, p.argmax(axis=1).astype(np.int64), p.astype(np.float32)


def _evaluate_gpu(model, batches, limit_batches):
    """:func:`evaluate_split`'s GPU body: pinned asynchronous feeding, logits kept on the device, one read at the end.

    Returns ``([logits float64 (M, n_classes)], [y int64 (M,)])`` on the host.
    """
    from kernels.gpu.prefetch import PinnedPrefetcher

    ys, lgs = [], []
    for xd, yd in PinnedPrefetcher(_take(batches, limit_batches)):
        logits = model.forward(xd)
        ys.append(yd.copy())   # the prefetcher's buffers are reused two batches later
        lgs.append(logits.copy())  # the model's output buffer is reused by the next forward
    if not lgs:
        return [], []
    import kernels

    xp = kernels.get_backend("gpu").xp
    return [to_numpy(xp.concatenate(lgs)).astype(np.float64)], [to_numpy(xp.concatenate(ys)).astype(np.int64)]


def _take(it, limit):
    """The first ``limit`` items of ``it`` (all when ``limit`` is None), without pulling one more."""
    for i, item in enumerate(it):
        if limit is not None and i >= limit:
            return
        yield item
        if limit is not None and i + 1 >= limit:
            return


# ----------------------------------------------------------------------------- the loop


class Prefetcher:
    """Iterate ``dataset.batches(...)`` in a background thread, one batch ahead.

    The next batch is decoded (memory-mapped uint8 -> float32, colormap) while
    the current one trains. ``close()`` (also on ``with`` exit) stops the
    thread at once, whatever state the consumer left it in, so an early exit
    (NaN, Ctrl-C, ``max_steps``, a single-batch grab) never blocks.
    ``wait_seconds`` accumulates the time the consumer waited for data.
    """

    _END = object()

    def __init__(self, dataset, split, batch_size, shuffle, seed, mode, ahead=2, windows=None):
        import queue
        import threading

        self._q = queue.Queue(maxsize=max(1, int(ahead)))
        self._stop = threading.Event()
        self.wait_seconds = 0.0
        kw = {} if windows is None else {"windows": windows}
        gen = dataset.batches(split, batch_size, shuffle=shuffle, seed=seed, mode=mode, **kw)

        def produce():
            try:
                for item in gen:
                    if not self._put(item):
                        return
                self._put(self._END)
            except BaseException as exc:  # handed to the consumer
                self._put(exc)
            finally:
                gen.close()

        self._t = threading.Thread(target=produce, daemon=True, name="hitcnn-prefetch")
        self._t.start()

    def _put(self, item):
        import queue

        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        return self

    def __next__(self):
        t0 = time.perf_counter()
        item = self._q.get()
        self.wait_seconds += time.perf_counter() - t0
        if item is self._END:
            self._q.put(self._END)  # stay exhausted
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self):
        """Stop the producer thread and wait for it (never blocks on a full queue)."""
        import queue

        self._stop.set()
        while self._t.is_alive():
            try:
                self._q.get_nowait()
            except queue.Empty:
                pass
            self._t.join(timeout=0.05)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def first_batch(dataset, split, batch_size, mode, shuffle=False, seed=0):
    """The first batch of ``split`` (no background thread)."""
    gen = dataset.batches(split, batch_size, shuffle=shuffle, seed=seed, mode=mode)
    try:
        return next(gen)
    finally:
        gen.close()


class _SigintFlag:
    """Context manager: SIGINT sets ``.hit`` instead of raising KeyboardInterrupt."""

    def __init__(self):
        self.hit = False
        self._old = None

    def _handler(self, signum, frame):
        if self.hit:  # a second Ctrl-C: give up immediately
            raise KeyboardInterrupt
        self.hit = True

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread
            self._old = None
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


def _flush_pending(pending: dict, saved: dict, last_path, log) -> bool:
    """Write every unsaved checkpoint in ``pending`` (best before last); True when all are written.

    A failure logs one line naming the file (once per file until it is
    written) and keeps the state in ``pending``; the file on disk is intact.
    """
    from engine.checkpoint import CheckpointWriteError, write_checkpoint

    for path in sorted(pending, key=lambda p: p == last_path):
        arrays, step = pending[path]
        try:
            write_checkpoint(path, arrays)
        except CheckpointWriteError as exc:
            if path not in saved["warned"]:
                saved["warned"].add(path)
                prev = "the previous one is intact" if Path(path).is_file() else "there is no earlier one"
                log(f"warning: {exc}; {prev}. Training goes on with this state kept in memory; it is written "
                    f"at the next checkpoint")
            continue
        if path in saved["warned"]:
            saved["warned"].discard(path)
            log(f"checkpoint {path} written (step {step}) after the earlier failure")
        del pending[path]
        if path == last_path:
            saved["step"] = step
    return not pending


def _settle_pending(pending: dict, saved: dict, last_path, out, log) -> None:
    """The run is ending with unsaved checkpoints: retry on the user's word (a terminal), else stop (exit 4).

    Raises
    ------
    CheckpointNotSaved
        Naming the files, what ``last.npz`` holds and the resume command.
    """
    interactive = sys.stdin is not None and sys.stdin.isatty()
    while pending and interactive:
        try:
            input(f"{len(pending)} checkpoint(s) not written ({', '.join(map(str, pending))}): free some space, "
                  f"then press Enter to retry (Ctrl-D or Ctrl-C: stop) ")
        except (EOFError, KeyboardInterrupt):
            break
        _flush_pending(pending, saved, last_path, log)
    if not pending:
        return
    steps = sorted({step for _, step in pending.values()})
    if saved["step"] is not None:
        on_disk = f"{last_path} holds step {saved['step']}"
    elif Path(last_path).is_file():
        on_disk = f"{last_path} holds the state of an earlier session"
    else:
        on_disk = "no checkpoint is on disk, so a resume starts the run over"
    raise CheckpointNotSaved(
        f"could not write {', '.join(map(str, pending))} (the state of step {steps[-1]}): the disk is full or "
        f"not writable; the training since the last written checkpoint is lost when this process ends; "
        f"{on_disk}. Free some space, then resume with: {resume_command(out)}")


def _write_history(path: Path, history: list, log=print) -> bool:
    """Rewrite ``metrics.jsonl`` with every record of ``history`` (atomically); a failed write is logged, not raised."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text("".join(json.dumps(h) + "\n" for h in history))
        os.replace(tmp, path)
        return True
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        log(f"warning: cannot write {path}: {exc.strerror or exc}; the epoch records are kept in memory and "
            f"written with the next epoch's")
        return False


def _read_history(path: Path, before_epoch: int) -> list:
    """Lines of ``metrics.jsonl`` with ``epoch < before_epoch`` (the file is rewritten to them)."""
    if not path.is_file():
        return []
    hist = []
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            if rec["epoch"] < before_epoch:
                hist.append(rec)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(h) + "\n" for h in hist))
    os.replace(tmp, path)
    return hist


def _bar(total, desc, enabled):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True, file=sys.stderr)


def fit(dataset, cfg: TrainConfig, out_dir, resume: bool = False, log=print, dist=None) -> dict:
    """Train ``cfg.model`` on ``dataset`` into run directory ``out_dir``.

    Parameters
    ----------
    dataset : pipeline.dataset.Dataset
        Needs ``.classes``, ``.images`` (N, C, H, W) and
        ``.batches(split, batch_size, shuffle, seed, mode)``.
    cfg : TrainConfig
    out_dir : path-like
        The run directory (created; ``config.json`` is the caller's job).
    resume : bool
        Continue from ``out_dir/checkpoints/last.npz``.
    log : callable
        Where messages go (``print``).
    dist : engine.distributed.Distributed or None
        Data-parallel training over MPI ranks (``--distributed``): this rank
        trains its shard of every global batch, gradients are summed over the
        ranks, only rank 0 writes files (see :mod:`engine.distributed`).

    Returns
    -------
    result : dict
        ``history`` (list of epoch records), ``best_epoch``, ``best_val_acc``,
        ``stopped`` ('epochs' | 'patience' | 'max_steps'), ``global_step``,
        ``seconds``.

    Raises
    ------
    Interrupted
        On SIGINT, after saving ``last.npz``.
    NonFiniteLoss
        When the loss is NaN or inf (``last.npz`` stays the last good state).
    FileNotFoundError
        ``resume`` without a checkpoint in ``out_dir``.
    ValueError
        An invalid setting in ``cfg`` (:func:`check_config`), before anything is written.

    Notes
    -----
    A finite loss above ``EXPLODE_LOSS`` or ``EXPLODE_FACTOR`` times the
    session's first loss (floored at 1) logs one warning ("loss is
    exploding") and training goes on; only NaN / inf stops it.
    """
    check_config(cfg)
    with _SigintFlag() as sigint:  # installed before anything slow, so Ctrl-C always saves
        return _fit(dataset, cfg, out_dir, resume, log, sigint, dist)


def _fit(dataset, cfg, out_dir, resume, log, sigint, dist=None):
    import kernels
    from engine.losses import SoftmaxCrossEntropy

    out = Path(out_dir)
    ck_dir = out / "checkpoints"
    ck_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = ck_dir / "last.npz", ck_dir / "best.npz"
    metrics_path = out / "metrics.jsonl"

    xp = kernels.get_backend(cfg.device).xp
    classes = list(dataset.classes)
    mode = model_mode(cfg.model)
    in_shape = _in_shape(dataset, mode)
    model = build_model(cfg, in_shape, len(classes))
    opt = make_optimizer(model, cfg)
    crit = SoftmaxCrossEntropy()
    model.train()
    writer = dist is None or dist.is_writer  # only rank 0 writes files
    if dist is not None:
        dist.setup(model, cfg)

    state = dict(epoch=0, step_in_epoch=0, global_step=0, loss_sum=0.0, correct=0, count=0,
                 epoch_seconds=0.0, wait_seconds=0.0, best_val_acc=-1.0, best_epoch=-1, bad_epochs=0)
    if resume:
        if not last_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {last_path}; start the run without --resume")
        extra = load_state(last_path, model, opt)
        if dist is not None:
            dist.check_resume(extra, last_path)
        state.update({k: extra[k] for k in state if k in extra})
        log(f"resumed from {last_path}: epoch {state['epoch'] + 1}, "
            f"{state['step_in_epoch']} batches of it already done, step {state['global_step']}")
        history = _read_history(metrics_path, state["epoch"] + 1) if writer else []  # keep the finished epochs
    else:
        if writer and metrics_path.exists():
            metrics_path.unlink()
        history = []

    overfit_x = overfit_y = None
    if cfg.overfit_batch:
        overfit_x, overfit_y = first_batch(dataset, "train", cfg.batch_size, mode)
        overfit_x, overfit_y = _as_device(overfit_x, xp), _as_device(overfit_y, xp)
    n_train = 1 if cfg.overfit_batch else _split_size(dataset, "train")
    steps_per_epoch = 1 if cfg.overfit_batch else math.ceil(n_train / cfg.batch_size)

    # batch-time augmentation (engine.augment): the loop gets the cached uint8 levels and augments + decodes
    # them on its device, seeded by (seed, epoch, step in epoch), so a resumed run draws what it would have
    from engine import augment as aug_mod

    aug = aug_mod.AugmentConfig.from_dict(cfg.augment)
    if cfg.overfit_batch:
        aug = aug_mod.OFF
    levels = aug_mod.LevelBatches(dataset) if aug.enabled else None
    aug_bufs = {}
    aug_lut = None
    aug_top_db = 80.0
    if aug.enabled:
        sc = getattr(dataset, "config", None)
        if getattr(sc, "top_db", None):
            aug_top_db = float(sc.top_db)
        if mode == "rgb":
            from pipeline.spectrogram import colormap_lut

            aug_lut = _as_device(np.ascontiguousarray(colormap_lut(getattr(sc, "colormap", "viridis"))), xp)

    gpu = cfg.device == "gpu"
    # GPU: correct predictions since the last read, summed on the device (read at checkpoints / epoch end)
    dev_correct = xp.zeros((), dtype=np.int64) if gpu else None
    unread = [0]  # steps added to dev_correct since its last read

    def flush_correct():
        if gpu and unread[0]:
            state["correct"] += int(dev_correct)
            dev_correct.fill(0)
            unread[0] = 0

    from engine.checkpoint import NonFiniteState, checkpoint_arrays

    pending = {}  # path -> arrays of a state whose write failed: kept in memory, retried at every checkpoint
    saved = {"step": None, "warned": set()}  # step of the last.npz written by this session; files warned about

    def checkpoint(path=last_path):
        """Save the state to ``path`` (and any earlier unsaved one); True when nothing is left unsaved."""
        flush_correct()
        if dist is not None:  # one model on every rank: rank 0's BN running stats, weights compared
            dist.sync_buffers(model)
            dist.check_in_sync(model)
            if not writer:
                return True
        try:
            arrays = checkpoint_arrays(model, opt, dict(state, classes=classes, model=cfg.model, mode=mode,
                                                        in_shape=list(in_shape), world_size=dist.size if dist else 1),
                                       path)
        except NonFiniteState as exc:
            raise NonFiniteWeights(
                f"the weights / optimizer state became non-finite by step {state['global_step']} (epoch "
                f"{state['epoch'] + 1}) with lr={cfg.lr:g}: {exc}; try a lower learning rate, e.g. --lr "
                f"{cfg.lr / 10:g}. The last good checkpoint is kept: "
                f"{last_path if last_path.is_file() else '(none saved yet)'}") from exc
        pending[path] = (arrays, state["global_step"])
        return _flush_pending(pending, saved, last_path, log)

    stopped = "epochs"
    first_loss = None  # the session's first step loss, for the "exploding" warning
    warned = False
    t_run = time.perf_counter()
    while state["epoch"] < cfg.epochs:
        ep = state["epoch"]
        skip = state["step_in_epoch"]
        bar = _bar(steps_per_epoch, f"epoch {ep + 1}/{cfg.epochs}", cfg.progress)
        if bar is not None and skip:
            bar.update(skip)
        feed = None
        if cfg.overfit_batch:
            it = iter([(overfit_x, overfit_y)])
        else:
            it = Prefetcher(levels if aug.enabled else dataset, "train", cfg.batch_size, shuffle=True,
                            seed=epoch_seed(cfg.seed, ep), mode=mode, windows=train_windows(cfg, ep))
            for _ in range(skip):  # finished batches of an interrupted epoch
                next(it)
            if gpu:  # pinned, asynchronous host -> device copies, one batch ahead
                from kernels.gpu.prefetch import PinnedPrefetcher

                feed = iter(PinnedPrefetcher(it))
        try:
            while True:
                if sigint.hit:
                    if bar is not None:
                        bar.close()
                    if not checkpoint():
                        _settle_pending(pending, saved, last_path, out, log)
                    raise Interrupted(
                        f"interrupted at epoch {ep + 1}, batch {state['step_in_epoch']} of {steps_per_epoch} "
                        f"(step {state['global_step']}); checkpoint saved to {last_path}.\n"
                        f"Resume with: {resume_command(out)}")
                t0 = time.perf_counter()
                try:
                    x, y = next(it) if feed is None else next(feed)
                except StopIteration:
                    break
                t1 = time.perf_counter()
                xd, yd = (x, y) if feed is not None else (_as_device(x, xp), _as_device(y, xp))
                td = yd
                if aug.enabled:  # xd: uint8 levels (N, H, W) -> augmented model input; td soft with mixup
                    xd, td = aug_mod.augment_batch(xd, yd, aug, cfg.seed, ep, state["step_in_epoch"], len(classes),
                                                   lut=aug_lut, top_db=aug_top_db, bufs=aug_bufs)
                if dist is not None:  # this rank's rows of the (augmented, mixed) global batch
                    if len(yd) < dist.size:
                        break  # a last batch too short to give every rank a row: dropped on every rank
                    s0, s1 = dist.begin_step(len(yd))
                    xd, yd, td = xd[s0:s1], yd[s0:s1], td[s0:s1]
                model.zero_grad()
                logits = model.forward(xd)
                loss = float(crit.forward(logits, td))
                if dist is not None:  # global mean loss, correct count, batch size (and Ctrl-C on any rank)
                    loss, d_correct, d_n, hit = dist.step_metrics(
                        loss, int((to_numpy(logits).argmax(axis=1) == to_numpy(yd)).sum()), len(yd), sigint.hit)
                    sigint.hit = sigint.hit or hit
                if not math.isfinite(loss):
                    if bar is not None:
                        bar.close()
                    raise NonFiniteLoss(
                        f"loss became {loss} at step {state['global_step'] + 1} (epoch {ep + 1}, batch "
                        f"{state['step_in_epoch'] + 1} of {steps_per_epoch}) with lr={cfg.lr:g}; try a lower "
                        f"learning rate, e.g. --lr {cfg.lr / 10:g}. The last good checkpoint is kept: "
                        f"{last_path if last_path.is_file() else '(none saved yet)'}")
                if first_loss is None:
                    first_loss = loss
                if not warned and (loss > EXPLODE_LOSS or loss > EXPLODE_FACTOR * max(first_loss, 1.0)):
                    warned = True
                    if bar is not None:
                        bar.clear()
                    log(f"warning: loss is exploding ({loss:.3g} at step {state['global_step'] + 1}, "
                        f"{first_loss:.3g} at the first step of this session); try a lower --lr, "
                        f"e.g. --lr {cfg.lr / 10:g}")
                dlogits = crit.backward()
                if dist is not None:
                    dlogits *= len(yd) / d_n  # this rank's share of the global mean
                model.backward(dlogits)
                if dist is not None:
                    dist.allreduce_grads(model)
                    dist.end_step()
                opt.step()
                nb = len(y) if dist is None else d_n
                state["loss_sum"] += loss * nb
                if dist is not None:
                    state["correct"] += d_correct
                elif gpu:  # on the device: no host read per step
                    dev_correct += (logits.argmax(axis=1) == yd).sum()
                    unread[0] += 1
                else:
                    state["correct"] += int((to_numpy(logits).argmax(axis=1) == np.asarray(to_numpy(y))).sum())
                state["count"] += nb
                state["step_in_epoch"] += 1
                state["global_step"] += 1
                t2 = time.perf_counter()
                if cfg.step_delay:
                    time.sleep(cfg.step_delay)
                state["wait_seconds"] += t1 - t0
                state["epoch_seconds"] += t2 - t0
                if bar is not None:
                    post = dict(loss=f"{state['loss_sum'] / state['count']:.4f}")
                    if not gpu:  # the GPU's count is read only at checkpoints / epoch end
                        post["acc"] = f"{state['correct'] / state['count']:.3f}"
                    bar.set_postfix(**post, img_s=f"{state['count'] / max(state['epoch_seconds'], 1e-9):.1f}",
                                    refresh=False)
                    bar.update(1)
                if cfg.max_steps is not None and state["global_step"] >= cfg.max_steps:
                    stopped = "max_steps"
                    break
                if cfg.checkpoint_every and state["step_in_epoch"] % cfg.checkpoint_every == 0:
                    checkpoint()
        finally:
            if feed is not None:
                feed.close()
            if not cfg.overfit_batch:
                it.close()
        flush_correct()
        if bar is not None:
            bar.close()
        if stopped == "max_steps" and state["step_in_epoch"] < steps_per_epoch:
            checkpoint()
            break
        # ---- end of epoch: validation, metrics line, best / last checkpoints
        t_val = time.perf_counter()
        if cfg.overfit_batch:
            model.eval()
            lg = model.forward(overfit_x)
            val_loss = float(crit.forward(lg, overfit_y))
            val_acc = float((to_numpy(lg).argmax(axis=1) == to_numpy(overfit_y)).mean())
            model.train()
        else:
            if dist is not None:
                dist.sync_buffers(model)
            val_loss, yt, yp, _ = evaluate_split(model, dataset, "val", cfg.batch_size, cfg.device, mode,
                                                 eval_crops=cfg.eval_crops)
            val_acc = float((yt == yp).mean()) if yt.size else float("nan")
        cnt = max(state["count"], 1)
        rec = dict(epoch=ep + 1, train_loss=state["loss_sum"] / cnt, train_acc=state["correct"] / cnt,
                   val_loss=val_loss, val_acc=val_acc, lr=cfg.lr,
                   seconds=round(state["epoch_seconds"] + (time.perf_counter() - t_val), 3),
                   images_per_s=round(state["count"] / max(state["epoch_seconds"], 1e-9), 2),
                   data_wait_share=round(state["wait_seconds"] / max(state["epoch_seconds"], 1e-9), 4),
                   peak_rss_mib=round(peak_rss_mib(), 1))
        history.append(rec)
        if writer:
            _write_history(metrics_path, history, log)
        improved = val_acc > state["best_val_acc"]
        if improved:
            state["best_val_acc"], state["best_epoch"], state["bad_epochs"] = val_acc, ep + 1, 0
        else:
            state["bad_epochs"] += 1
        log(f"epoch {ep + 1:3d}/{cfg.epochs}  train loss {rec['train_loss']:.4f} acc {rec['train_acc']:.4f}  "
            f"val loss {val_loss:.4f} acc {val_acc:.4f}{' *' if improved else '  '}  "
            f"{rec['images_per_s']:.1f} img/s  data wait {100 * rec['data_wait_share']:.1f}%  "
            f"{rec['seconds']:.1f}s")
        state.update(epoch=ep + 1, step_in_epoch=0, loss_sum=0.0, correct=0, count=0,
                     epoch_seconds=0.0, wait_seconds=0.0)
        if improved:
            checkpoint(best_path)
        checkpoint(last_path)
        if stopped == "max_steps":
            break
        if cfg.patience is not None and state["bad_epochs"] >= cfg.patience:
            stopped = "patience"
            log(f"early stopping: validation accuracy has not improved for {cfg.patience} epochs "
                f"(best {state['best_val_acc']:.4f} at epoch {state['best_epoch']})")
            break
        if sigint.hit:
            if pending:
                _settle_pending(pending, saved, last_path, out, log)
            raise Interrupted(
                f"interrupted after epoch {ep + 1}; checkpoint saved to {last_path}.\n"
                f"Resume with: {resume_command(out)}")
    if pending and not _flush_pending(pending, saved, last_path, log):
        _settle_pending(pending, saved, last_path, out, log)
    return dict(history=history, best_epoch=state["best_epoch"], best_val_acc=state["best_val_acc"],
                stopped=stopped, global_step=state["global_step"], seconds=time.perf_counter() - t_run,
                model=model, optimizer=opt)


def _split_size(dataset, split: str) -> int:
    sp = np.asarray(dataset.split)
    return int((sp == split).sum())


def _in_shape(dataset, mode: str):
    """(C, H, W) the model sees: the cache's H, W; C = 3 for rgb, 1 for mono."""
    if hasattr(dataset, "image_shape") and callable(dataset.image_shape):
        return tuple(int(v) for v in dataset.image_shape(mode))
    shp = tuple(dataset.images.shape[1:])
    return (3 if mode == "rgb" else 1, int(shp[-2]), int(shp[-1]))


def final_report(run_dir, dataset, cfg: TrainConfig, log=print) -> dict:
    """Evaluate the best checkpoint on the test split; write ``report.json`` and the PNG plots.

    Returns the report dict (see :func:`engine.metrics.classification_report`)
    with ``best_epoch``, ``val_accuracy``, ``train_accuracy`` of that epoch
    added. A run stopped before its first epoch ended (``--max-steps``) has
    no validated (best) checkpoint: the report is of ``last.npz``, says so
    (``best_epoch`` None, ``checkpoint_note``) and gives its step. A file
    that cannot be written (full disk) is named in a warning; the report is
    still returned and printed.
    """
    from engine import metrics, plots

    run = Path(run_dir)
    best = run / "checkpoints" / "best.npz"
    if not best.is_file():
        best = run / "checkpoints" / "last.npz"
    mode = model_mode(cfg.model)
    classes = list(dataset.classes)
    model = build_model(cfg, _in_shape(dataset, mode), len(classes))
    extra = load_state(best, model, None)
    split = "train" if cfg.overfit_batch else "test"
    loss, yt, yp, _ = evaluate_split(model, dataset, split, cfg.batch_size, cfg.device, mode,
                                     limit_batches=1 if cfg.overfit_batch else None,
                                     eval_crops=1 if cfg.overfit_batch else cfg.eval_crops)
    rep = metrics.classification_report(yt, yp, classes)
    rep["split"] = split
    rep["loss"] = loss
    hist = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines() if s.strip()] \
        if (run / "metrics.jsonl").is_file() else []
    best_epoch = int(extra.get("best_epoch", -1))
    if best.name == "best.npz" and best_epoch >= 1:
        title = f"{split} metrics of the best checkpoint (epoch {best_epoch}):"
        rep["best_epoch"] = best_epoch
    else:  # stopped inside the first epoch: nothing validated yet
        note = (f"last checkpoint (step {extra.get('global_step', '?')}, inside epoch "
                f"{int(extra.get('epoch', 0)) + 1}: the run stopped before any epoch ended, so no "
                f"validation and no best checkpoint)")
        title = f"{split} metrics of the {note}:"
        rep["best_epoch"] = None
        rep["checkpoint_note"] = note
    rec = next((h for h in hist if h["epoch"] == best_epoch), None)
    if rec is not None:
        rep["val_accuracy"] = rec["val_acc"]
        rep["train_accuracy"] = rec["train_acc"]
    rep["checkpoint"] = str(best)
    writes = [(run / "report.json", lambda p: p.write_text(json.dumps(rep, indent=2)))]
    if hist:
        writes.append((run / "curves.png", lambda p: plots.plot_curves(hist, p)))
    writes.append((run / "confusion.png", lambda p: plots.plot_confusion(
        rep["confusion_matrix"], classes, p, title=f"{split}: accuracy {rep['accuracy']:.3f}")))
    for path, write in writes:
        try:
            write(path)
        except OSError as exc:
            log(f"warning: cannot write {path}: {exc.strerror or exc}")
    log(metrics.format_report(rep, title))
    return rep


def config_dict(cfg: TrainConfig) -> dict:
    """``TrainConfig`` as a plain dict (for ``config.json``)."""
    return asdict(cfg)
