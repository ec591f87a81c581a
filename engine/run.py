"""A run directory on disk: checkpoints (and their failed writes), the epoch records, resume.

One run lives in a run directory ``OUT/``::

    OUT/config.json            every setting (``engine.job.run_config``)
    OUT/metrics.jsonl          one JSON line per epoch (``engine.train.EPOCH_KEYS``)
    OUT/checkpoints/last.npz   the latest state (mid-epoch too): resume from here
    OUT/checkpoints/best.npz   the state of the epoch with the best validation accuracy
    OUT/report.json            test metrics of the best checkpoint (``engine.evaluate.final_report``)
    OUT/curves.png, OUT/confusion.png

A checkpoint write that fails (a full disk) logs one warning naming the file
and training goes on (:class:`CheckpointWriter`): the previous file is
intact, the unsaved state is kept in memory and written at the next
checkpoint; if it is still unsaved when the run ends, the user decides on a
terminal, otherwise ``CheckpointNotSaved`` (exit 4). ``metrics.jsonl`` is
rewritten whole (atomically) each epoch (:func:`write_history`), so a failed
write is made good by the next one.
"""
from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path

from engine.errors import CheckpointNotSaved, resume_command

__all__ = ["save_state", "load_state", "CheckpointWriter", "write_history", "read_history", "peak_rss_mib"]


def peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB (``ru_maxrss``: KiB on Linux)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if sys.platform != "darwin" else r / 2 ** 20


def save_state(path, model, opt, extra: dict) -> None:
    """``engine.checkpoint.save_checkpoint`` (weights, BN statistics, Adam, Dropout RNG states, ``extra``)."""
    from engine.checkpoint import save_checkpoint

    save_checkpoint(str(path), model, opt, extra)


def load_state(path, model, opt=None) -> dict:
    """Load a checkpoint written by :func:`save_state`; returns its ``extra`` dict."""
    from engine.checkpoint import load_checkpoint

    return load_checkpoint(str(path), model, opt) or {}


class CheckpointWriter:
    """Writes a run's checkpoints; a write that fails (a full disk) keeps the state in memory and retries.

    Parameters
    ----------
    last_path : Path
        ``OUT/checkpoints/last.npz`` (written after ``best.npz`` when both are pending).
    out : Path
        The run directory (for the resume command in messages).
    log : callable

    Attributes
    ----------
    pending : dict
        ``path -> (arrays, step)`` of states whose write failed, retried at every checkpoint.
    saved_step : int or None
        The step of the ``last.npz`` this session wrote.
    """

    def __init__(self, last_path, out, log=print):
        self.last_path, self.out, self.log = Path(last_path), Path(out), log
        self.pending = {}
        self.saved_step = None
        self.warned = set()

    def put(self, path, arrays: dict, step: int) -> bool:
        """Write ``arrays`` (``engine.checkpoint.checkpoint_arrays``) to ``path`` and any earlier unsaved state.

        Returns True when nothing is left unsaved.
        """
        self.pending[Path(path)] = (arrays, step)
        return self.flush()

    def flush(self) -> bool:
        """Write every unsaved checkpoint (best before last); True when all are written.

        A failure logs one line naming the file (once per file until it is
        written) and keeps the state in ``pending``; the file on disk is intact.
        """
        from engine.checkpoint import CheckpointWriteError, write_checkpoint

        for path in sorted(self.pending, key=lambda p: p == self.last_path):
            arrays, step = self.pending[path]
            try:
                write_checkpoint(path, arrays)
            except CheckpointWriteError as exc:
                if path not in self.warned:
                    self.warned.add(path)
                    prev = "the previous one is intact" if Path(path).is_file() else "there is no earlier one"
                    self.log(f"warning: {exc}; {prev}. Training goes on with this state kept in memory; it is written "
                        f"at the next checkpoint")
                continue
            if path in self.warned:
                self.warned.discard(path)
                self.log(f"checkpoint {path} written (step {step}) after the earlier failure")
            del self.pending[path]
            if path == self.last_path:
                self.saved_step = step
        return not self.pending

    def settle(self) -> None:
        """The run is ending with unsaved checkpoints: retry on the user's word (a terminal), else stop (exit 4).

        Raises
        ------
        CheckpointNotSaved
            Naming the files, what ``last.npz`` holds and the resume command.
        """
        interactive = sys.stdin is not None and sys.stdin.isatty()
        while self.pending and interactive:
            try:
                input(f"{len(self.pending)} checkpoint(s) not written ({', '.join(map(str, self.pending))}): free some space, "
                      f"then press Enter to retry (Ctrl-D or Ctrl-C: stop) ")
            except (EOFError, KeyboardInterrupt):
                break
            self.flush()
        if not self.pending:
            return
        steps = sorted({step for _, step in self.pending.values()})
        if self.saved_step is not None:
            on_disk = f"{self.last_path} holds step {self.saved_step}"
        elif Path(self.last_path).is_file():
            on_disk = f"{self.last_path} holds the state of an earlier session"
        else:
            on_disk = "no checkpoint is on disk, so a resume starts the run over"
        raise CheckpointNotSaved(
            f"could not write {', '.join(map(str, self.pending))} (the state of step {steps[-1]}): the disk is full or "
            f"not writable; the training since the last written checkpoint is lost when this process ends; "
            f"{on_disk}. Free some space, then resume with: {resume_command(self.out)}")


def write_history(path: Path, history: list, log=print) -> bool:
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


def read_history(path: Path, before_epoch: int, log=None) -> list:
    """Lines of ``metrics.jsonl`` with ``epoch < before_epoch`` (the file is rewritten to them).

    A damaged line (not a JSON object with an integer ``epoch``: a hand edit, a
    truncated copy) is dropped with a warning naming the file and line (``log``,
    default standard error); the checkpoint, not this file, holds the run's state.
    """
    if not path.is_file():
        return []
    hist = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rec = json.loads(line)
                keep = int(rec["epoch"]) < before_epoch
            except (ValueError, TypeError, KeyError) as exc:
                (log or (lambda m: print(m, file=sys.stderr)))(
                    f"warning: {path} line {i} is damaged ({type(exc).__name__}: {exc}); dropped from the history")
                continue
            if keep:
                hist.append(rec)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(h) + "\n" for h in hist))
    os.replace(tmp, path)
    return hist
