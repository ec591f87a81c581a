"""pytest-benchmark: the non-conv CPU kernels at the paper's shapes, hitcnn vs PyTorch.

Run:  python -m pytest bench/test_bench_ops.py --benchmark-only
      (e.g. -k "N16 and bn_relu_pool" for a subset)

One group per op, pass, batch and shape (``"batchnorm fwd_train N16 32x102x159"``).
Members: ``hitcnn`` (kernels.cpu, float32) and ``torch`` (the same op through
ATen, float32, skipped without torch); for BN -> ReLU -> MaxPool also
``hitcnn_unfused`` (the three kernels one after another) beside ``hitcnn``
(kernels.cpu.fused). ``extra_info['GB/s']`` is the minimum number of bytes
the op must read and write (each array once) over the median time, so it is
directly comparable with the machine's memory bandwidth; these ops are
memory-bound. Shapes: the activations after the first conv of every model
(C=32, 102 x 159: the largest) and after cnn6_rgb's third (C=64, 25 x 39),
batch 16 and 64; Adam on cnn6_rgb's 421,027 parameters.
"""
import numpy as np
import pytest

from kernels.cpu import batchnorm as bn
from kernels.cpu import dropout, fused, maxpool, relu, softmax_xent

try:
    import torch
except ImportError:  # torch is optional
    torch = None

SHAPES = [(32, 102, 159), (64, 25, 39)]
BATCHES = [16, 64]


@pytest.fixture(scope="module", params=[(n, s) for n in BATCHES for s in SHAPES],
                ids=lambda p: f"N{p[0]}-{p[1][0]}x{p[1][1]}x{p[1][2]}")
