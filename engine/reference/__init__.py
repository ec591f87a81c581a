"""Plain float64 NumPy references of every op: slow, obviously correct, never importing kernels/.

One module per op, named like the kernels' (``kernels/{cpu,gpu}/<op>.py``),
with functions named like the kernels' entry points: ``conv2d``, ``linear``,
``batchnorm``, ``relu``, ``maxpool``, ``dropout``, ``softmax_xent``, ``adam``,
``fused`` (BatchNorm2d -> ReLU -> MaxPool2d) and ``augment``. A reference
function takes the kernel's inputs (not its output buffers) and returns new
float64 arrays; where a kernel accumulates (``+=``) into a gradient buffer,
the reference returns the plain gradient. Every Numba and CuPy kernel is
tested against these functions (``tests/ops/test_<op>.py``).

The package namespace re-exports every op's functions
(``engine.reference.conv2d_forward``).
"""
from .adam import *  # noqa: F401,F403
from .augment import *  # noqa: F401,F403
from .batchnorm import *  # noqa: F401,F403
from .conv2d import *  # noqa: F401,F403
from .dropout import *  # noqa: F401,F403
from .fused import *  # noqa: F401,F403
from .linear import *  # noqa: F401,F403
from .maxpool import *  # noqa: F401,F403
from .relu import *  # noqa: F401,F403
from .softmax_xent import *  # noqa: F401,F403

OPS = ("conv2d", "linear", "batchnorm", "relu", "maxpool", "dropout", "softmax_xent", "adam", "fused", "augment")
