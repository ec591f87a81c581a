"""One training session of a run: the steps of an epoch, validation, the end of an epoch, checkpoints.

:class:`Session` holds the model, Adam, the data and a :class:`RunState`;
:func:`engine.train.fit` drives it (see that module for the contract:
determinism, resume, signals, devices). Nothing here names a device: the
backend's policy (``kernels.get_backend(cfg.device).device``) feeds the
batches, counts correct predictions where the logits are and converts to the
host.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from engine.batches import Prefetcher, epoch_seed, first_batch, train_windows
from engine.config import build_model, input_shape, make_optimizer, model_mode, split_size
from engine.errors import Interrupted, NonFiniteLoss, NonFiniteWeights, resume_command
from engine.evaluate import evaluate_split
from engine.run import CheckpointWriter, load_state, peak_rss_mib, read_history, write_history

__all__ = ["RunState", "Session", "EPOCH_KEYS", "EXPLODE_LOSS", "EXPLODE_FACTOR"]

EPOCH_KEYS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds",
              "images_per_s", "data_wait_share", "peak_rss_mib")

#: a step loss above this (or above EXPLODE_FACTOR x the session's first loss, floored at 1) logs a warning
EXPLODE_LOSS = 1e6
EXPLODE_FACTOR = 100.0


@dataclass
class RunState:
    """What the loop carries between steps; saved whole in every checkpoint (its ``extra``).

    Attributes
    ----------
    epoch : int
        Finished epochs (the current one is ``epoch + 1``, 1-based).
    step_in_epoch, global_step : int
        Batches trained in the current epoch, and in the whole run.
    loss_sum : float
        The current epoch's sum of ``loss * batch size`` (float64, on the host).
    correct, count : int
        The current epoch's correct training predictions and images.
    epoch_seconds, wait_seconds : float
        Time in the current epoch's steps, and waiting for data in them.
    best_val_acc : float
        Best validation accuracy so far (-1 before the first epoch ends).
    best_epoch, bad_epochs : int
        Its epoch (1-based, -1: none) and the epochs since it (early stopping).
    """

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    count: int = 0
    epoch_seconds: float = 0.0
    wait_seconds: float = 0.0
    best_val_acc: float = -1.0
    best_epoch: int = -1
    bad_epochs: int = 0

    @classmethod
    def from_checkpoint(cls, extra: dict) -> RunState:
        """The state saved in a checkpoint's ``extra`` (missing fields keep their defaults)."""
        return cls(**{f.name: extra[f.name] for f in fields(cls) if f.name in extra})

    def new_epoch(self) -> None:
        """Close the epoch: count it and zero the per-epoch sums."""
        self.epoch += 1
        self.step_in_epoch, self.loss_sum, self.correct, self.count = 0, 0.0, 0, 0
        self.epoch_seconds = self.wait_seconds = 0.0


def _bar(total, desc, enabled):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True, file=sys.stderr)