def act(request):
    """Seeded float32 activations x and upstream gradients dy for one (N, C, H, W) of the paper's block shapes."""
    n, (c, h, w) = request.param
    rng = np.random.default_rng(0)
    d = dict(n=n, c=c, h=h, w=w, tag=f"N{n} {c}x{h}x{w}")
    d["x"] = rng.standard_normal((n, c, h, w)).astype(np.float32)
    d["dy"] = rng.standard_normal((n, c, h, w)).astype(np.float32)
    d["g"] = np.ones(c, np.float32)
    d["b"] = np.zeros(c, np.float32)
    d["pool"] = (n, c, h // 2, w // 2)
    d["dp"] = rng.standard_normal(d["pool"]).astype(np.float32)
    return d


def _bench(benchmark, group, fn, nbytes):
    benchmark.group = group
    benchmark.pedantic(fn, warmup_rounds=2, rounds=9, iterations=1)
    if benchmark.stats is not None:  # None under --benchmark-disable (a smoke run)
        benchmark.extra_info["GB/s"] = round(nbytes / benchmark.stats.stats.median / 1e9, 2)


def _torch_or_skip():
    if torch is None:
        pytest.skip("torch not installed")
    torch.set_num_threads(__import__("numba").get_num_threads())


# -- BatchNorm ----------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["hitcnn", "torch"])
def test_batchnorm_fwd_train(benchmark, act, impl):
    """BatchNorm2d training forward at the paper's block shapes; GB/s in extra_info."""
    x, c = act["x"], act["c"]
    nb = 3 * x.nbytes  # read twice (stats, normalise), write once
    if impl == "hitcnn":
        out, sm, si, rm, rv = np.empty_like(x), np.empty(c), np.empty(c), np.zeros(c, np.float32), np.ones(c, np.float32)
        fn = lambda: bn.batchnorm_forward_train(out, sm, si, x, act["g"], act["b"], rm, rv, 0.1, 1e-5)  # noqa: E731
    else:
        _torch_or_skip()
        tx, m = torch.from_numpy(x), torch.nn.BatchNorm2d(c).train()
        fn = lambda: m(tx)  # noqa: E731
        fn = torch.no_grad()(fn)
    _bench(benchmark, f"batchnorm fwd_train {act['tag']}", fn, nb)


@pytest.mark.parametrize("impl", ["hitcnn", "torch"])
def test_batchnorm_bwd(benchmark, act, impl):
    """BatchNorm2d backward at the paper's block shapes; GB/s in extra_info."""
    x, dy, c = act["x"], act["dy"], act["c"]
    nb = 5 * x.nbytes  # reads x, dy twice, writes dx
    if impl == "hitcnn":
        sm, si = x.mean(axis=(0, 2, 3)).astype(np.float64), 1 / np.sqrt(x.var(axis=(0, 2, 3)).astype(np.float64) + 1e-5)
        dx, dg, db = np.empty_like(x), np.zeros(c, np.float32), np.zeros(c, np.float32)
        fn = lambda: bn.batchnorm_backward(dx, dg, db, dy, x, sm, si, act["g"])  # noqa: E731
    else:
        _torch_or_skip()
        tx = torch.from_numpy(x).requires_grad_()
        m = torch.nn.BatchNorm2d(c).train()
        y = m(tx)
        tdy = torch.from_numpy(dy)
        fn = lambda: torch.autograd.grad(y, [tx, m.weight, m.bias], tdy, retain_graph=True)  # noqa: E731
    _bench(benchmark, f"batchnorm bwd {act['tag']}", fn, nb)


# -- ReLU, MaxPool ------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["hitcnn", "torch"])
def test_relu_fwd(benchmark, act, impl):
    """ReLU forward; GB/s in extra_info."""
    x = act["x"]
    if impl == "hitcnn":
        out = np.empty_like(x)
        fn = lambda: relu.relu_forward(out, x)  # noqa: E731
    else:
        _torch_or_skip()
        tx, tout = torch.from_numpy(x), torch.empty(x.shape)
        fn = lambda: torch.clamp_min(tx, 0, out=tout)  # noqa: E731
    _bench(benchmark, f"relu fwd {act['tag']}", fn, 2 * x.nbytes)


@pytest.mark.parametrize("impl", ["hitcnn", "torch"])
def test_maxpool_fwd(benchmark, act, impl):
    """MaxPool2d(2) forward; GB/s in extra_info."""
    x = act["x"]
    nb = x.nbytes + 2 * int(np.prod(act["pool"])) * 4
    if impl == "hitcnn":
        out, am = np.empty(act["pool"], np.float32), np.empty(act["pool"], np.int32)
        fn = lambda: maxpool.maxpool2d_forward(out, am, x, 2, 2)  # noqa: E731
    else:
        _torch_or_skip()
        tx = torch.from_numpy(x)
        fn = lambda: torch.nn.functional.max_pool2d_with_indices(tx, 2, 2)  # noqa: E731
    _bench(benchmark, f"maxpool fwd {act['tag']}", fn, nb)


@pytest.mark.parametrize("impl", ["hitcnn", "torch"])
def test_maxpool_bwd(benchmark, act, impl):
    """MaxPool2d(2) backward (gather); GB/s in extra_info."""
    x = act["x"]
    nb = x.nbytes + 2 * int(np.prod(act["pool"])) * 4
    out, am = np.empty(act["pool"], np.float32), np.empty(act["pool"], np.int32)
    maxpool.maxpool2d_forward(out, am, x, 2, 2)
    if impl == "hitcnn":
        dx = np.empty_like(x)
        fn = lambda: maxpool.maxpool2d_backward(dx, act["dp"], am, 2, 2)  # noqa: E731
    else:
        _torch_or_skip()
        tx = torch.from_numpy(x).requires_grad_()
        y, _ = torch.nn.functional.max_pool2d_with_indices(tx, 2, 2)
        tdp = torch.from_numpy(act["dp"])
        fn = lambda: torch.autograd.grad(y, tx, tdp, retain_graph=True)  # noqa: E731
    _bench(benchmark, f"maxpool bwd {act['tag']}", fn, nb)


# -- fused BN -> ReLU -> MaxPool vs the unfused chain and torch --------------------------------------
def _unfused_fwd(act):
    x, c = act["x"], act["c"]
    y, r = np.empty_like(x), np.empty_like(x)
    sm, si, rm, rv = np.empty(c), np.empty(c), np.zeros(c, np.float32), np.ones(c, np.float32)
    po, pa = np.empty(act["pool"], np.float32), np.empty(act["pool"], np.int32)

    def fn():
        bn.batchnorm_forward_train(y, sm, si, x, act["g"], act["b"], rm, rv, 0.1, 1e-5)
        relu.relu_forward(r, y)
        maxpool.maxpool2d_forward(po, pa, r, 2, 2)

    return fn, (y, r, sm, si, po, pa)


@pytest.mark.parametrize("impl", ["hitcnn", "hitcnn_unfused", "torch"])
def test_bn_relu_pool_fwd(benchmark, act, impl):
    """Fused BatchNorm+ReLU+MaxPool forward, beside the unfused chain and torch."""
    x, c = act["x"], act["c"]
    nb = 2 * x.nbytes + 2 * int(np.prod(act["pool"])) * 4  # the fused minimum: x twice, pooled out + argmax
    if impl == "hitcnn":
        po, pa = np.empty(act["pool"], np.float32), np.empty(act["pool"], np.int32)
        sm, si, rm, rv = np.empty(c), np.empty(c), np.zeros(c, np.float32), np.ones(c, np.float32)
        fn = lambda: fused.bn_relu_pool_forward_train(po, pa, sm, si, x, act["g"], act["b"], rm, rv, 0.1, 1e-5, 2)  # noqa: E731
    elif impl == "hitcnn_unfused":
        fn, _ = _unfused_fwd(act)
    else:
        _torch_or_skip()
        tx, m = torch.from_numpy(x), torch.nn.BatchNorm2d(c).train()
        fn = torch.no_grad()(lambda: torch.nn.functional.max_pool2d_with_indices(torch.relu(m(tx)), 2, 2))
    _bench(benchmark, f"bn_relu_pool fwd {act['tag']}", fn, nb)


@pytest.mark.parametrize("impl", ["hitcnn", "hitcnn_unfused", "torch"])
def test_bn_relu_pool_bwd(benchmark, act, impl):
    """Fused BatchNorm+ReLU+MaxPool backward, beside the unfused chain and torch."""
    x, c, dp = act["x"], act["c"], act["dp"]
    nb = 2 * x.nbytes + 2 * int(np.prod(act["pool"])) * 4  # the fused minimum: read x, write dx, pooled grads
    fwd, (y, r, sm, si, po, pa) = _unfused_fwd(act)
    fwd()
    if impl == "hitcnn":
        dx, dg, db = np.empty_like(x), np.zeros(c, np.float32), np.zeros(c, np.float32)
        fn = lambda: fused.bn_relu_pool_backward(dx, dg, db, dp, pa, x, sm, si, act["g"], act["b"], 2)  # noqa: E731
    elif impl == "hitcnn_unfused":
        t1, t2, dx = np.empty_like(x), np.empty_like(x), np.empty_like(x)
        dg, db = np.zeros(c, np.float32), np.zeros(c, np.float32)

        def fn():
            maxpool.maxpool2d_backward(t1, dp, pa, 2, 2)
            relu.relu_backward(t2, t1, r)
            bn.batchnorm_backward(dx, dg, db, t2, x, sm, si, act["g"])
    else:
        _torch_or_skip()
        tx = torch.from_numpy(x).requires_grad_()
        m = torch.nn.BatchNorm2d(c).train()
        out, _ = torch.nn.functional.max_pool2d_with_indices(torch.relu(m(tx)), 2, 2)
        tdp = torch.from_numpy(dp)
        fn = lambda: torch.autograd.grad(out, [tx, m.weight, m.bias], tdp, retain_graph=True)  # noqa: E731
    _bench(benchmark, f"bn_relu_pool bwd {act['tag']}", fn, nb)


# -- Dropout, softmax cross-entropy, Adam -------------------------------------------------------------
@pytest.mark.parametrize("n", BATCHES)
def test_dropout_fwd(benchmark, n):
    """Dropout forward (mask draw + scale) on the (N, 512) hidden layer."""
    x = np.random.default_rng(0).standard_normal((n, 512)).astype(np.float32)
    out, mask, rng = np.empty_like(x), np.empty(x.shape, np.uint8), dropout.make_rng(0)
    _bench(benchmark, f"dropout fwd N{n} 512", lambda: dropout.dropout_forward(out, mask, x, 0.4, rng),
           2 * x.nbytes + mask.nbytes)


@pytest.mark.parametrize("n", BATCHES)
def test_softmax_xent_fwd_bwd(benchmark, n):
    """Softmax cross-entropy forward + backward on (N, 3) logits."""
    logits = np.random.default_rng(0).standard_normal((n, 3)).astype(np.float32)
    t = (np.arange(n) % 3).astype(np.int64)
    probs, d = np.empty_like(logits), np.empty_like(logits)

    def fn():
        softmax_xent.softmax_xent_forward(probs, logits, t)
        softmax_xent.softmax_xent_backward(d, probs, t)

    _bench(benchmark, f"softmax_xent fwd+bwd N{n} K3", fn, 4 * logits.nbytes)


@pytest.mark.parametrize("impl", ["hitcnn", "torch"])
def test_adam_cnn6_rgb_params(benchmark, impl):
    """One Adam update over every parameter tensor of cnn6_rgb."""
    from engine import models

    model = models.build("cnn6_rgb")
    params = model.parameters()
    total = sum(p.nbytes for _, p, _ in params)
    nb = 7 * total  # read p, g, m, v; write p, m, v
    if impl == "hitcnn":
        from engine.optim import Adam

        opt = Adam(params)
        fn = opt.step
    else:
        _torch_or_skip()
        tps = [torch.nn.Parameter(torch.from_numpy(p.copy())) for _, p, _ in params]
        for t in tps:
            t.grad = torch.randn_like(t)
        fn = torch.optim.Adam(tps, lr=5e-4).step
    _bench(benchmark, "adam step cnn6_rgb 421027 params", fn, nb)
