"""Layer API: shapes, initialisation, modes, gradient accumulation, buffer reuse, input validation."""
import numpy as np
import pytest

from engine import reference as R
from engine.layers import BatchNorm2d, Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU


def rnd(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def test_conv2d_he_normal_init_and_forward_backward_match_reference():
    conv = Conv2d(16, 64, rng=0)
    w = conv.params["weight"]
    assert w.shape == (64, 16, 3, 3) and w.dtype == np.float32
    assert abs(w.std() - np.sqrt(2 / (16 * 9))) < 0.05 * np.sqrt(2 / (16 * 9))
    assert abs(w.mean()) < 0.01
    assert np.all(conv.params["bias"] == 0)
    assert np.array_equal(Conv2d(16, 64, rng=0).params["weight"], w)  # seeded
    conv = Conv2d(3, 4, kernel_size=3, stride=2, padding=0, rng=1).astype(np.float64)
    x = rnd((2, 3, 9, 8), 2, np.float64)
    y = conv.forward(x)
    np.testing.assert_allclose(y, R.conv2d_forward(x, conv.params["weight"], conv.params["bias"], 2, 0), rtol=1e-12)
    dy = rnd(y.shape, 3, np.float64)
    dx = conv.backward(dy)
    dx_r = R.conv2d_backward_input(dy, conv.params["weight"], x.shape, 2, 0)
    dw_r, db_r = R.conv2d_backward_weight(dy, x, 3, 2, 0)
    np.testing.assert_allclose(dx, dx_r, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(conv.grads["weight"], dw_r, rtol=1e-12)
    np.testing.assert_allclose(conv.grads["bias"], db_r, rtol=1e-12)


def test_param_grads_accumulate_until_zero_grad_and_activation_grads_overwrite():
    lin = Linear(5, 4, rng=0).astype(np.float64)
    x, dy = rnd((3, 5), 1, np.float64), rnd((3, 4), 2, np.float64)
    lin.forward(x)
    dx1 = lin.backward(dy).copy()
    g1 = lin.grads["weight"].copy()
    lin.forward(x)
    dx2 = lin.backward(dy)
    np.testing.assert_allclose(lin.grads["weight"], 2 * g1, rtol=1e-14)
    np.testing.assert_allclose(dx2, dx1, rtol=1e-14)  # overwritten, not accumulated
    lin.zero_grad()
    assert np.all(lin.grads["weight"] == 0) and np.all(lin.grads["bias"] == 0)
    np.testing.assert_allclose(g1, dy.T @ x, rtol=1e-14)


def test_linear_init_is_he_normal_with_zero_bias():
    lin = Linear(256, 512, rng=3)
    w = lin.params["weight"]
    assert w.shape == (512, 256)
    assert abs(w.std() - np.sqrt(2 / 256)) < 0.03 * np.sqrt(2 / 256)
    assert np.all(lin.params["bias"] == 0)


def test_batchnorm_layer_train_updates_and_eval_keeps_running_stats():
    layer = BatchNorm2d(3)
    x = rnd((4, 3, 5, 6), 1) * 2 + 1
    y = layer.forward(x)
    o_r, _, _, rm, rv = R.batchnorm_forward_train(x, np.ones(3), np.zeros(3), np.zeros(3), np.ones(3))
    np.testing.assert_allclose(y, o_r, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.buffers["running_mean"], rm, rtol=1e-5)
    np.testing.assert_allclose(layer.buffers["running_var"], rv, rtol=1e-5)
    layer.eval()
    before = {k: v.copy() for k, v in layer.buffers.items()}
    ye = layer.forward(x)
    for k, v in layer.buffers.items():
        assert np.array_equal(v, before[k])
    np.testing.assert_allclose(ye, R.batchnorm_forward_eval(x, np.ones(3), np.zeros(3), rm, rv), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="training mode"):
        layer.backward(ye)


def test_dropout_layer_train_scales_eval_is_identity_and_backward_uses_mask():
    d = Dropout(0.4, seed=5)
    x = np.ones((8, 100), np.float32)
    y = d.forward(x)
    kept = y != 0
    assert np.allclose(y[kept], 1 / 0.6)
    assert 0.45 < kept.mean() < 0.75
    dx = d.backward(np.full_like(x, 2.0))
    assert np.array_equal(dx != 0, kept) and np.allclose(dx[kept], 2 / 0.6)
    d.eval()
    assert d.forward(x) is x
    st = Dropout(0.4, seed=5)
    a = st.forward(x).copy()
    state = st.rng_state()
    b = st.forward(x).copy()
    st.set_rng_state(state)
    assert np.array_equal(st.forward(x), b) and not np.array_equal(a, b)


def test_maxpool_relu_flatten_layers():
    x = rnd((2, 3, 7, 9), 4)
    pool = MaxPool2d(2)
    assert pool.stride == 2
    y = pool.forward(x)
    assert y.shape == (2, 3, 3, 4)
    np.testing.assert_array_equal(y, R.maxpool2d_forward(x, 2, 2)[0].astype(np.float32))
    r = ReLU()
    z = r.forward(x)
    assert np.array_equal(z, np.maximum(x, 0))
    f = Flatten()
    v = f.forward(y)
    assert v.shape == (2, 36) and np.shares_memory(v, y)
    assert f.backward(v).shape == y.shape


def test_output_buffers_are_reused_between_steps():
    conv, bn, relu = Conv2d(2, 4, rng=0), BatchNorm2d(4), ReLU()
    x = rnd((2, 2, 6, 6), 1)
    outs = [relu.forward(bn.forward(conv.forward(x))) for _ in range(2)]
    assert outs[0] is outs[1]
    dxs = [conv.backward(bn.backward(relu.backward(np.ones_like(outs[0])))) for _ in range(2)]
    assert dxs[0] is dxs[1]


@pytest.mark.parametrize(
    "layer,x,msg",
    [
        (Conv2d(3, 8, rng=0), np.zeros((2, 1, 8, 8), np.float32), r"expected input shape \(N, 3, H, W\), got \(2, 1, 8, 8\)"),
        (Conv2d(3, 8, rng=0), np.zeros((3, 8, 8), np.float32), r"expected a 4-D input \(N, 3, H, W\), got shape \(3, 8, 8\)"),
        (Conv2d(3, 8, rng=0), np.zeros((1, 3, 8, 8), np.int32), r"float32 or float64, got int32"),
        (Conv2d(3, 8, rng=0), np.zeros((1, 3, 8, 8), np.float64), r"does not match the parameters' float32"),
        (BatchNorm2d(4), np.zeros((2, 3, 8, 8), np.float32), r"expected input shape \(N, 4, H, W\), got \(2, 3, 8, 8\)"),
        (Linear(10, 2, rng=0), np.zeros((2, 11), np.float32), r"expected input shape \(N, 10\), got \(2, 11\)"),
        (MaxPool2d(2), np.zeros((1, 1, 1, 5), np.float32), r"smaller than the window"),
    ],
)
def test_forward_rejects_bad_input_naming_shapes(layer, x, msg):
    with pytest.raises(ValueError, match=msg):
        layer.forward(x)


def test_backward_before_forward_and_bad_gradient_shape():
    conv = Conv2d(1, 2, rng=0)
    with pytest.raises(ValueError, match="before forward"):
        conv.backward(np.zeros((1, 2, 4, 4), np.float32))
    conv.forward(np.zeros((1, 1, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"expected gradient of shape \(1, 2, 4, 4\), got \(1, 2, 4, 5\)"):
        conv.backward(np.zeros((1, 2, 4, 5), np.float32))


def test_saved_state_is_public_and_documented():
    """What a layer keeps for backward is a public attribute: None before forward, the forward's arrays after."""
    from engine.model import FusedBNReLUPool, Sequential

    conv, bn, relu, pool = Conv2d(1, 2, rng=0), BatchNorm2d(2), ReLU(), MaxPool2d(2)
    drop, flat, lin = Dropout(0.5, seed=1), Flatten(), Linear(2 * 2 * 3, 3, rng=0)
    assert conv.saved_input is None and bn.saved_input is None and bn.save_mean is None
    assert relu.output is None and pool.argmax is None and drop.mask is None and flat.in_shape is None
    x = rnd((2, 1, 4, 6), 0)
    h = conv.forward(x)
    assert conv.saved_input is x
    h = relu.forward(bn.forward(h))
    assert bn.saved_input is not None and bn.save_mean.shape == (2,) and bn.save_invstd.dtype == np.float64
    assert relu.output is h
    h = pool.forward(h)
    assert pool.argmax.shape == (2, 2, 2, 3) and pool.argmax.dtype == np.int32 and pool.in_shape == (2, 2, 4, 6)
    h = drop.forward(flat.forward(h))
    assert drop.mask.shape == (2, 12) and flat.in_shape == (2, 2, 2, 3)
    lin.forward(h)
    assert lin.saved_input is h
    for layer in (conv, bn, relu, pool, drop, flat, lin):
        assert "Attributes" in type(layer).__doc__ or "in_shape" in type(layer).__doc__, type(layer).__name__
    # Sequential: the steps of the last forward (fused block in place of BN-ReLU-pool) and the trace hook
    model = Sequential([Conv2d(1, 2, rng=0), BatchNorm2d(2), ReLU(), MaxPool2d(2), Flatten()])
    assert model.last_steps is None
    seen = []
    out = model.forward(x, trace=lambda i, step, y: seen.append((i, type(step).__name__, y.shape)))
    assert [type(s).__name__ for s in model.last_steps] == ["Conv2d", "FusedBNReLUPool", "Flatten"]
    assert seen == [(0, "Conv2d", (2, 2, 4, 6)), (1, "FusedBNReLUPool", (2, 2, 2, 3)), (2, "Flatten", (2, 12))]
    fz = model.last_steps[1]
    assert isinstance(fz, FusedBNReLUPool) and fz.argmax.shape == (2, 2, 2, 3) and fz.output.shape == (2, 2, 2, 3)
    assert fz.saved_input is not None and fz.save_mean is fz.bn.save_mean
    assert out.shape == (2, 12)
