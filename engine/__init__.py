"""hitcnn's training engine: layers, loss, Sequential, Adam, the paper's models, checkpoints, gradcheck.

No deep-learning framework inside: every layer's forward and backward runs as
a hand-written kernel of :mod:`kernels` (Numba on the CPU, CuPy on the GPU),
reached through :func:`kernels.backend_for`. ``engine.reference`` holds the
float64 NumPy references the kernels are tested against.

Typical use::

    from engine import models, SoftmaxCrossEntropy, Adam
    model = models.build("cnn6_rgb")            # (3, 102, 159) images, 3 classes
    loss_fn, opt = SoftmaxCrossEntropy(), Adam(model.parameters())
    loss = loss_fn(model.forward(x), y); model.zero_grad()
    model.backward(loss_fn.backward()); opt.step()
"""
from .layers import BatchNorm2d, Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU  # noqa: F401
from .losses import SoftmaxCrossEntropy  # noqa: F401
from .model import Sequential  # noqa: F401
from .optim import Adam  # noqa: F401
