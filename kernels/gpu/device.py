"""Device policy of the GPU backend: what the training loop needs from a CUDA device.

The twin of :mod:`kernels.cpu.device` (same entry points); ``engine/`` reaches
it only as ``kernels.get_backend('gpu').device``, so nothing outside
``kernels/gpu`` names CuPy.

Feeding batches without a host synchronisation per step:
:class:`PinnedPrefetcher` wraps any iterator of host batches ``(x, y)``
(NumPy arrays, e.g. ``pipeline.dataset.Dataset.batches(...)``, which already
prepares the next batch in a background thread) and yields device batches
``(x_gpu, y_gpu)``. Each host batch is copied into page-locked (pinned) host
memory and then to the device with an *asynchronous* copy on a separate
CUDA stream, so batch ``k+1`` travels while step ``k`` computes. Two slots
(double buffer): before a slot is overwritten, the copy stream waits on an
event recorded on the compute stream after the step that used it was
enqueued; the compute stream waits on the copy's event before it uses a
batch. The host only ever waits for a copy issued two batches earlier
(normally long finished), never for the compute stream. :func:`feed` is the
loop's entry point to it.

:func:`device_batches` is the alternative for data that fits on the GPU
(fma_small: 6,400 x 3 x 102 x 159 float32 = 1.25 GB on a 141 GB H200):
upload once, then every batch is a device gather (no host copies at all).

Correct predictions are counted on the device (:func:`correct_counter`) and
read only when asked; evaluation keeps the logits on the device and reads
them once (:func:`stack_to_host`). Under MPI each local rank binds its own
device (:func:`use_device`) and gradients are summed with NCCL when CuPy has
it (:func:`gradient_communicator`).

Usage (engine/session.py)::

    dev = kernels.get_backend('gpu').device
    for xb, yb in dev.feed(dataset.batches('train', bs, shuffle=True, seed=e)):
        loss = step(xb, yb)  # xb, yb valid until the loop asks for the next batch
"""
from __future__ import annotations

import cupy as cp
import cupyx
import numpy as np

__all__ = ["PinnedPrefetcher", "device_batches", "check_available", "to_device", "to_host", "copy_from_host",
           "feed", "keep", "stack_to_host", "count_correct", "correct_counter", "use_device",
           "gradient_communicator"]


