"""The paper's four models: architecture, summary, overfitting one batch, determinism, memory, fusion."""
import tracemalloc

import numpy as np
import pytest

from engine import models
from engine.layers import BatchNorm2d, Conv2d, Dropout, Linear, MaxPool2d
from engine.losses import SoftmaxCrossEntropy
from engine.optim import Adam


@pytest.mark.parametrize("name,c,widths,flat", [
    ("cnn2_mono", 1, [32, 64], 64 * 25 * 39),
    ("cnn4_mono", 1, [32, 64, 64, 128], 128 * 6 * 9),
    ("cnn4_rgb", 3, [32, 64, 64, 128], 128 * 6 * 9),
    ("cnn6_rgb", 3, [32, 32, 64, 64, 128, 128], 256),
])
def test_architectures(name, c, widths, flat):
    m = models.build(name)
    convs = [layer for layer in m.layers if isinstance(layer, Conv2d)]
    assert [layer.out_channels for layer in convs] == widths
    assert convs[0].in_channels == c
    assert all(layer.kernel_size == 3 and layer.padding == 1 and layer.stride == 1 for layer in convs)
    assert sum(isinstance(layer, BatchNorm2d) for layer in m.layers) == len(widths)
    assert sum(isinstance(layer, MaxPool2d) for layer in m.layers) == len(widths)
    lins = [layer for layer in m.layers if isinstance(layer, Linear)]
    assert [(layer.in_features, layer.out_features) for layer in lins] == [(flat, 512), (512, 3)]
    assert [layer.p for layer in m.layers if isinstance(layer, Dropout)] == [0.4]
    assert m.input_grad is False


def test_summary_lists_shapes_and_parameter_counts():
    m = models.build("cnn6_rgb")
    s = m.summary((3, 102, 159))
    assert "(N, 32, 102, 159)" in s and "(N, 128, 1, 2)" in s and "(N, 256)" in s and "(N, 3)" in s
    assert f"{m.num_params():,}" in s.splitlines()[-1]
    assert m.num_params() == 421_027
    assert "(N, 64, 25, 39)" in models.build("cnn2_mono").summary((1, 102, 159))


def test_other_input_sizes_and_bad_arguments():
    m = models.build("cnn4_rgb", in_shape=(3, 64, 80), n_classes=5)
    assert m.forward(np.zeros((2, 3, 64, 80), np.float32)).shape == (2, 5)
    with pytest.raises(ValueError, match="unknown model"):
        models.build("cnn3")
    with pytest.raises(ValueError, match=r"expects in_shape \(3, H, W\), got \(1, 102, 159\)"):
        models.build("cnn6_rgb", in_shape=(1, 102, 159))
    with pytest.raises(ValueError, match="too small"):
        models.build("cnn6_rgb", in_shape=(3, 32, 159))
    m = models.build("cnn2_mono")
    with pytest.raises(ValueError, match=r"expected input shape \(N, 1, H, W\), got \(2, 3, 102, 159\)"):
        m.forward(np.zeros((2, 3, 102, 159), np.float32))


