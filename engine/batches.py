"""The order and crops of a run's batches, and reading them one batch ahead.

:func:`epoch_seed` gives epoch ``e``'s data order and :func:`train_windows`
its crop windows (``(seed, epoch, track)`` with ``crops='random'``), so a
resumed run draws exactly the batches an uninterrupted one would, without an
RNG state of its own. :class:`Prefetcher` decodes the next batch in a
background thread while the current one trains (the one read-ahead
mechanism: ``pipeline.dataset.Dataset.batches`` makes each batch when asked);
moving batches onto the device is the backend's job
(``kernels.<backend>.device.feed``).
"""
from __future__ import annotations

import time

__all__ = ["epoch_seed", "train_windows", "Prefetcher", "first_batch", "take"]


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of epoch ``epoch``'s data order (a fixed function of the run seed)."""
    return (int(seed) * 1_000_003 + 7919 * int(epoch) + 1) % (2 ** 31 - 1)


def train_windows(cfg, epoch: int):
    """The crop windows of epoch ``epoch``'s training batches (``pipeline.windows.Windows``).

    ``cfg`` is an ``engine.config.TrainConfig`` (its ``crops`` and ``seed``).
    """
    from pipeline.windows import Windows

    return Windows(cfg.crops, seed=int(cfg.seed), epoch=int(epoch) if cfg.crops == "random" else 0)


def take(it, limit):
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