class PinnedPrefetcher:
    """Iterate device copies of host batches, copied asynchronously from pinned memory.

    Parameters
    ----------
    batches : iterable of tuple of np.ndarray
        Host batches, e.g. ``(x float32 (N, C, H, W), y int64 (N,))``; any
        number of arrays per batch; the first axis may shrink on the last batch.
    stream : cupy.cuda.Stream or None
        The compute stream the batches are used on (default: the current stream
        when iteration starts).

    Yields
    ------
    tuple of cupy.ndarray
        Device arrays of the same shapes and dtypes, C-contiguous. They are
        views of two reused buffers: a batch is valid until the next batch is
        requested (asking for batch k+1 queues the copy of batch k+2 into
        batch k's buffers, behind the work already enqueued for batch k), so
        enqueue its step before advancing and copy it to keep it longer.

    Raises
    ------
    ValueError
        If a batch changes the number of arrays, the dtype or the trailing shape.
    """

    def __init__(self, batches, stream=None):
        self._batches = batches
        self._stream = stream
        self._copy = cp.cuda.Stream(non_blocking=True)
        self._host = [None, None]    # per slot: list of pinned arrays
        self._dev = [None, None]     # per slot: list of device arrays
        self._copied = [None, None]  # per slot: event after its H2D copy
        self._n = [0, 0]             # per slot: rows of the batch held

    def _ensure(self, slot, arrays):
        need = self._host[slot] is None or len(self._host[slot]) != len(arrays) or any(
            h.shape[1:] != a.shape[1:] or h.dtype != a.dtype or h.shape[0] < a.shape[0]
            for h, a in zip(self._host[slot], arrays))
        if not need:
            return
        if self._host[slot] is not None:
            old = self._host[slot]
            if len(old) != len(arrays) or any(h.shape[1:] != a.shape[1:] or h.dtype != a.dtype
                                              for h, a in zip(old, arrays)):
                raise ValueError(f"batch layout changed: {[(h.shape, h.dtype) for h in old]} -> "
                                 f"{[(a.shape, a.dtype) for a in arrays]}")
            if self._copied[slot] is not None:
                self._copied[slot].synchronize()
        self._host[slot] = [cupyx.empty_pinned(a.shape, a.dtype) for a in arrays]
        self._dev[slot] = [cp.empty(a.shape, a.dtype) for a in arrays]

    def _stage(self, slot, arrays, compute):
        arrays = [np.asarray(a) for a in arrays]
        if self._copied[slot] is not None:
            self._copied[slot].synchronize()  # the pinned slot's previous copy (two batches ago) is done
        self._ensure(slot, arrays)
        freed = compute.record()  # every step that used this slot is enqueued before this point
        self._copy.wait_event(freed)
        n = arrays[0].shape[0]
        for h, d, a in zip(self._host[slot], self._dev[slot], arrays):
            if a.shape[0] != n:
                raise ValueError(f"arrays of one batch must share the first axis, got {[x.shape for x in arrays]}")
            np.copyto(h[:n], a)
            d[:n].set(h[:n], stream=self._copy)
        self._copied[slot] = self._copy.record()
        self._n[slot] = n

    def __iter__(self):
        compute = self._stream or cp.cuda.get_current_stream()
        it = iter(self._batches)
        try:
            first = next(it)
        except StopIteration:
            return
        self._stage(0, first, compute)
        k = 0
        while True:
            slot = k % 2
            compute.wait_event(self._copied[slot])
            try:
                nxt = next(it)
            except StopIteration:
                nxt = None
            if nxt is not None:
                self._stage(1 - slot, nxt, compute)
            n = self._n[slot]
            yield tuple(d[:n] for d in self._dev[slot])
            if nxt is None:
                return
            k += 1


def device_batches(images, labels, batch_size, shuffle=True, seed=0, drop_last=False):
    """Batches gathered on the device from a split uploaded once.

    Parameters
    ----------
    images : cupy.ndarray [shape=(M, C, H, W), float32]
        The whole split on the GPU (``cp.asarray(dataset.images[rows])``).
    labels : cupy.ndarray [shape=(M,), int64]
    batch_size : int > 0
    shuffle : bool
        Permute with ``numpy.random.default_rng(seed).permutation(M)`` (host,
        tiny; uploaded as one index array per epoch).
    seed : int
    drop_last : bool
        Drop the final short batch.

    Yields
    ------
    (x, y) : cupy.ndarray
        ``x (B, C, H, W)`` and ``y (B,)``, fresh C-contiguous arrays (``cupy.take``).

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
    order = cp.asarray(order)
    stop = m - m % batch_size if drop_last else m
    for i in range(0, stop, batch_size):
        idx = order[i:i + batch_size]
        yield cp.take(images, idx, axis=0), cp.take(labels, idx, axis=0)


# ----------------------------------------------------------------------------- the device policy


def check_available() -> None:
    """Raise RuntimeError unless CUDA works and at least one device is visible.

    Raises
    ------
    RuntimeError
        "no CUDA device found (cupy sees 0 devices)", or "CUDA is unavailable (...)"
        with the driver's message.
    """
    try:
        n = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver, a broken install: CuPy raises its own CUDARuntimeError
        raise RuntimeError(f"CUDA is unavailable ({exc}); use --device cpu") from exc
    if n < 1:
        raise RuntimeError("no CUDA device found (cupy sees 0 devices); use --device cpu")


def to_device(a):
    """``a`` as a CuPy array on the current device (no copy when it already is one)."""
    return a if isinstance(a, cp.ndarray) else cp.asarray(a)


def to_host(a) -> np.ndarray:
    """``a`` as a NumPy array (one device-to-host copy for a CuPy array)."""
    return a.get() if isinstance(a, cp.ndarray) else np.asarray(a)


def copy_from_host(dst, host: np.ndarray) -> None:
    """Copy host array ``host`` into device array ``dst`` (same shape and dtype)."""
    if isinstance(dst, cp.ndarray):
        dst.set(np.ascontiguousarray(host))
    elif host is not dst:
        dst[...] = host


class _DeviceFeed:
    """:func:`feed`'s iterator: a :class:`PinnedPrefetcher` over ``batches``; ``close`` stops both."""

    def __init__(self, batches):
        self._batches = batches
        self._gen = iter(PinnedPrefetcher(batches))

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._gen)

    def close(self):
        """Stop the prefetcher, then close the source iterator when it has a ``close``."""
        self._gen.close()
        close = getattr(self._batches, "close", None)
        if close is not None:
            close()


