"""The training loop used by ``python cli.py train``: :func:`fit`.

:func:`fit` is a short loop over epochs: :meth:`Session.train_epoch` (the
steps), :meth:`Session.validate` and :meth:`Session.end_epoch` (the metrics
line, best / last checkpoints, early stopping). Everything the loop carries
from step to step, and everything a checkpoint must hold to resume, is one
:class:`RunState`. The run directory, checkpoint writing and the epoch
records are :mod:`engine.run`'s; the settings :mod:`engine.config`'s; the
batch order and read-ahead :mod:`engine.batches`'s; evaluation
:mod:`engine.evaluate`'s; the exceptions :mod:`engine.errors`'s.

Devices
-------
The loop never names a device: it asks ``kernels.get_backend(cfg.device)``
for its device policy (``.device``: ``feed`` moves host batches onto the
device with the backend's own prefetch, ``correct_counter`` counts correct
predictions where the logits are, ``to_host`` / ``to_device``). On the GPU
that means pinned asynchronous copies one batch ahead and a correct count
read only at checkpoints and at the end of the epoch, so the one host
synchronisation per step is reading the loss (logging and the NaN check).
Dropout draws from a counter-based stream whose state is two integers, so GPU
checkpoints resume bit-exactly too (see ``engine.layers.Dropout``).

Determinism and resume
----------------------
The data order of epoch ``e`` is fully given by ``epoch_seed(seed, e)`` and
its crop windows by ``train_windows(cfg, e)`` (:mod:`engine.batches`), so
neither needs an RNG state of its own. Validation and test average
``eval_crops`` evenly spaced windows per clip, as ``predict`` does.
Checkpoints are written every ``checkpoint_every`` steps and at the end of
every epoch; each stores the :class:`RunState` and the RNG state of every
Dropout layer. On ``--resume`` the model, Adam and Dropout states are
restored, ``metrics.jsonl`` is cut back to the finished epochs, and the
finished batches of the current epoch are skipped (drawn from the same
ordering and dropped), so a run killed with SIGKILL and resumed ends
bit-identical to one never interrupted (on the CPU, same thread count).

Batch-time augmentation (``TrainConfig.augment``, :mod:`engine.augment`):
the training batches then arrive as the cached uint8 levels
(``engine.augment.LevelBatches``, the same order) and are augmented and
decoded on the training device by ``engine.augment.augment_batch`` with the
parameters of ``(seed, epoch, step_in_epoch)``: a function of the position,
not of a generator state, so resume stays bit-exact. With mixup the loss gets
soft targets; ``train_acc`` counts each image's own label.

Signals and failures
--------------------
SIGINT (Ctrl-C) sets a flag; after the current step the loop saves
``last.npz`` and raises ``Interrupted`` whose message gives the resume
command. A NaN or inf loss stops before backward (so no bad update is ever
applied or saved) with ``NonFiniteLoss`` naming the step and suggesting a
lower learning rate; ``last.npz`` stays the last good checkpoint. Weights or
Adam moments that overflow to NaN / inf are caught at the next checkpoint
(``NonFiniteWeights``, also exit 3): a non-finite state is never saved. A
checkpoint that cannot be written is :class:`engine.run.CheckpointWriter`'s
business.
"""
from __future__ import annotations

import math
import signal
import time

import numpy as np

from engine.config import TrainConfig, check_config
from engine.session import EPOCH_KEYS, EXPLODE_FACTOR, EXPLODE_LOSS, RunState, Session

__all__ = ["fit", "RunState", "Session", "EPOCH_KEYS", "EXPLODE_LOSS", "EXPLODE_FACTOR"]


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


def fit(dataset, cfg: TrainConfig, out_dir, resume: bool = False, log=print, dist=None, *,
        max_steps: int | None = None, step_delay: float = 0.0) -> dict:
    """Train ``cfg.model`` on ``dataset`` into run directory ``out_dir``.

    Parameters
    ----------
    dataset : pipeline.dataset.Dataset
        Needs ``.classes``, ``.split``, ``.image_shape(mode)`` (or ``.images``)
        and ``.batches(split, batch_size, shuffle, seed, mode, windows=...)``.
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
    max_steps : int >= 1 or None
        Debugging and tests: stop after this many steps in total (the run
        ends with ``stopped='max_steps'``; not part of the configuration).
    step_delay : float >= 0
        Tests: seconds to sleep after every step (a run slow enough to kill mid-epoch).

    Returns
    -------
    result : dict
        ``history`` (list of epoch records, keys ``EPOCH_KEYS``), ``best_epoch``,
        ``best_val_acc``, ``stopped`` ('epochs' | 'patience' | 'max_steps'),
        ``global_step``, ``seconds``, ``model``, ``optimizer``.

    Raises
    ------
    Interrupted
        On SIGINT, after saving ``last.npz``.
    NonFiniteLoss
        When the loss is NaN or inf (``last.npz`` stays the last good state).
    FileNotFoundError
        ``resume`` without a checkpoint in ``out_dir``.
    ValueError
        An invalid setting in ``cfg`` (``engine.config.check_config``), ``max_steps``
        or ``step_delay``, before anything is written.

    Notes
    -----
    A finite loss above ``EXPLODE_LOSS`` or ``EXPLODE_FACTOR`` times the
    session's first loss (floored at 1) logs one warning ("loss is
    exploding") and training goes on; only NaN / inf stops it.
    """
    check_config(cfg)
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer))
                                  or max_steps < 1):
        raise ValueError(f"max_steps = {max_steps!r}, expected an integer >= 1 (or None)")
    if not isinstance(step_delay, (int, float)) or not math.isfinite(step_delay) or step_delay < 0:
        raise ValueError(f"step_delay = {step_delay!r}, expected a finite number of seconds >= 0")
    with _SigintFlag() as sigint:  # installed before anything slow, so Ctrl-C always saves
        s = Session(dataset, cfg, out_dir, resume, log, sigint, dist, max_steps, step_delay)
        t_run = time.perf_counter()
        stopped = "epochs"
        while s.state.epoch < cfg.epochs:
            finished = s.train_epoch()
            if not finished:  # max_steps inside the epoch
                s.checkpoint()
                stopped = "max_steps"
                break
            val_loss, val_acc = s.validate()
            stopped = s.end_epoch(val_loss, val_acc)
            if stopped != "epochs":
                break
        s.close()
        st = s.state
        return dict(history=s.history, best_epoch=st.best_epoch, best_val_acc=st.best_val_acc,
                    stopped=stopped, global_step=st.global_step, seconds=time.perf_counter() - t_run,
                    model=s.model, optimizer=s.opt)
