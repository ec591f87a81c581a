"""Finite-difference gradient checks in float64: every layer, the loss, and each whole model.

Criterion (issue 2): max relative error < 1e-6 per parameter tensor and for the
input, with random upstream gradients (never all ones). ``engine.gradcheck``
uses central differences with h = 1e-6 and a normwise relative error; elements
whose perturbation crosses a ReLU kink or a max-pool tie are detected (mask /
argmax changed) and left out; inputs keep away from kinks by construction
(|x| >= 0.1 before a ReLU; continuous random values make pool ties improbable).
"""
import numpy as np
import pytest

from engine import models
from engine.gradcheck import gradcheck, rel_error
from engine.layers import BatchNorm2d, Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU
from engine.losses import SoftmaxCrossEntropy
from engine.model import Sequential

TOL = 1e-6


def away_from_zero(shape, seed):
    x = np.random.default_rng(seed).standard_normal(shape)
    return np.where(np.abs(x) < 0.1, np.sign(x) * 0.1 + x, x)


LAYERS = [
    ("conv_s1_p1", lambda: Conv2d(2, 3, 3, 1, 1, rng=0), (2, 2, 6, 7)),
    ("conv_s2_p0", lambda: Conv2d(2, 3, 3, 2, 0, rng=1), (1, 2, 7, 8)),
    ("batchnorm", lambda: BatchNorm2d(3), (2, 3, 4, 5)),
    ("relu", lambda: ReLU(), (2, 3, 4, 5)),
    ("maxpool_2_2", lambda: MaxPool2d(2, 2), (2, 2, 5, 7)),
    ("maxpool_3_2_overlap", lambda: MaxPool2d(3, 2), (1, 2, 7, 6)),
    ("dropout", lambda: Dropout(0.4, seed=3), (4, 20)),
    ("flatten", lambda: Flatten(), (2, 3, 2, 2)),
    ("linear", lambda: Linear(6, 4, rng=2), (3, 6)),
]


@pytest.mark.parametrize("name,make,shape", LAYERS, ids=[n for n, _, _ in LAYERS])
def test_layer_gradcheck(name, make, shape):
    layer = make().astype(np.float64)
    x = away_from_zero(shape, 7)
    if name == "batchnorm":
        layer.params["weight"][:] = [0.5, 1.5, -2.0]
        layer.params["bias"][:] = [0.1, -0.3, 0.2]
    err = gradcheck(layer, x, seed=1)
    assert set(err) == set(layer.params) | {"input"}
    assert max(err.values()) < TOL, err


def test_gradcheck_detects_a_wrong_gradient():
    layer = Linear(4, 3, rng=0).astype(np.float64)
    real = layer.backward

    def wrong(dy):
        dx = real(dy)
        layer.grads["weight"][0, 0] += 1e-3
        return dx

    layer.backward = wrong
    err = gradcheck(layer, np.random.default_rng(0).standard_normal((2, 4)))
    assert err["weight"] > 1e-5 and err["input"] < TOL


def test_rel_error_definition():
    assert rel_error([1.0, -2.0], [1.0, -2.0]) == 0.0
    assert rel_error([1.0, -2.0], [1.0, -2.002]) == pytest.approx(0.002 / 2.002)
    assert rel_error([1e-12], [3e-12]) == 0.0  # both below atol: a true zero gradient


def test_softmax_xent_gradient_vs_finite_differences():
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((5, 4))
    t = np.array([0, 3, 1, 1, 2], np.int64)
    for w in (None, np.array([1.0, 2.0, 0.5, 3.0])):
        loss = SoftmaxCrossEntropy(w)
        loss.forward(logits, t)
        d = loss.backward().copy()
        num = np.empty_like(logits)
        h = 1e-6
        for i in np.ndindex(logits.shape):
            lp = logits.copy()
            lp[i] += h
            lm = logits.copy()
            lm[i] -= h
            num[i] = (loss.forward(lp, t) - loss.forward(lm, t)) / (2 * h)
        assert rel_error(d, num) < TOL


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
def test_sequential_block_gradcheck_fused_and_unfused(fuse):
    model = Sequential([Conv2d(2, 3, rng=0), BatchNorm2d(3), ReLU(), MaxPool2d(2), Flatten(), Linear(3 * 3 * 4, 2, rng=1)],
                       fuse=fuse).astype(np.float64)
    err = gradcheck(model, away_from_zero((2, 2, 6, 8), 5), seed=2)
    assert max(err.values()) < TOL, err


MODEL_CASES = [("cnn2_mono", (1, 12, 14), 2, 12), ("cnn4_mono", (1, 16, 18), 2, 6), ("cnn4_rgb", (3, 16, 17), 2, 6),
               ("cnn6_rgb", (3, 64, 64), 1, 3)]


@pytest.mark.parametrize("name,in_shape,n,checks", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_model_gradcheck(name, in_shape, n, checks):
    model = models.build(name, in_shape=in_shape, dtype=np.float64, dropout=0.4, seed=3)
    model.input_grad = True
    x = np.random.default_rng(9).standard_normal((n,) + in_shape)
    err = gradcheck(model, x, seed=4, max_checks=checks)
    assert len(err) == len(model.parameters()) + 1
    assert max(err.values()) < TOL, {k: v for k, v in err.items() if v >= TOL}