def feed(batches):
    """Iterate host batches ``(x, y)`` as device batches, copied asynchronously from pinned memory, one ahead.

    Parameters
    ----------
    batches : iterable of tuple of np.ndarray

    Returns
    -------
    iterator of tuple of cupy.ndarray
        Views of two reused buffers: a batch is valid until the next one is
        requested (see :class:`PinnedPrefetcher`); ``close()`` stops the
        prefetcher and closes ``batches`` when it has a ``close``.
    """
    return _DeviceFeed(batches)


def keep(a):
    """A device copy of ``a`` that outlives the buffer it came from (the feed's or a model's reused output)."""
    return a.copy()


def stack_to_host(arrays) -> np.ndarray:
    """Concatenate device arrays along axis 0 on the device, then one copy to the host."""
    return cp.concatenate([to_device(a) for a in arrays]).get()


def count_correct(logits, y) -> int:
    """Rows whose ``argmax(logits)`` equals ``y`` (``logits (N, K)``, ``y (N,)``); reads one int (a host sync)."""
    return int((to_device(logits).argmax(axis=1) == to_device(y)).sum())


class _DeviceCounter:
    """Correct predictions summed into a device int64 scalar; read (one host sync) only by :meth:`take`.

    ``deferred`` True: the loop reads it only at checkpoints and at the end of an epoch.
    """

    deferred = True

    def __init__(self):
        self._sum = cp.zeros((), dtype=np.int64)
        self.pending = False

    def add(self, logits, y) -> None:
        """Add this batch's correct predictions on the device (no host synchronisation)."""
        self._sum += (logits.argmax(axis=1) == y).sum()
        self.pending = True

    def take(self) -> int:
        """The count since the last ``take`` (one device read), then reset to 0."""
        if not self.pending:
            return 0
        n = int(self._sum)
        self._sum.fill(0)
        self.pending = False
        return n


def correct_counter():
    """A counter of correct predictions kept on the device: ``add(logits, y)`` per step, ``take() -> int``."""
    return _DeviceCounter()


def use_device(local_rank: int) -> None:
    """Make device ``local_rank % device_count`` current (one device per MPI rank on a node)."""
    n_dev = cp.cuda.runtime.getDeviceCount()
    cp.cuda.Device(int(local_rank) % max(n_dev, 1)).use()


class _NcclAllreduce:
    """In-place sum of a device buffer over the job's ranks with NCCL (on the current stream)."""

    def __init__(self, nccl, comm):
        self._nccl, self._comm = nccl, comm

    def __call__(self, buf):
        nccl = self._nccl
        dt = nccl.NCCL_FLOAT64 if buf.dtype == np.float64 else nccl.NCCL_FLOAT32
        self._comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, dt, nccl.NCCL_SUM,
                             cp.cuda.get_current_stream().ptr)
        return buf


def gradient_communicator(comm, rank: int, size: int):
    """An NCCL Allreduce ``f(buf) -> buf`` (in place, sum) over the MPI job, or None when CuPy has no NCCL.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm
        Used once, to broadcast rank 0's NCCL unique id.
    rank, size : int
        This rank and the job's size.
    """
    try:
        from cupy.cuda import nccl
    except ImportError:
        return None
    if not getattr(nccl, "available", True):
        return None
    uid = nccl.get_unique_id() if rank == 0 else None
    uid = comm.bcast(uid, root=0)
    return _NcclAllreduce(nccl, nccl.NcclCommunicator(size, uid, rank))
