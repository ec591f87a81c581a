"""Data-parallel training over MPI ranks (mpi4py), and NCCL on GPUs: ``cli.py train --distributed``.

The scheme is ChainerMN's / Horovod's / llm.c's synchronous data parallelism:

* every rank builds the same model from the same seed and runs the same Adam;
* each global batch of ``batch_size`` images (the single-process batch, drawn
  from the same seeded order on every rank) is cut into ``K`` disjoint
  contiguous shards, rank ``r`` training rows ``[start_r, stop_r)``
  (:func:`shard_bounds`; a full batch must divide by ``K``, a final short
  batch is split as evenly as possible);
* the loss gradient of rank ``r`` is scaled by ``n_r / N`` (its share of the
  global batch) before backward, so that the *sum* of the ranks' parameter
  gradients is the gradient of the mean loss over the global batch; the
  gradients are packed, in the model's fixed parameter order, into one
  contiguous float32 buffer and summed by one ``MPI_Allreduce`` (NCCL
  ``allReduce`` on the device when CuPy has NCCL), then unpacked;
* BatchNorm uses per-rank batch statistics by default (PyTorch DDP); the
  running statistics of rank 0 are broadcast to the others before every
  evaluation and checkpoint (DDP's ``broadcast_buffers``), so all ranks hold
  one model. ``--sync-bn`` (:class:`SyncBatchNorm`) sums the per-channel
  float64 statistics of every rank with an Allreduce in the forward (mean
  and variance) and in the backward (``sum dy``, ``sum dy*(x-mean)``), so K
  ranks normalise with the global batch's statistics, as one process does;
* Dropout draws the uniforms of the whole global batch on every rank and
  keeps its shard's rows (:func:`shard_draws`): masks are a function of the
  global sample index, identical to one process's, and every rank's
  generator stays in the same state (one checkpoint serves all ranks);
* the per-step loss, correct count and batch size are summed over the ranks
  (so the NaN check, the metrics and early stopping agree everywhere);
* only rank 0 writes files; on ``--resume`` every rank loads the same
  ``last.npz`` (a shared file system, as under Slurm), which records the
  world size it was written with.

Determinism: the Allreduce message layout is fixed (parameter order), and
MPI's reduction for a given communicator size and message is a fixed
algorithm (the MPI standard's advice to implementors, followed by Open MPI
and MPICH), so two runs with the same ``K`` give bit-identical weights; at
every checkpoint a checksum of the weights is compared across the ranks
(:meth:`Distributed.check_in_sync`) and a divergence stops the run.

Failures: an exception on any rank prints ``rank R: <error>`` and calls
``MPI_Abort`` (:meth:`Distributed.abort`), which stops every rank; a rank
killed outright is reported by the launcher (Open MPI: ``mpirun noticed that
process rank R ... exited on signal 9``), and the checkpoint on disk is the
last complete one (written atomically by rank 0).

mpi4py is an optional dependency (``pip install -e '.[mpi]'``); this module
imports it only in :func:`init`.
"""
from __future__ import annotations

import os
import sys
import zlib

import numpy as np

__all__ = ["Distributed", "DistributedError", "init", "shard_bounds", "SyncBatchNorm", "world_from_env"]


class DistributedError(RuntimeError):
    """A distributed setting or state that cannot work (message says which and why)."""