class Session:
    """One training session of a run (a fresh start or a resume): the model, Adam, the data and a :class:`RunState`.

    :func:`fit` drives it; its methods are the loop's three parts.

    Attributes
    ----------
    model : engine.model.Sequential
    opt : engine.optim.Adam
    state : RunState
    history : list of dict
        The epoch records so far (this session's and, after a resume, the finished ones).
    dev : module
        The backend's device policy (``kernels.<backend>.device``).
    """

    def __init__(self, dataset, cfg, out_dir, resume, log, sigint, dist, max_steps, step_delay):
        import kernels
        from engine import augment as aug_mod
        from engine.losses import SoftmaxCrossEntropy

        self.dataset, self.cfg, self.log, self.sigint, self.dist = dataset, cfg, log, sigint, dist
        self.max_steps, self.step_delay = max_steps, step_delay
        self.out = Path(out_dir)
        ck_dir = self.out / "checkpoints"
        ck_dir.mkdir(parents=True, exist_ok=True)
        self.last_path, self.best_path = ck_dir / "last.npz", ck_dir / "best.npz"
        self.metrics_path = self.out / "metrics.jsonl"
        self.dev = kernels.get_backend(cfg.device).device
        self.classes = list(dataset.classes)
        self.mode = model_mode(cfg.model)
        self.in_shape = input_shape(dataset, self.mode)
        self.model = build_model(cfg, self.in_shape, len(self.classes))
        self.opt = make_optimizer(self.model, cfg)
        self.crit = SoftmaxCrossEntropy()
        self.model.train()
        self.writer = dist is None or dist.is_writer  # only rank 0 writes files
        if dist is not None:
            dist.setup(self.model, cfg)

        self.state = RunState()
        if resume:
            if not self.last_path.is_file():
                raise FileNotFoundError(f"--resume: no checkpoint at {self.last_path}; start the run without --resume")
            extra = load_state(self.last_path, self.model, self.opt)
            if dist is not None:
                dist.check_resume(extra, self.last_path)
            self.state = RunState.from_checkpoint(extra)
            st = self.state
            if st.epoch >= cfg.epochs:  # a finished run: say so rather than name an epoch that never runs
                log(f"resumed from {self.last_path}: the run is already complete ({st.epoch} of {cfg.epochs} "
                    f"epochs, step {st.global_step}); nothing to train (raise --epochs to train further)")
            else:
                log(f"resumed from {self.last_path}: epoch {st.epoch + 1}, "
                    f"{st.step_in_epoch} batches of it already done, step {st.global_step}")
            # keep the finished epochs
            self.history = read_history(self.metrics_path, st.epoch + 1, log) if self.writer else []
        else:
            if self.writer and self.metrics_path.exists():
                self.metrics_path.unlink()
            self.history = []

        self.overfit = None  # (x, y) on the device with --overfit-batch
        if cfg.overfit_batch:
            x, y = first_batch(dataset, "train", cfg.batch_size, self.mode)
            self.overfit = (self.dev.to_device(x), self.dev.to_device(y))
        n_train = 1 if cfg.overfit_batch else split_size(dataset, "train")
        self.steps_per_epoch = 1 if cfg.overfit_batch else math.ceil(n_train / cfg.batch_size)

        # batch-time augmentation (engine.augment): the loop gets the cached uint8 levels and augments + decodes
        # them on its device, seeded by (seed, epoch, step in epoch), so a resumed run draws what it would have
        self.aug = aug_mod.OFF if cfg.overfit_batch else aug_mod.AugmentConfig.from_dict(cfg.augment)
        self.levels = aug_mod.LevelBatches(dataset) if self.aug.enabled else None
        self.aug_bufs = {}
        self.aug_lut = None
        self.aug_top_db = 80.0
        if self.aug.enabled:
            sc = getattr(dataset, "config", None)
            if getattr(sc, "top_db", None):
                self.aug_top_db = float(sc.top_db)
            if self.mode == "rgb":
                from pipeline.spectrogram import colormap_lut

                lut = np.ascontiguousarray(colormap_lut(getattr(sc, "colormap", "viridis")))
                self.aug_lut = self.dev.to_device(lut)

        # correct predictions since the last read, counted where the logits are (the GPU: read at checkpoints)
        self.counter = self.dev.correct_counter()
        self.ckpt = CheckpointWriter(self.last_path, self.out, log)
        self.val_seconds = 0.0
        self.first_loss = None  # the session's first step loss, for the "exploding" warning
        self.warned = False

    # ------------------------------------------------------------------------- state and checkpoints
    def flush_correct(self) -> None:
        """Add the device's correct count to the state (one device read on the GPU)."""
        if self.counter.pending:
            self.state.correct += self.counter.take()

    def checkpoint(self, path=None) -> bool:
        """Save the state to ``path`` (default ``last.npz``; and any earlier unsaved one); True when all are saved.

        Raises
        ------
        NonFiniteWeights
            The weights or Adam moments are NaN / inf (nothing is written).
        """
        from engine.checkpoint import NonFiniteState, checkpoint_arrays

        path = self.last_path if path is None else path
        self.flush_correct()
        cfg, st, dist = self.cfg, self.state, self.dist
        if dist is not None:  # one model on every rank: rank 0's BN running stats, weights compared
            dist.sync_buffers(self.model)
            dist.check_in_sync(self.model)
            if not self.writer:
                return True
        try:
            arrays = checkpoint_arrays(self.model, self.opt,
                                       dict(asdict(st), classes=self.classes, model=cfg.model, mode=self.mode,
                                            in_shape=list(self.in_shape), world_size=dist.size if dist else 1),
                                       path)
        except NonFiniteState as exc:
            raise NonFiniteWeights(
                f"the weights / optimizer state became non-finite by step {st.global_step} (epoch "
                f"{st.epoch + 1}) with lr={cfg.lr:g}: {exc}; try a lower learning rate, e.g. --lr "
                f"{cfg.lr / 10:g}. The last good checkpoint is kept: "
                f"{self.last_path if self.last_path.is_file() else '(none saved yet)'}") from exc
        return self.ckpt.put(path, arrays, st.global_step)

    def _interrupt(self, where: str):
        """Save (or settle the unsaved state), then raise Interrupted with the resume command."""
        if not self.checkpoint():
            self.ckpt.settle()
        raise Interrupted(f"interrupted {where}; checkpoint saved to {self.last_path}.\n"
                          f"Resume with: {resume_command(self.out)}")

    def close(self) -> None:
        """The run ends: write whatever is still unsaved, or settle it (``CheckpointWriter.settle``)."""
        if self.ckpt.pending and not self.ckpt.flush():
            self.ckpt.settle()

    # ------------------------------------------------------------------------- the steps of one epoch
    def _batches(self):
        """This epoch's training batches on the device, with the finished ones of a resumed epoch skipped."""
        cfg, ep = self.cfg, self.state.epoch
        if cfg.overfit_batch:
            return iter([self.overfit])
        it = Prefetcher(self.levels if self.aug.enabled else self.dataset, "train", cfg.batch_size, shuffle=True,
                        seed=epoch_seed(cfg.seed, ep), mode=self.mode, windows=train_windows(cfg, ep))
        try:
            for _ in range(self.state.step_in_epoch):  # finished batches of an interrupted epoch
                next(it)
        except BaseException:
            it.close()
            raise
        return self.dev.feed(it)

    def train_epoch(self) -> bool:
        """Train the rest of the current epoch; False when ``max_steps`` stopped it before its end.

        Raises
        ------
        Interrupted, NonFiniteLoss, NonFiniteWeights
        """
        cfg, st = self.cfg, self.state
        bar = _bar(self.steps_per_epoch, f"epoch {st.epoch + 1}/{cfg.epochs}", cfg.progress)
        if bar is not None and st.step_in_epoch:
            bar.update(st.step_in_epoch)
        feed = self._batches()
        try:
            while True:
                if self.sigint.hit:
                    if bar is not None:
                        bar.close()
                    self._interrupt(f"at epoch {st.epoch + 1}, batch {st.step_in_epoch} of {self.steps_per_epoch} "
                                    f"(step {st.global_step})")
                t0 = time.perf_counter()
                try:
                    x, y = next(feed)
                except StopIteration:
                    break
                t1 = time.perf_counter()
                if not self.step(x, y, bar):
                    break  # a last batch too short to give every MPI rank a row
                t2 = time.perf_counter()
                if self.step_delay:
                    time.sleep(self.step_delay)
                st.wait_seconds += t1 - t0
                st.epoch_seconds += t2 - t0
                if bar is not None:
                    post = dict(loss=f"{st.loss_sum / st.count:.4f}")
                    if not self.counter.deferred:  # a device count is read only at checkpoints / epoch end
                        post["acc"] = f"{st.correct / st.count:.3f}"
                    bar.set_postfix(**post, img_s=f"{st.count / max(st.epoch_seconds, 1e-9):.1f}", refresh=False)
                    bar.update(1)
                if self.max_steps is not None and st.global_step >= self.max_steps:
                    if st.step_in_epoch < self.steps_per_epoch:
                        return False
                    break
                if cfg.checkpoint_every and st.step_in_epoch % cfg.checkpoint_every == 0:
                    self.checkpoint()
        finally:
            close = getattr(feed, "close", None)
            if close is not None:
                close()
            self.flush_correct()
            if bar is not None:
                bar.close()
        return True

    def step(self, x, y, bar=None) -> bool:
        """One training step on batch ``(x, y)`` (host or device arrays); False when it was skipped.

        Raises
        ------
        NonFiniteLoss
            A NaN / inf loss (before backward: no update is applied).
        """
        cfg, st, dist, dev = self.cfg, self.state, self.dist, self.dev
        xd, yd = dev.to_device(x), dev.to_device(y)
        td = yd
        if self.aug.enabled:  # xd: uint8 levels (N, H, W) -> augmented model input; td soft with mixup
            from engine import augment as aug_mod

            xd, td = aug_mod.augment_batch(xd, yd, self.aug, cfg.seed, st.epoch, st.step_in_epoch,
                                           len(self.classes), lut=self.aug_lut, top_db=self.aug_top_db,
                                           bufs=self.aug_bufs)
        if dist is not None:  # this rank's rows of the (augmented, mixed) global batch
            if len(yd) < dist.size:
                return False  # dropped on every rank
            s0, s1 = dist.begin_step(len(yd))
            xd, yd, td = xd[s0:s1], yd[s0:s1], td[s0:s1]
        self.model.zero_grad()
        logits = self.model.forward(xd)
        loss = float(self.crit.forward(logits, td))
        if dist is not None:  # global mean loss, correct count, batch size (and Ctrl-C on any rank)
            loss, d_correct, d_n, hit = dist.step_metrics(loss, dev.count_correct(logits, yd), len(yd),
                                                          self.sigint.hit)
            self.sigint.hit = self.sigint.hit or hit
        if not math.isfinite(loss):
            if bar is not None:
                bar.close()
            raise NonFiniteLoss(
                f"loss became {loss} at step {st.global_step + 1} (epoch {st.epoch + 1}, batch "
                f"{st.step_in_epoch + 1} of {self.steps_per_epoch}) with lr={cfg.lr:g}; try a lower "
                f"learning rate, e.g. --lr {cfg.lr / 10:g}. The last good checkpoint is kept: "
                f"{self.last_path if self.last_path.is_file() else '(none saved yet)'}")
        if self.first_loss is None:
            self.first_loss = loss
        if not self.warned and (loss > EXPLODE_LOSS or loss > EXPLODE_FACTOR * max(self.first_loss, 1.0)):
            self.warned = True
            if bar is not None:
                bar.clear()
            self.log(f"warning: loss is exploding ({loss:.3g} at step {st.global_step + 1}, "
                     f"{self.first_loss:.3g} at the first step of this session); try a lower --lr, "
                     f"e.g. --lr {cfg.lr / 10:g}")
        dlogits = self.crit.backward()
        if dist is not None:
            dlogits *= len(yd) / d_n  # this rank's share of the global mean
        self.model.backward(dlogits)
        if dist is not None:
            dist.allreduce_grads(self.model)
            dist.end_step()
        self.opt.step()
        nb = len(y) if dist is None else d_n
        st.loss_sum += loss * nb
        if dist is not None:
            st.correct += d_correct
        else:
            self.counter.add(logits, yd)  # on the GPU: summed on the device, no host read per step
            if not self.counter.deferred:
                st.correct += self.counter.take()
        st.count += nb
        st.step_in_epoch += 1
        st.global_step += 1
        return True

    # ------------------------------------------------------------------------- the end of an epoch
    def validate(self):
        """``(val_loss, val_acc)`` of the current weights (``--overfit-batch``: that batch in eval mode).

        Its duration is kept in ``val_seconds`` (part of the epoch's ``seconds``).
        """
        t0 = time.perf_counter()
        try:
            return self._validate()
        finally:
            self.val_seconds = time.perf_counter() - t0

    def _validate(self):
        cfg = self.cfg
        if cfg.overfit_batch:
            x, y = self.overfit
            self.model.eval()
            lg = self.model.forward(x)
            val_loss = float(self.crit.forward(lg, y))
            val_acc = float((self.dev.to_host(lg).argmax(axis=1) == self.dev.to_host(y)).mean())
            self.model.train()
            return val_loss, val_acc
        if self.dist is not None:
            self.dist.sync_buffers(self.model)
        val_loss, yt, yp, _ = evaluate_split(self.model, self.dataset, "val", cfg.batch_size, cfg.device, self.mode,
                                             eval_crops=cfg.eval_crops)
        return val_loss, (float((yt == yp).mean()) if yt.size else float("nan"))

    def end_epoch(self, val_loss: float, val_acc: float) -> str:
        """Record the epoch (metrics.jsonl, the log line), checkpoint best / last; the reason to stop or 'epochs'.

        Returns
        -------
        {'epochs', 'patience', 'max_steps'}
            'epochs': go on (or the last epoch is done).

        Raises
        ------
        Interrupted
            Ctrl-C arrived during validation (after the checkpoints are written).
        """
        cfg, st, ep = self.cfg, self.state, self.state.epoch
        cnt = max(st.count, 1)
        rec = dict(epoch=ep + 1, train_loss=st.loss_sum / cnt, train_acc=st.correct / cnt,
                   val_loss=val_loss, val_acc=val_acc, lr=cfg.lr,
                   seconds=round(st.epoch_seconds + self.val_seconds, 3),
                   images_per_s=round(st.count / max(st.epoch_seconds, 1e-9), 2),
                   data_wait_share=round(st.wait_seconds / max(st.epoch_seconds, 1e-9), 4),
                   peak_rss_mib=round(peak_rss_mib(), 1))
        self.history.append(rec)
        if self.writer:
            write_history(self.metrics_path, self.history, self.log)
        improved = val_acc > st.best_val_acc
        if improved:
            st.best_val_acc, st.best_epoch, st.bad_epochs = val_acc, ep + 1, 0
        else:
            st.bad_epochs += 1
        self.log(f"epoch {ep + 1:3d}/{cfg.epochs}  train loss {rec['train_loss']:.4f} acc {rec['train_acc']:.4f}  "
                 f"val loss {val_loss:.4f} acc {val_acc:.4f}{' *' if improved else '  '}  "
                 f"{rec['images_per_s']:.1f} img/s  data wait {100 * rec['data_wait_share']:.1f}%  "
                 f"{rec['seconds']:.1f}s")
        st.new_epoch()
        if improved:
            self.checkpoint(self.best_path)
        self.checkpoint(self.last_path)
        if self.max_steps is not None and st.global_step >= self.max_steps:
            return "max_steps"
        if cfg.patience is not None and st.bad_epochs >= cfg.patience:
            self.log(f"early stopping: validation accuracy has not improved for {cfg.patience} epochs "
                     f"(best {st.best_val_acc:.4f} at epoch {st.best_epoch})")
            return "patience"
        if self.sigint.hit:
            if self.ckpt.pending:
                self.ckpt.settle()
            raise Interrupted(f"interrupted after epoch {ep + 1}; checkpoint saved to {self.last_path}.\n"
                              f"Resume with: {resume_command(self.out)}")
        return "epochs"
