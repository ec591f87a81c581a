"""Finite-difference gradient checks in float64: the checker itself, Flatten, a fused block and each whole model.

The gradient check of each op's layer (and of the loss) is in ``tests/ops/test_<op>.py``.
Criterion: max relative error < 1e-6 per parameter tensor and for the
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
from engine.layers import BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU
from engine.model import Sequential

TOL = 1e-6


def away_from_zero(shape, seed):
    x = np.random.default_rng(seed).standard_normal(shape)
    return np.where(np.abs(x) < 0.1, np.sign(x) * 0.1 + x, x)


def test_flatten_gradcheck():
    layer = Flatten().astype(np.float64)
    err = gradcheck(layer, away_from_zero((2, 3, 2, 2), 7), seed=1)
    assert set(err) == set(layer.params) | {"input"}
    assert max(err.values()) < TOL, err


def test_gradcheck_returns_a_result_object():
    """A GradcheckResult: a mapping of errors (as before), the skipped counts beside them, no function attribute."""
    from engine.gradcheck import GradcheckResult

    res = gradcheck(MaxPool2d(2).astype(np.float64), away_from_zero((1, 2, 4, 4), 3), seed=0)
    assert isinstance(res, GradcheckResult)
    assert dict(res) == res.errors and set(res.skipped) == {"input"} and res.skipped["input"] >= 0
    assert res.max_error == max(res.errors.values()) < TOL
    assert not hasattr(gradcheck, "skipped")


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
