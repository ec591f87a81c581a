"""PyTorch as an optional oracle: each model's forward and all gradients within 1e-4 relative in float32.

The weights of our model are copied into the equivalent ``torch.nn.Sequential``;
both run a training-mode forward on the same batch (our Dropout mask is applied
in torch too), the same cross-entropy loss, and a backward. Relative error is
normwise per tensor: ``max|ours - torch| / max|torch|``. Rounding differs between the frameworks (about 1e-6 in the first block's
activations), so a unit within that distance of a ReLU kink or a max-pool tie
can take a different branch in each and change a gradient sum by far more
than 1e-4; the fixed batch below (seeded, batch 2) has no such unit in any of
the four models. The bias of a Conv2d
followed by BatchNorm2d has a true gradient of exactly 0 (BatchNorm removes
the mean), so both sides are float32 rounding noise: it is compared in
absolute terms against the scale of the conv weight's gradient.
"""
import numpy as np
import pytest

from engine import models
from engine.layers import BatchNorm2d, Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU
from engine.losses import SoftmaxCrossEntropy
from engine.optim import Adam

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

RTOL = 1e-4


class _Mask(torch.nn.Module):
    """Applies a fixed inverted-dropout mask (ours), so both frameworks drop the same units."""

    def __init__(self, p):
        super().__init__()
        self.p, self.mask = p, None

    def forward(self, x):
        return x * self.mask / (1 - self.p)


def to_torch(model):
    mods = []
    for layer in model.layers:
        if isinstance(layer, Conv2d):
            t = torch.nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding)
        elif isinstance(layer, BatchNorm2d):
            t = torch.nn.BatchNorm2d(layer.num_features, eps=layer.eps, momentum=layer.momentum)
        elif isinstance(layer, ReLU):
            t = torch.nn.ReLU()
        elif isinstance(layer, MaxPool2d):
            t = torch.nn.MaxPool2d(layer.kernel_size, layer.stride)
        elif isinstance(layer, Flatten):
            t = torch.nn.Flatten()
        elif isinstance(layer, Linear):
            t = torch.nn.Linear(layer.in_features, layer.out_features)
        elif isinstance(layer, Dropout):
            t = _Mask(layer.p)
        with torch.no_grad():
            for k, v in {**layer.params, **layer.buffers}.items():
                getattr(t, k).copy_(torch.from_numpy(np.array(v)))
        mods.append(t)
    return torch.nn.Sequential(*mods)


def rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_forward_and_gradients_match_torch(name):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    c = models.MODELS[name][0]
    rng = np.random.default_rng(1)
    x = rng.random((2, c, 102, 159), dtype=np.float32)
    y = np.array([0, 2], np.int64)
    m = models.build(name, seed=2)
    tm = to_torch(m).train()
    logits = m.forward(x)
    loss = SoftmaxCrossEntropy()
    lv = loss.forward(logits, y)
    m.zero_grad()
    m.backward(loss.backward())
    drop_i = next(i for i, layer in enumerate(m.layers) if isinstance(layer, Dropout))
    tm[drop_i].mask = torch.from_numpy(m.layers[drop_i].mask.astype(np.float32))
    tl = tm(torch.from_numpy(x))
    tloss = torch.nn.functional.cross_entropy(tl, torch.from_numpy(y))
    tloss.backward()
    assert rel(logits, tl.detach().numpy()) < RTOL
    assert abs(lv - tloss.item()) < RTOL * abs(tloss.item())
    tparams = dict(tm.named_parameters())
    for pname, _, grad in m.parameters():
        tg = tparams[pname].grad.numpy()
        i = int(pname.split(".")[0])
        if pname.endswith("bias") and isinstance(m.layers[i], Conv2d) and isinstance(m.layers[i + 1], BatchNorm2d):
            scale = np.abs(tparams[f"{i}.weight"].grad.numpy()).max()
            assert np.abs(grad).max() < RTOL * scale and np.abs(tg).max() < RTOL * scale, pname
        else:
            assert rel(grad, tg) < RTOL, (pname, rel(grad, tg))
    tbuf = dict(tm.named_buffers())
    for k, v in m.state_dict().items():
        if "running" in k:
            assert rel(v, tbuf[k].numpy()) < RTOL, k


def test_adam_steps_match_torch():
    rng = np.random.default_rng(3)
    p = rng.standard_normal(1000).astype(np.float32)
    g = np.zeros_like(p)
    tp = torch.nn.Parameter(torch.from_numpy(p.copy()))
    ours = Adam([("p", p, g)], lr=1e-2, weight_decay=0.01)
    theirs = torch.optim.Adam([tp], lr=1e-2, weight_decay=0.01)
    for _ in range(5):
        g[...] = rng.standard_normal(1000).astype(np.float32)
        ours.step()
        tp.grad = torch.from_numpy(g.copy())
        theirs.step()
    np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-5, atol=1e-6)
