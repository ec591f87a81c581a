"""Plain float64 NumPy references of every op: slow, obviously correct, never importing kernels/.

Every Numba and CuPy kernel is tested against these functions.
``engine.reference.conv`` holds Conv2d and Linear; ``engine.reference.ops`` the rest.
"""
from .conv import *  # noqa: F401,F403
from .ops import *  # noqa: F401,F403
