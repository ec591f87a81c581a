"""Device policy of the CPU backend: what the training loop needs from a device, for host memory.

The twin of :mod:`kernels.gpu.device`; ``engine/`` reaches both only as
``kernels.get_backend(device).device``, so the loop never names a device.
On the CPU every operation is the identity or an immediate host computation:
batches are already NumPy arrays (``pipeline.dataset.Dataset.batches``,
decoded one batch ahead by ``engine.batches.Prefetcher``), the correct count is
summed on the host at once, and there is one process-wide "device".

Entry points: :func:`check_available`, :func:`to_device`, :func:`to_host`,
:func:`copy_from_host`, :func:`feed`, :func:`keep`, :func:`stack_to_host`,
:func:`count_correct`, :func:`correct_counter`, :func:`use_device`,
:func:`gradient_communicator`, :func:`device_batches`.
"""
from __future__ import annotations

import numpy as np

__all__ = ["device_batches", "check_available", "to_device", "to_host", "copy_from_host", "feed", "keep", "stack_to_host",
           "count_correct", "correct_counter", "use_device", "gradient_communicator"]


def check_available() -> None:
    """The CPU is always available (nothing to check; never raises)."""


def to_device(a) -> np.ndarray:
    """``a`` as a NumPy array (no copy when it already is one)."""
    return np.asarray(a)


def to_host(a) -> np.ndarray:
    """``a`` as a NumPy array (no copy when it already is one)."""
    return np.asarray(a)


def copy_from_host(dst: np.ndarray, host: np.ndarray) -> None:
    """``dst[...] = host`` (same shape; a no-op when they are the same array)."""
    if host is not dst:
        dst[...] = host


class _HostFeed:
    """:func:`feed`'s iterator: the host batches as they come (``close`` closes the source if it can)."""

    def __init__(self, batches):
        self._batches = batches
        self._it = iter(batches)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._it)

    def close(self):
        """Close the source iterator (e.g. a ``Prefetcher``) when it has a ``close``."""
        close = getattr(self._batches, "close", None)
        if close is not None:
            close()


def feed(batches):
    """Iterate training / evaluation batches ``(x, y)`` on this device: the host batches themselves.

    Parameters
    ----------
    batches : iterable of tuple of np.ndarray

    Returns
    -------
    iterator of tuple of np.ndarray
        With a ``close()`` that closes ``batches`` when it has one.
    """
    return _HostFeed(batches)


def keep(a) -> np.ndarray:
    """A copy of ``a`` that outlives the buffer it came from (a model's output is reused by the next forward)."""
    return np.array(a, copy=True)


def stack_to_host(arrays) -> np.ndarray:
    """``np.concatenate(arrays)`` along axis 0 (one host array)."""
    return np.concatenate([np.asarray(a) for a in arrays])


def count_correct(logits, y) -> int:
    """Rows whose ``argmax(logits)`` equals ``y``: ``logits (N, K)``, ``y (N,)`` integers; a host int."""
    return int((np.asarray(logits).argmax(axis=1) == np.asarray(y)).sum())


class _HostCounter:
    """Correct predictions summed on the host at each :meth:`add` (``deferred`` False: read it at any time)."""

    deferred = False

    def __init__(self):
        self.n = 0

    def add(self, logits, y) -> None:
        """Add this batch's correct predictions (:func:`count_correct`)."""
        self.n += count_correct(logits, y)

    @property
    def pending(self) -> bool:
        """Whether a count is waiting to be read (on the host: whenever it is non-zero)."""
        return self.n != 0

    def take(self) -> int:
        """The count since the last ``take`` (then reset to 0)."""
        n, self.n = self.n, 0
        return n


def correct_counter():
    """A counter of correct predictions: ``add(logits, y)`` per step, ``take() -> int`` when the count is needed.

    On the CPU it sums on the host at once; the GPU's twin keeps the sum on the
    device and reads it only on ``take`` (no host synchronisation per step).
    """
    return _HostCounter()


def use_device(local_rank: int) -> None:
    """Bind this process to a device for MPI rank ``local_rank`` on its node (the CPU: nothing to bind)."""


def gradient_communicator(comm, rank: int, size: int):
    """A device-side Allreduce for this job, or None to use MPI on host buffers (always None on the CPU)."""
    return None


def device_batches(images, labels, batch_size, shuffle=True, seed=0, drop_last=False):
    """Batches gathered from a split held in memory (the GPU twin gathers on the device).

    Parameters
    ----------
    images : np.ndarray [shape=(M, C, H, W), float32]
    labels : np.ndarray [shape=(M,), int64]
    batch_size : int > 0
    shuffle : bool
        Permute with ``numpy.random.default_rng(seed).permutation(M)`` (the GPU's order).
    seed : int
    drop_last : bool
        Drop the final short batch.

    Yields
    ------
    (x, y) : np.ndarray
        Fresh C-contiguous arrays (``np.take``).

    Raises
    ------
    ValueError
        On mismatched lengths or ``batch_size < 1``.
    """
    m = images.shape[0]
    if labels.shape != (m,):
        raise ValueError(f"labels must have shape ({m},), got {labels.shape}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = np.random.default_rng(seed).permutation(m) if shuffle else np.arange(m)
    stop = m - m % batch_size if drop_last else m
    for i in range(0, stop, batch_size):
        idx = order[i:i + batch_size]
        yield np.take(images, idx, axis=0), np.take(labels, idx, axis=0)
