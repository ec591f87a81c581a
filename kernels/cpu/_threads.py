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

#: Arrays with fewer elements than this run single-threaded (the first block's
#: activations at batch 16, 16*32*102*159 = 8.3M, stay parallel).
PARALLEL_MIN = 1 << 22


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
