"""Every CPU kernel gives bit-identical results serially and on all Numba threads (batchnorm, relu, maxpool, fused, dropout).
"""
import numpy as np

from kernels.cpu import batchnorm as bn
from kernels.cpu import dropout, fused, maxpool, relu

from .helpers import rnd


def test_results_do_not_depend_on_thread_count(monkeypatch):
    """Parallel (all Numba threads) and single-threaded runs of every kernel give bit-identical results."""
    import kernels.cpu._threads as th

    x = rnd((3, 5, 12, 11), np.float32, 31)
    dy = rnd((3, 5, 6, 5), np.float32, 32)
    g, b = rnd(5, np.float32, 33), rnd(5, np.float32, 34)

    def everything():
        rm, rv, sm, si = np.zeros(5, np.float32), np.ones(5, np.float32), np.empty(5), np.empty(5)
        y = np.empty_like(x)
        bn.batchnorm_forward_train(y, sm, si, x, g, b, rm, rv, 0.1, 1e-5)
        dx, dg, db = np.empty_like(x), np.zeros(5, np.float32), np.zeros(5, np.float32)
        bn.batchnorm_backward(dx, dg, db, x, x, sm, si, g)
        r = np.empty_like(x)
        relu.relu_forward(r, y)
        po, pa = np.empty(dy.shape, np.float32), np.empty(dy.shape, np.int32)
        maxpool.maxpool2d_forward(po, pa, r, 2, 2)
        pdx = np.empty_like(x)
        maxpool.maxpool2d_backward(pdx, dy, pa, 2, 2)
        fo, fa, fm, fi = np.empty_like(po), np.empty_like(pa), np.empty(5), np.empty(5)
        fused.bn_relu_pool_forward_train(fo, fa, fm, fi, x, g, b, rm, rv, 0.1, 1e-5, 2)
        fdx, fdg, fdb = np.empty_like(x), np.zeros(5, np.float32), np.zeros(5, np.float32)
        fused.bn_relu_pool_backward(fdx, fdg, fdb, dy, fa, x, fm, fi, g, b, 2)
        do, dm = np.empty_like(x), np.empty(x.shape, np.uint8)
        dropout.dropout_forward(do, dm, x, 0.3, dropout.make_rng(1))
        return [y, sm, si, dx, dg, db, r, po, pa, pdx, fo, fa, fdx, fdg, fdb, do, dm, rm, rv]

    serial = everything()
    monkeypatch.setattr(th, "PARALLEL_MIN", 0)
    parallel = everything()
    for i, (s, p) in enumerate(zip(serial, parallel)):
        assert np.array_equal(s, p), i
