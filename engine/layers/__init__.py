"""Layers of hitcnn: Conv2d, BatchNorm2d, ReLU, MaxPool2d, Dropout, Flatten, Linear.

One module per op, named like the kernels (``conv2d``, ``batchnorm``, ``relu``,
``maxpool``, ``dropout``, ``linear``; ``flatten`` has no kernel), the base class
and shared helpers in ``base``; this package re-exports them all.

Names, arguments and defaults follow PyTorch (``torch.nn``). Every layer has
``forward(x) -> y`` (respecting ``training``), ``backward(dy) -> dx``, and the
dicts ``params`` and ``grads`` (same keys: ``weight``, ``bias``); BatchNorm2d
also has ``buffers`` (``running_mean``, ``running_var``). Parameter gradients
accumulate (``+=``) until :meth:`Layer.zero_grad`; activation gradients are
overwritten.

Memory: outputs and gradient buffers are allocated once per input shape and
reused, so a training step after warm-up allocates nothing proportional to
the activations. Consequently the array returned by ``forward``/``backward``
is overwritten by the next call with the same shape: copy it to keep it.

Kernels are reached only through :func:`kernels.backend_for` (NumPy -> CPU,
CuPy -> GPU); no layer names a backend. Each layer's docstring names the op
(``kernels.<backend>.<op>``) and the float64 reference
(``engine.reference.<op>``) it is tested against. Dimension letters:
``N, C, H, W``, ``F`` (filters), ``KH, KW``, ``OH, OW``.

Saved state: what a layer keeps from ``forward`` for ``backward`` is a
public, documented attribute of the layer (``saved_input``, ``save_mean``,
``save_invstd``, ``output``, ``argmax``, ``mask``, ``in_shape``), None
before the first forward. They are references to the layer's (reused)
buffers or to the caller's input, not copies: read them, do not keep them.
"""
from .base import Layer, _as_rng, cached_buffer, workspace_for  # noqa: F401
from .batchnorm import BatchNorm2d
from .conv2d import Conv2d
from .dropout import Dropout
from .flatten import Flatten
from .linear import Linear
from .maxpool import MaxPool2d
from .relu import ReLU

__all__ = ["Layer", "Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "Dropout", "Flatten", "Linear", "workspace_for",
           "cached_buffer"]
