"""PyTorch peer configurations for the benchmarks: memory format x allocator, and the sgemm peak.

A fair CPU race gives PyTorch the settings a performance-minded user would
use (PyTorch's CPU performance tuning guide): a ``channels_last`` model and
input (oneDNN's preferred layout) and a *caching* allocator, because glibc's
default ``malloc`` returns PyTorch's big activation buffers to the kernel
after every step (mmap/munmap, hundreds of thousands of page faults per
step). The allocators tried, each in its own subprocess (they must be set
before the process starts):

* ``glibc-cache``: glibc told to keep big buffers,
  ``MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=8589934592``;
* ``jemalloc``, ``tcmalloc``: Debian's ``libjemalloc2`` /
  ``libtcmalloc-minimal4`` through ``LD_PRELOAD``, only when installed.

``default`` (glibc untuned, NCHW) is the weak peer the old benchmark used;
it is only run on request.
"""
from __future__ import annotations

import glob
import os
import time

import numpy as np

GLIBC_CACHE = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "8589934592"}

_PRELOADS = {
    "jemalloc": ["/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/*/libjemalloc.so.2", "/usr/lib*/libjemalloc.so*"],
    "tcmalloc": ["/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib/*/libtcmalloc_minimal.so.4",
                 "/usr/lib*/libtcmalloc*.so*"],
}


def find_preload(name):
    """Path of the allocator library ``name`` ('jemalloc' or 'tcmalloc'), or None if not installed."""
    for pat in _PRELOADS[name]:
        hits = sorted(glob.glob(pat))
        if hits:
            return hits[0]
    return None


def allocators(include_default=False):
    """``[(name, env overrides)]`` of the allocators available here (glibc-cache always)."""
    out = [("default", {})] if include_default else []
    out.append(("glibc-cache", dict(GLIBC_CACHE)))
    for name in ("jemalloc", "tcmalloc"):
        lib = find_preload(name)
        if lib:
            out.append((name, {"LD_PRELOAD": lib}))
    return out


def peer_configs(include_default=False):
    """``[(label, memory_format, env)]``: NCHW and channels_last under each caching allocator."""
    cfgs = []
    for alloc, env in allocators(include_default):
        for fmt in ("nchw", "channels_last"):
            if alloc == "default" and fmt != "nchw":
                continue
            cfgs.append((f"torch {fmt} {alloc}", fmt, env))
    return cfgs


def sgemm_gflops(threads, size=2048, reps=5, libs=("numpy", "torch")):
    """Best-of sgemm GFLOP/s of this process's BLASes with ``threads`` threads: NumPy's, and torch's if present.

    ``libs`` selects which are measured. Returns ``{"numpy": g, "torch": g}``
    (a key is missing when not selected or that library is absent).
    """
    res = {}
    a = np.random.default_rng(0).random((size, size), dtype=np.float32)
    b = a.copy()
    c = np.empty_like(a)
    if "numpy" in libs:
        _numpy_sgemm(res, a, b, c, threads, size, reps)
    if "torch" in libs:
        _torch_sgemm(res, a, b, threads, size, reps)
    return res


def _numpy_sgemm(res, a, b, c, threads, size, reps):
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    ctx = threadpool_limits(threads, "blas") if threadpool_limits else None
    try:
        np.matmul(a, b, out=c)
        best = min(_timed(lambda: np.matmul(a, b, out=c)) for _ in range(reps))
        res["numpy"] = 2 * size ** 3 / best / 1e9
    finally:
        if ctx is not None:
            ctx.restore_original_limits()


def _torch_sgemm(res, a, b, threads, size, reps):
    try:
        import torch
    except ImportError:
        return
    n0 = torch.get_num_threads()
    torch.set_num_threads(threads)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    tc = torch.empty_like(ta)
    torch.mm(ta, tb, out=tc)
    best = min(_timed(lambda: torch.mm(ta, tb, out=tc)) for _ in range(reps))
    res["torch"] = 2 * size ** 3 / best / 1e9
    torch.set_num_threads(n0)


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def env_with(overrides):
    """A copy of os.environ with ``overrides`` (and the parent's LD_PRELOAD replaced, not appended)."""
    env = os.environ.copy()
    for k in ("LD_PRELOAD", *GLIBC_CACHE):
        env.pop(k, None)
    env.update(overrides)
    return env