def _train(model, x, y, steps, opt=None):
    loss_fn = SoftmaxCrossEntropy()
    opt = opt or Adam(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for _ in range(steps):
        losses.append(loss_fn.forward(model.forward(x), y))
        model.zero_grad()
        model.backward(loss_fn.backward())
        opt.step()
    return losses


def test_cnn2_mono_overfits_one_batch_within_100_adam_steps():
    rng = np.random.default_rng(0)
    x = rng.random((16, 1, 102, 159), dtype=np.float32)
    y = rng.integers(0, 3, 16).astype(np.int64)
    m = models.build("cnn2_mono", seed=1)
    loss_fn, opt = SoftmaxCrossEntropy(), Adam(m.parameters(), lr=1e-3)
    for step in range(1, 101):
        m.train()
        loss_fn.forward(m.forward(x), y)
        m.zero_grad()
        m.backward(loss_fn.backward())
        opt.step()
        if step % 10 == 0:
            m.eval()
            acc = float((m.forward(x).argmax(1) == y).mean())
            if acc == 1.0:
                break
    assert acc == 1.0, f"train accuracy {acc} after {step} steps"


def test_same_seed_gives_bit_identical_weights():
    rng = np.random.default_rng(2)
    x = rng.random((4, 3, 64, 70), dtype=np.float32)
    y = np.array([0, 1, 2, 1], np.int64)
    runs = []
    for _ in range(2):
        m = models.build("cnn6_rgb", in_shape=(3, 64, 70), seed=7)
        losses = _train(m, x, y, 3)
        runs.append((losses, m.state_dict()))
    assert runs[0][0] == runs[1][0]
    for k, v in runs[0][1].items():
        assert np.array_equal(v, runs[1][1][k]), k
    other = models.build("cnn6_rgb", in_shape=(3, 64, 70), seed=8).state_dict()
    assert not np.array_equal(other["0.weight"], runs[0][1]["0.weight"])


def _grads(m, x, y):
    loss_fn = SoftmaxCrossEntropy()
    m.train()
    loss_fn.forward(m.forward(x), y)
    m.zero_grad()
    m.backward(loss_fn.backward())
    return {name: g.copy() for name, _, g in m.parameters()}


def test_fused_and_unfused_models_agree():
    """Fused and unfused cnn4_rgb give the same gradients (at the initial and at a trained state) and eval logits.

    The trained state is the fused model's after two Adam steps, loaded into
    both: comparing two separately trained models would compare Adam's
    response to round-off, since an element with a near-zero gradient (a conv
    bias that feeds a batchnorm has an exact gradient of zero) takes a full
    +-lr step of arbitrary sign.
    """
    rng = np.random.default_rng(3)
    x = rng.random((3, 3, 40, 44), dtype=np.float32)
    y = np.array([0, 2, 1], np.int64)
    fused, plain = (models.build("cnn4_rgb", in_shape=(3, 40, 44), seed=5, fuse=f) for f in (True, False))
    pre_bn = {f"{i}.bias" for i, layer in enumerate(plain.layers[:-1])
              if isinstance(layer, Conv2d) and isinstance(plain.layers[i + 1], BatchNorm2d)}
    assert len(pre_bn) == 4
    for state in ("initial", "trained"):
        if state == "trained":
            _train(fused, x, y, 2)
            plain.load_state_dict(fused.state_dict())
            for a, b in zip(fused.layers, plain.layers):
                if isinstance(a, Dropout):
                    b.set_rng_state(a.rng_state())
        ga, gb = _grads(fused, x, y), _grads(plain, x, y)  # the same dropout draws: both generators in step
        for k in ga:
            np.testing.assert_allclose(ga[k], gb[k], rtol=2e-4, atol=2e-6, err_msg=f"{state} {k}")
            if k in pre_bn:  # exactly zero in exact arithmetic
                assert max(np.abs(ga[k]).max(), np.abs(gb[k]).max()) < 1e-5, (state, k)
            else:  # a real gradient, so the comparison can fail
                assert np.abs(gb[k]).max() > 1e-3, (state, k)
        fused.eval()
        plain.eval()
        np.testing.assert_allclose(fused.forward(x), plain.forward(x), rtol=1e-4, atol=1e-5, err_msg=state)


def test_training_step_after_warmup_allocates_nothing_proportional_to_activations():
    x = np.random.default_rng(4).random((8, 3, 102, 159), dtype=np.float32)
    y = np.arange(8, dtype=np.int64) % 3
    m = models.build("cnn6_rgb")
    opt = Adam(m.parameters())
    _train(m, x, y, 2, opt)
    tracemalloc.start()
    _train(m, x, y, 1, opt)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # the first block's activation alone is 8*32*102*159*4 = 16.6 MB; allow only small per-call temporaries
    assert peak < 1_000_000, f"step allocated a peak of {peak} bytes"


def test_eval_mode_is_deterministic_and_keeps_buffers():
    m = models.build("cnn2_mono", in_shape=(1, 20, 24))
    x = np.random.default_rng(5).random((2, 1, 20, 24), dtype=np.float32)
    m.train()
    m.forward(x)
    m.eval()
    before = m.state_dict()
    a = m.forward(x).copy()
    b = m.forward(x)
    assert np.array_equal(a, b)
    after = m.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def _eval_outputs_after_training(model, shape, dtype, to=lambda a: a):
    """A model with non-trivial running statistics, in eval mode, and a batch of 9 images."""
    rng = np.random.default_rng(4)
    model.train()
    for _ in range(2):
        model.forward(to(rng.standard_normal((6,) + shape).astype(dtype)))
    model.eval()
    return rng.standard_normal((9,) + shape).astype(dtype)


@pytest.mark.parametrize("name, shape", [("cnn2_mono", (1, 16, 24)), ("cnn4_rgb", (3, 32, 48)),
                                         ("cnn6_rgb", (3, 102, 159))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_eval_output_of_an_image_does_not_depend_on_the_rest_of_the_batch(name, shape, dtype):
    """Issue 10 item 19: in eval mode image i's logits are bit-identical alone, shifted, reordered or in
    another batch size (was 1.7e-6 apart: the conv GEMM chunks and the Linear GEMM depended on N)."""
    m = models.build(name, in_shape=shape, dtype=dtype)
    x = _eval_outputs_after_training(m, shape, dtype)
    full = m.forward(x).copy()
    for idx in ([1, 2, 3, 4, 5], [8, 0], [3], [8, 7, 6, 5, 4, 3, 2, 1, 0]):
        part = m.forward(x[idx].copy())
        assert np.array_equal(part, full[idx]), idx
    # and the invariant eval path still computes the same function as the training-mode kernels
    for layer in m.layers:
        if isinstance(layer, (Conv2d, Linear)):
            layer.training = True  # their only use of the flag: the batch GEMMs (not batch-invariant)
    np.testing.assert_allclose(m.forward(x), full, rtol=0, atol=1e-4 * float(np.max(np.abs(full))))
