"""Checkpoints: one ``.npz`` file holding everything a bit-exact resume needs.

Contents (keys of the archive):

- ``model/<name>``: every parameter and BatchNorm running statistic
  (:meth:`engine.model.Sequential.state_dict` names);
- ``optim/m/<name>``, ``optim/v/<name>``: Adam's moments;
- ``meta``: a JSON string with the format version, Adam's step count and
  hyper-parameters, the Dropout generators' states, and the caller's
  ``extra`` dict (e.g. epoch, batch index, data-order RNG state).

Devices: the file is the same for a model on the CPU or the GPU. Saving
copies every array to the host (``Sequential.state_dict`` and
``Adam.state_dict`` read CuPy arrays with ``.get()``); loading copies them
back into the model's and optimizer's existing arrays, on whatever device
those live (move the model with ``to()`` *before* building the optimizer and
loading). Dropout states are JSON dicts tagged by generator
(``bit_generator``: ``"PCG64"`` on the CPU, ``"hitcnn-splitmix64-counter"``
on the GPU, a ``(seed, offset)`` counter): a state is restored into the
layer's generator of the same kind, so a run resumes bit-exactly on the
device it was saved from; a state from the other device is kept by the
layer for a later move (``engine.layers.Dropout.set_rng_state``).

Writes are atomic: the archive goes to a temporary file in the target's
directory, is flushed and fsync'ed, then ``os.replace``'d over the target
(and the directory fsync'ed), so a crash leaves either the old or the new
checkpoint, never a torn one. A write that fails (a full disk) removes its
temporary file and raises :class:`CheckpointWriteError` naming the file and
the space needed; the previous checkpoint is untouched.

Only finite states are saved: :func:`save_checkpoint` raises
:class:`NonFiniteState` (naming the arrays) before writing anything when a
weight, a BatchNorm statistic or an Adam moment is NaN or inf, so a
checkpoint on disk is always one training can resume from.
:func:`checkpoint_arrays` and :func:`write_checkpoint` are the two halves of
:func:`save_checkpoint`, for a caller that keeps a state in memory to retry
its write later (``engine.run.CheckpointWriter``).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile

import numpy as np

__all__ = ["save_checkpoint", "load_checkpoint", "checkpoint_arrays", "write_checkpoint", "CheckpointError",
           "CheckpointWriteError", "NonFiniteState", "FORMAT"]

FORMAT = "hitcnn-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint file is corrupt or does not match the model/optimizer (the message names the file)."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (e.g. a full disk); the previous file at ``path`` is intact.

    Attributes: ``path`` (the target), ``nbytes`` (the archive's size), ``errno``.
    """

    def __init__(self, msg, path=None, nbytes=None, errno=None):
        super().__init__(msg)
        self.path, self.nbytes, self.errno = path, nbytes, errno


class NonFiniteState(CheckpointError):
    """The state to save holds NaN or inf values (``names``: the arrays); nothing was written."""

    def __init__(self, msg, names=()):
        super().__init__(msg)
        self.names = list(names)


def _fmt_bytes(n) -> str:
    return f"{n / 2 ** 20:.1f} MiB" if n >= 2 ** 20 else f"{n / 1024:.1f} KiB"


def save_checkpoint(path, model, optimizer=None, extra=None):
    """Write ``model`` (+ ``optimizer`` state, Dropout RNG states, ``extra``) to ``path`` atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Target file (conventionally ``*.npz``); its directory must exist.
    model : engine.model.Sequential
    optimizer : engine.optim.Adam or None
    extra : dict or None
        JSON-serialisable values restored by :func:`load_checkpoint`.

    Raises
    ------
    ValueError
        If ``extra`` is not JSON-serialisable.
    NonFiniteState
        A NaN / inf weight, statistic or moment (nothing is written).
    CheckpointWriteError
        The file could not be written (the previous ``path`` is intact).
    """
    write_checkpoint(path, checkpoint_arrays(model, optimizer, extra, path=path))


