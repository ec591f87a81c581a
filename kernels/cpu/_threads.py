"""Run small kernels on one thread.

A Numba parallel region has to wake every worker and wait for all of them at
its end. For small arrays that costs more than the work, and on a shared,
oversubscribed machine a descheduled worker stalls the region for a whole
scheduler time slice (measured here: ~8 ms per region under load, against
0.6 ms for the same 1M-element ReLU on one thread). The op wrappers of
batchnorm, relu, maxpool, dropout and fused therefore call their kernels
through :func:`run`, which uses one thread below :data:`PARALLEL_MIN`
elements. Results do not depend on the thread count (the kernels are
elementwise or reduce each channel on one thread in a fixed order).
"""
import numba

#: Arrays with fewer elements than this run single-threaded. 1 << 22 (tuned on a
#: loaded 2-core AMD box) kept the second block's BN-ReLU-pool at batch 16
#: (16*64*51*79 = 4.1M) on one thread; on a quiet 2-core Xeon (AVX-512) 1 << 16
#: measured cnn4_rgb 156 -> 176 img/s and cnn6_rgb 223 -> 253 img/s at batch 16
#: (bench/train_throughput.py --no-torch, medians of 7 rounds; 1 << 18: 168 / 241).
PARALLEL_MIN = 1 << 16


def run(size, kernel, *args):
    """Call ``kernel(*args)``, on one Numba thread when ``size < PARALLEL_MIN``; returns its result."""
    n = numba.get_num_threads()
    if size >= PARALLEL_MIN or n == 1:
        return kernel(*args)
    numba.set_num_threads(1)
    try:
        return kernel(*args)
    finally:
        numba.set_num_threads(n)


#: Arrays of at least this many elements are zeroed by :func:`fill_zero` over the threads.
FILL_PARALLEL_MIN = 1 << 20
_FILL_BLOCK = 1 << 16


@numba.njit(cache=True, parallel=True)
def _fill_zero(flat):
    n = flat.size
    for t in numba.prange(-(-n // _FILL_BLOCK)):
        flat[t * _FILL_BLOCK:min(n, (t + 1) * _FILL_BLOCK)] = 0


def fill_zero(a):
    """Set the NumPy array ``a`` to zero in place (``a.fill(0)``), over Numba's threads when large.

    ``Layer.zero_grad`` calls this every training step; cnn2_mono's 32 M-element
    ``Linear(62400, 512)`` weight gradient takes 11 ms with ``ndarray.fill`` on
    one core and 3.6 ms in blocks of 65,536 elements over 2 threads. A
    non-contiguous or small array is filled by NumPy.
    """
    if a.size >= FILL_PARALLEL_MIN and a.flags.c_contiguous:
        _fill_zero(a.reshape(-1))
    else:
        a.fill(0)
