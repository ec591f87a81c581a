"""pytest-benchmark: Conv2d kernels at the paper's layer shapes, hitcnn vs PyTorch (vs the float64 reference).

Run:  python -m pytest bench/test_bench_conv.py --benchmark-only
      (add -k "N16 and fwd" for a subset; --benchmark-group-by=group is the default)

One group per layer shape, batch size and pass ("conv2d fwd N16 32->32 51x79").
Members: ``hitcnn`` (kernels.cpu.conv2d, float32), ``torch`` (float32, the
same ATen kernels autograd calls: ``conv2d`` and ``convolution_backward``
with an output mask; skipped without torch), and the float64 NumPy
``reference`` on the small shapes only (it takes seconds on the large ones).
``extra_info['GFLOP/s']`` is ``2*N*F*C*KH*KW*OH*OW`` over the median time.
Shapes: input 3 x 102 x 159; conv layers of cnn6_rgb, plus those cnn4_rgb adds.
Thread counts are left at the libraries' defaults (all cores).
"""
import numpy as np
import pytest

from engine.reference import conv2d as ref
from kernels import Workspace
from kernels.cpu import conv2d as K

SHAPES = [  # (C, F, H, W), 3x3 kernel, stride 1, padding 1
    (3, 32, 102, 159),
    (32, 32, 51, 79),
    (32, 64, 25, 39),
    (64, 64, 12, 19),
    (64, 128, 6, 9),
    (128, 128, 3, 4),
    (32, 64, 51, 79),
    (64, 64, 25, 39),
    (64, 128, 12, 19),
]
BATCHES = [16, 64]
PASSES = ["fwd", "bwd_input", "bwd_weight"]
REFERENCE_MAX_FLOP = 2e8  # keep the float64 reference out of the large shapes


def _ids(s):
    return "{}-{}-{}x{}".format(*s)


@pytest.fixture(scope="module", params=[(n, s) for n in BATCHES for s in SHAPES], ids=lambda p: f"N{p[0]}-{_ids(p[1])}")
def case(request):
    """Seeded inputs and preallocated outputs of one conv layer shape (fixture)."""
    n, (c, f, h, w) = request.param
    rng = np.random.default_rng(0)
    d = dict(n=n, c=c, f=f, h=h, w=w)
    d["x"] = rng.standard_normal((n, c, h, w)).astype(np.float32)
    d["wt"] = (rng.standard_normal((f, c, 3, 3)) * np.sqrt(2 / (9 * c))).astype(np.float32)
    d["b"] = np.zeros(f, np.float32)
    d["g"] = rng.standard_normal((n, f, h, w)).astype(np.float32)
    d["flop"] = 2 * n * f * c * 9 * h * w
    return d


def _run(benchmark, case, pass_, fn):
    c = case
    benchmark.group = f"conv2d {pass_} N{c['n']} {c['c']}->{c['f']} {c['h']}x{c['w']}"
    benchmark.pedantic(fn, warmup_rounds=2, rounds=7, iterations=1)
    if benchmark.stats is not None:  # None under --benchmark-disable (a smoke run)
        benchmark.extra_info["GFLOP/s"] = round(c["flop"] / benchmark.stats.stats.median / 1e9, 2)


@pytest.mark.parametrize("pass_", PASSES)
def test_hitcnn(benchmark, case, pass_):
    """hitcnn's Numba conv pass at this shape; GFLOP/s in extra_info."""
    c, ws = case, Workspace()
    out = np.empty(c["g"].shape, np.float32)
    dx = np.empty_like(c["x"])
    dw = np.zeros_like(c["wt"])
    db = np.zeros_like(c["b"])
    fn = {
        "fwd": lambda: K.conv2d_forward(out, c["x"], c["wt"], c["b"], 1, 1, ws),
        "bwd_input": lambda: K.conv2d_backward_input(dx, c["g"], c["wt"], 1, 1, ws),
        "bwd_weight": lambda: K.conv2d_backward_weight(dw, db, c["g"], c["x"], 1, 1, ws),
    }[pass_]
    _run(benchmark, c, pass_, fn)


@pytest.mark.parametrize("pass_", PASSES)
def test_torch(benchmark, case, pass_):
    """PyTorch's conv pass at the same shape (the peer)."""
    torch = pytest.importorskip("torch")
    c = case
    x, wt, b, g = (torch.from_numpy(c[k]) for k in ("x", "wt", "b", "g"))
    conv_bwd = torch.ops.aten.convolution_backward

    def bwd(mask):
        return conv_bwd(g, x, wt, [c["f"]], [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)

    fn = {
        "fwd": lambda: torch.nn.functional.conv2d(x, wt, b, 1, 1),
        "bwd_input": lambda: bwd([True, False, False]),
        "bwd_weight": lambda: bwd([False, True, True]),
    }[pass_]
    with torch.no_grad():
        _run(benchmark, c, pass_, fn)


@pytest.mark.parametrize("pass_", PASSES)
def test_reference_float64(benchmark, case, pass_):
    """The float64 NumPy reference at the small shapes (how much the kernels gain)."""
    c = case
    if c["flop"] > REFERENCE_MAX_FLOP:
        pytest.skip("float64 reference kept to the small shapes")
    x, wt, b, g = (c[k].astype(np.float64) for k in ("x", "wt", "b", "g"))
    fn = {
        "fwd": lambda: ref.conv2d_forward(x, wt, b, 1, 1),
        "bwd_input": lambda: ref.conv2d_backward_input(g, wt, x.shape, 1, 1),
        "bwd_weight": lambda: ref.conv2d_backward_weight(g, x, wt.shape[2:], 1, 1),
    }[pass_]
    _run(benchmark, c, pass_, fn)