def checkpoint_arrays(model, optimizer=None, extra=None, path="checkpoint"):
    """Host copies of everything :func:`save_checkpoint` stores, as ``{key: np.ndarray}`` (``meta``: JSON).

    Raises
    ------
    ValueError
        ``extra`` not JSON-serialisable.
    NonFiniteState
        Any floating-point array holds NaN or inf (naming them, first five).
    """
    path = os.fspath(path)
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "rng": model.rng_states() if hasattr(model, "rng_states") else {},
            "extra": extra or {}, "optim": None}
    if optimizer is not None:
        st = optimizer.state_dict()
        for key in ("m", "v"):
            arrays.update({f"optim/{key}/{n}": a for n, a in st[key].items()})
        meta["optim"] = {k: st[k] for k in ("step", "lr", "betas", "eps", "weight_decay")}
    try:
        meta_s = json.dumps(meta)
    except TypeError as exc:
        raise ValueError(f"save_checkpoint({path}): extra must be JSON-serialisable: {exc}") from exc
    bad = [k for k, a in arrays.items() if np.asarray(a).dtype.kind in "fc" and not np.isfinite(a).all()]
    if bad:
        raise NonFiniteState(f"{path} not saved: non-finite values (NaN or inf) in {', '.join(bad[:5])}"
                             + (f" and {len(bad) - 5} more" if len(bad) > 5 else ""), names=bad)
    arrays["meta"] = np.array(meta_s)
    return arrays


def write_checkpoint(path, arrays) -> None:
    """Write :func:`checkpoint_arrays`' dict to ``path`` atomically (temp file, fsync, ``os.replace``).

    Raises
    ------
    CheckpointWriteError
        Naming ``path``, the reason and the archive's size; the temporary
        file is removed and the previous ``path`` is left as it was.
    """
    path = os.fspath(path)
    nbytes = sum(np.asarray(a).nbytes for a in arrays.values()) + 512 * len(arrays)  # archive size, roughly
    d = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=d)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        try:
            free = f", {_fmt_bytes(shutil.disk_usage(d).free)} free"
        except OSError:
            free = ""
        raise CheckpointWriteError(f"cannot write checkpoint {path}: {exc.strerror or exc} (needs about "
                                   f"{_fmt_bytes(nbytes)}{free})", path=path, nbytes=nbytes,
                                   errno=exc.errno) from exc
    except BaseException:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # directories cannot be fsync'ed on some platforms
        pass


def load_checkpoint(path, model, optimizer=None):
    """Restore a checkpoint written by :func:`save_checkpoint` into ``model`` (and ``optimizer``).

    Parameters
    ----------
    path : str or os.PathLike
    model : engine.model.Sequential
        Must have the same architecture (names and shapes).
    optimizer : engine.optim.Adam or None
        When given, its moments and step count are restored (the file must hold them).

    Returns
    -------
    extra : dict
        The ``extra`` dict given to :func:`save_checkpoint`.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    CheckpointError
        (a ValueError) if the file is not a readable checkpoint or does not match
        the model/optimizer; the message names the file and the offending key/shapes.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        meta = json.loads(str(data.pop("meta")))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(f"{path} is not a readable hitcnn checkpoint: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown checkpoint format {meta.get('format')!r} (expected {FORMAT})")
    sd = {k[len("model/"):]: v for k, v in data.items() if k.startswith("model/")}
    try:
        model.load_state_dict(sd)
        if meta.get("rng") and hasattr(model, "set_rng_states"):
            model.set_rng_states(meta["rng"])
        if optimizer is not None:
            if meta.get("optim") is None:
                raise ValueError("the file holds no optimizer state")
            st = dict(meta["optim"])
            for key in ("m", "v"):
                pre = f"optim/{key}/"
                st[key] = {k[len(pre):]: v for k, v in data.items() if k.startswith(pre)}
            optimizer.load_state_dict(st)
    except ValueError as exc:
        raise CheckpointError(f"{path} does not match the model/optimizer: {exc}") from exc
    return meta.get("extra", {})