def world_from_env():
    """``(rank, size)`` from the launcher's environment (Open MPI, MPICH/Hydra, Slurm), or None outside one."""
    for r, s in (("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"), ("PMI_RANK", "PMI_SIZE"),
                 ("PMIX_RANK", "PMIX_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if r in os.environ and s in os.environ:
            return int(os.environ[r]), int(os.environ[s])
    return None


def shard_bounds(n: int, rank: int, size: int):
    """Rows ``[start, stop)`` of a batch of ``n`` that rank ``rank`` of ``size`` trains.

    Contiguous shards in rank order; the first ``n % size`` ranks get one row
    more (``numpy.array_split``'s rule).

    Raises
    ------
    DistributedError
        When ``n < size`` (a rank would get no rows).
    """
    n, rank, size = int(n), int(rank), int(size)
    if n < size:
        raise DistributedError(f"a batch of {n} images cannot be split over {size} ranks")
    q, r = divmod(n, size)
    start = rank * q + min(rank, r)
    return start, start + q + (1 if rank < r else 0)


class _ShardDraws:
    """A stand-in for a dropout generator: skips the draws of the rows before and after this rank's shard.

    CPU: NumPy ``Generator`` (``random(dtype=, out=)``); GPU: ``CounterRNG``
    (``random(n, dtype=)`` and an ``offset`` counter). The stream consumed is
    the one a single process draws for the whole global batch.
    """

    def __init__(self, rng, before: int, after: int):
        self.rng, self.before, self.after = rng, int(before), int(after)

    def _skip(self, n, dtype):
        if n <= 0:
            return
        if hasattr(self.rng, "offset") and not hasattr(self.rng, "bit_generator"):
            self.rng.offset += n  # counter-based: skipping is free
        else:
            self.rng.random(n, dtype=dtype)

    def random(self, *args, dtype=np.float64, **kw):
        self._skip(self.before, dtype)
        u = self.rng.random(*args, dtype=dtype, **kw)
        self._skip(self.after, dtype)
        return u


def shard_draws(rng, x, start: int, n_global: int):
    """Generator wrapper for a dropout on ``x`` (this rank's rows ``start:start+len(x)`` of ``n_global``)."""
    per_row = int(x.size) // max(int(x.shape[0]), 1)
    return _ShardDraws(rng, start * per_row, (n_global - start - int(x.shape[0])) * per_row)


def _dev(a):
    """The device policy (``kernels.<backend>.device``) of the backend that holds array ``a``."""
    import kernels

    return kernels.backend_for(a).device


class Distributed:
    """One process's view of the job: rank, size, and the collectives training needs.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm
        Usually ``MPI.COMM_WORLD``.
    device : {'cpu', 'gpu'}
        'gpu': one device per local rank; gradients are reduced with NCCL when the
        backend has it (``kernels.gpu.device.gradient_communicator``), else through
        host buffers and MPI.

    Attributes
    ----------
    rank, size, local_rank : int
    is_writer : bool
        Rank 0: the only one writing config.json, metrics, checkpoints, plots.
    allreduce_seconds : float
        Time spent in the gradient and BatchNorm Allreduces (for the benchmark).
    """

    def __init__(self, comm, device="cpu"):
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank = local.Get_rank()
        local.Free()
        self.is_writer = self.rank == 0
        self.device = device
        self.device_allreduce = None
        self.allreduce_seconds = 0.0
        self.sync_bn = False
        self._flat = None
        self._step = None  # (start, stop, n_global) of the current step
        if device != "cpu":
            import kernels

            dev = kernels.get_backend(device).device
            dev.use_device(self.local_rank)  # local rank -> device
            self.device_allreduce = dev.gradient_communicator(comm, self.rank, self.size)

    # -- collectives -------------------------------------------------------------
    def allreduce_(self, buf):
        """Sum ``buf`` (NumPy or CuPy, float32 / float64, C-contiguous) over the ranks, in place."""
        import time

        t0 = time.perf_counter()
        if isinstance(buf, np.ndarray):
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        elif self.device_allreduce is not None:  # on the device (NCCL)
            self.device_allreduce(buf)
        else:  # MPI on host buffers
            dev = _dev(buf)
            host = np.ascontiguousarray(dev.to_host(buf))
            self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
            dev.copy_from_host(buf, host)
        self.allreduce_seconds += time.perf_counter() - t0
        return buf

    def allreduce_grads(self, model):
        """Sum every parameter gradient of ``model`` over the ranks (one packed Allreduce, fixed order)."""
        grads = [g for _, _, g in model.parameters()]
        n = sum(int(g.size) for g in grads)
        import kernels

        xp = kernels.backend_for(grads[0]).xp
        if self._flat is None or self._flat.size != n or type(self._flat) is not type(grads[0]):
            self._flat = xp.empty(n, dtype=grads[0].dtype)
        flat, o = self._flat, 0
        for g in grads:
            flat[o:o + g.size] = g.reshape(-1)
            o += g.size
        self.allreduce_(flat)
        o = 0
        for g in grads:
            g[...] = flat[o:o + g.size].reshape(g.shape)
            o += g.size

    def sum_floats(self, *values):
        """The sums over the ranks of a few host scalars (float64), one Allreduce."""
        a = np.array(values, dtype=np.float64)
        self.comm.Allreduce(self.MPI.IN_PLACE, a, op=self.MPI.SUM)
        return a

    def bcast(self, obj, root=0):
        return self.comm.bcast(obj, root=root)

    def barrier(self):
        self.comm.Barrier()

    # -- the training loop's hooks -------------------------------------------------
    def setup(self, model, cfg):
        """Check ``cfg`` for ``size`` ranks and attach the SyncBatchNorm / dropout hooks to ``model``.

        Raises
        ------
        DistributedError
            When ``cfg.batch_size`` does not divide by the number of ranks.
        """
        from engine.layers import BatchNorm2d, Dropout

        if getattr(cfg, "overfit_batch", False):
            raise DistributedError("--overfit-batch is a single-process debug mode; run it without --distributed")
        if cfg.batch_size % self.size:
            raise DistributedError(
                f"--batch-size {cfg.batch_size} does not divide by the {self.size} ranks: the global batch is "
                f"split into {self.size} equal shards; use a multiple of {self.size}")
        self.sync_bn = bool(getattr(cfg, "sync_bn", False))
        sync = SyncBatchNorm(self) if self.sync_bn else None
        for layer in model.layers:
            if isinstance(layer, BatchNorm2d):
                layer.sync = sync
            if isinstance(layer, Dropout):
                layer.draws = self._draws

    def _draws(self, rng, x):
        if self._step is None:
            return rng
        start, _, n_global = self._step
        return shard_draws(rng, x, start, n_global)

    def begin_step(self, n_global: int):
        """Rows ``[start, stop)`` of this step's global batch of ``n_global`` that this rank trains."""
        start, stop = shard_bounds(n_global, self.rank, self.size)
        self._step = (start, stop, int(n_global))
        return start, stop

    def end_step(self):
        self._step = None

    def step_metrics(self, loss, correct, n, flag=False):
        """Global ``(mean loss, correct, batch size, any rank's flag)`` from this rank's mean loss over ``n`` rows.

        One Allreduce of four float64; the flag is the Ctrl-C flag, so that
        every rank stops at the same step.
        """
        s = self.sum_floats(float(loss) * n, float(correct), float(n), 1.0 if flag else 0.0)
        return s[0] / s[2], int(round(s[1])), int(round(s[2])), bool(s[3] > 0)

    def sync_buffers(self, model):
        """Broadcast rank 0's BatchNorm running statistics (per-rank BN only; with --sync-bn they agree already)."""
        if self.sync_bn:
            return
        for layer in model.layers:
            for k, a in getattr(layer, "buffers", {}).items():
                dev = _dev(a)
                host = np.ascontiguousarray(dev.to_host(a))
                self.comm.Bcast(host, root=0)
                dev.copy_from_host(a, host)

    def check_in_sync(self, model):
        """Raise DistributedError when the ranks' weights differ (a CRC32 of every parameter, compared with MIN/MAX)."""
        crc = 0
        for _, p, _ in model.parameters():
            host = _dev(p).to_host(p)
            crc = zlib.crc32(np.ascontiguousarray(host).tobytes(), crc)
        lo = self.comm.allreduce(crc, op=self.MPI.MIN)
        hi = self.comm.allreduce(crc, op=self.MPI.MAX)
        if lo != hi:
            raise DistributedError(f"rank {self.rank}: the ranks' weights have diverged (checksums differ); "
                                   f"the Allreduce did not give every rank the same sum")

    def check_resume(self, extra: dict, path):
        """Raise DistributedError unless the checkpoint ``extra`` was written by a job of this size."""
        k = int(extra.get("world_size", 1))
        if k != self.size:
            raise DistributedError(
                f"--resume: {path} was written by a job of {k} rank{'s' if k != 1 else ''}; this job has "
                f"{self.size}. Resume with the same number: mpirun -n {k} python cli.py train --resume "
                f"--distributed ...")

    # -- failures ------------------------------------------------------------------
    def abort(self, message: str, code: int = 1):
        """Print ``rank R: message`` on stderr and stop every rank of the job (``MPI_Abort``)."""
        print(f"rank {self.rank} of {self.size}: {message}", file=sys.stderr, flush=True)
        self.comm.Abort(int(code) or 1)

    def rank0_first(self, fn):
        """Run ``fn()`` on rank 0, then on the others once it succeeded (data preparation: one builder).

        If rank 0 fails, the others raise DistributedError naming its error
        while rank 0 re-raises its own.
        """
        err = None
        if self.rank == 0:
            try:
                out = fn()
            except BaseException as exc:
                err = exc
        msg = self.bcast(None if err is None else f"{type(err).__name__}: {err}")
        if self.rank == 0:
            if err is not None:
                raise err
            return out
        if msg is not None:
            raise DistributedError(f"rank 0 failed to prepare the data ({msg})")
        return fn()


class SyncBatchNorm:
    """Cross-rank BatchNorm statistics for ``BatchNorm2d`` layers (``layer.sync``) and the fused BN-ReLU-pool.

    Forward (training): each rank sums ``x - shift`` and its square per
    channel in float64 (``batchnorm_stats``), with ``shift`` the layer's
    ``running_mean`` (identical on every rank, near the mean: no
    cancellation); one Allreduce adds the sums and the value counts; every
    rank then finishes the same global mean / variance and updates the same
    running statistics. Backward: ``sum dy`` and ``sum dy*(x - mean)`` are
    summed likewise before ``dx`` is formed; ``dgamma``, ``dbeta`` take this
    rank's own sums (the gradient Allreduce adds them). PyTorch's
    ``SyncBatchNorm`` (all-gather of per-rank mean / invstd / count) is the
    same computation.
    """

    def __init__(self, dist: Distributed):
        self.dist = dist

    def _sums(self, layer, xp, count):
        c = layer.num_features
        buf = layer.buffer("sync_buf", (2 * c + 1,), np.float64, xp)
        buf[2 * c] = count
        return buf, buf[:2 * c].reshape(2, c)

    def forward_train(self, layer, kb, x):
        """Global batch statistics into the layer's ``save_mean`` / ``save_invstd``; updates running stats."""
        c = layer.num_features
        xp = kb.xp
        mean = layer.buffer("save_mean", (c,), np.float64, xp)
        invstd = layer.buffer("save_invstd", (c,), np.float64, xp)
        shift = layer.buffer("sync_shift", (c,), np.float64, xp)
        b = layer.buffers
        shift[...] = b["running_mean"]
        buf, sums = self._sums(layer, xp, x.shape[0] * x.shape[2] * x.shape[3])
        kb.batchnorm.batchnorm_stats(sums, x, shift)
        self.dist.allreduce_(buf)
        kb.batchnorm.batchnorm_stats_finish(mean, invstd, sums, shift, int(round(float(buf[2 * c]))),
                                            b["running_mean"], b["running_var"], layer.momentum, layer.eps)
        return mean, invstd

    def backward_sums(self, layer, kb, invstd, count, fill):
        """``fill(sums)`` writes this rank's backward sums; dgamma / dbeta take them; returns (global sums, count)."""
        c = layer.num_features
        buf, sums = self._sums(layer, kb.xp, count)
        fill(sums)
        kb.batchnorm.batchnorm_backward_params(layer.grads["weight"], layer.grads["bias"], sums, invstd)
        self.dist.allreduce_(buf)
        return sums, int(round(float(buf[2 * c])))

    # -- the layers' hooks (BatchNorm2d and the fused BN -> ReLU -> MaxPool) -------------
    def bn_forward(self, layer, kb, x, out):
        p = layer.params
        layer.save_mean, layer.save_invstd = self.forward_train(layer, kb, x)
        kb.batchnorm.batchnorm_apply_train(out, x, layer.save_mean, layer.save_invstd, p["weight"], p["bias"])

    def bn_backward(self, layer, kb, dy, x, dx):
        m = x.shape[0] * x.shape[2] * x.shape[3]
        sums, m = self.backward_sums(layer, kb, layer.save_invstd, m,
                                     lambda s: kb.batchnorm.batchnorm_backward_sums(s, dy, x, layer.save_mean))
        kb.batchnorm.batchnorm_backward_apply(dx, dy, x, layer.save_mean, layer.save_invstd, layer.params["weight"], sums, m)

    def fused_forward(self, bn, kb, fz, x, out, argmax, kernel_size):
        mean, invstd = self.forward_train(bn, kb, x)
        fz.bn_relu_pool_apply_train(out, argmax, x, mean, invstd, bn.params["weight"], bn.params["bias"],
                                    kernel_size)
        return mean, invstd

    def fused_backward(self, bn, kb, fz, dy, argmax, x, mean, invstd, dx, kernel_size):
        g, b = bn.params["weight"], bn.params["bias"]
        m = x.shape[0] * x.shape[2] * x.shape[3]
        sums, m = self.backward_sums(
            bn, kb, invstd, m,
            lambda s: fz.bn_relu_pool_backward_sums(s, dy, argmax, x, mean, invstd, g, b, kernel_size))
        fz.bn_relu_pool_backward_apply(dx, dy, argmax, x, mean, invstd, g, b, sums, m, kernel_size)


def init(device="cpu"):
    """Start MPI (``mpi4py``) and return this process's :class:`Distributed`.

    Raises
    ------
    DistributedError
        When mpi4py (or its MPI library) is missing, with the install command.
    """
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise DistributedError(
            f"--distributed needs mpi4py and an MPI library ({exc}); install them with "
            f"`apt-get install openmpi-bin libopenmpi-dev && pip install -e '.[mpi]'` and launch with "
            f"`mpirun -n K python cli.py train ... --distributed`") from exc
    return Distributed(MPI.COMM_WORLD, device=device)
