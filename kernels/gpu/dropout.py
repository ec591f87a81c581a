"""Inverted dropout on the GPU (``cuda/dropout.cu``), same entry points as :mod:`kernels.cpu.dropout`.

PyTorch convention: each unit kept with probability ``1 - p`` (uniform draw
``u >= p``, the CPU's rule), kept units scaled by ``1/(1 - p)``; the backward
reuses the uint8 mask. Inputs that are not C-contiguous are copied; outputs
must be C-contiguous.

Random numbers: :func:`make_rng` returns a :class:`CounterRNG`, a
counter-based SplitMix64 stream (Steele, Lea & Flood, "Fast splittable
pseudorandom number generators", OOPSLA 2014; the generator behind Java's
``SplittableRandom``): draw number ``k`` (0-based, counted over the life of
the generator) is ``mix64(key + (k + 1) * 0x9E3779B97F4A7C15)`` with
``key = mix64(seed)``, computed on the device with CuPy's elementwise uint64
arithmetic. Its whole state is ``(seed, offset)`` (two integers), so it
serialises to JSON for checkpoints and a resumed run draws exactly the masks
an uninterrupted one would; a ``cupy.random.Generator`` has no portable state
(the cuRAND states live in device memory and depend on the SM count). The
stream differs from the CPU's NumPy PCG64, so GPU and CPU masks are equal in
law, not bitwise; same seed, same masks on the GPU.
"""
from __future__ import annotations

import cupy as cp
import numpy as np

from ..shapes import dropout_scale
from . import _launch as L

__all__ = ["make_rng", "CounterRNG", "dropout_forward", "dropout_backward"]

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def _mix64(z):
    """SplitMix64's finaliser on a Python int (host side, exact)."""
    z &= _MASK64
    z = ((z ^ (z >> 30)) * _M1) & _MASK64
    z = ((z ^ (z >> 27)) * _M2) & _MASK64
    return z ^ (z >> 31)


class CounterRNG:
    """Counter-based SplitMix64 uniforms on the device; state = ``(seed, offset)``.

    Parameters
    ----------
    seed : int >= 0 or None
        ``None`` draws a seed from the OS (``numpy.random.SeedSequence``).

    Attributes
    ----------
    KIND : str
        ``state["bit_generator"]``, the tag that tells this stream's states apart
        from NumPy's (``"PCG64"``) in a checkpoint.
    offset : int
        Number of draws made so far (the counter).

    Notes
    -----
    Draw ``k`` depends only on ``(seed, k)``, so the stream does not depend on
    how the draws are split into calls, nor on the GPU model. Every ``random``
    call runs about ten elementwise CuPy kernels on preallocated buffers (no
    host synchronisation, no allocation after the first call of a size).
    """

    KIND = "hitcnn-splitmix64-counter"

    def __init__(self, seed=0):
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(2, np.uint64)[0])
        if int(seed) != seed or seed < 0:
            raise ValueError(f"CounterRNG: seed must be an integer >= 0 or None, got {seed!r}")
        self.seed = int(seed)
        self._key = _mix64(self.seed)
        self.offset = 0
        self._bufs = {}

    @property
    def state(self):
        """JSON-serialisable ``{"bit_generator": KIND, "seed": int, "offset": int}``."""
        return {"bit_generator": self.KIND, "seed": self.seed, "offset": self.offset}

    @state.setter
    def state(self, st):
        if not isinstance(st, dict) or st.get("bit_generator") != self.KIND:
            kind = st.get("bit_generator") if isinstance(st, dict) else type(st).__name__
            raise ValueError(f"CounterRNG: expected a state with bit_generator={self.KIND!r}, got {kind!r}")
        seed, off = st.get("seed"), st.get("offset")
        if not (isinstance(seed, int) and isinstance(off, int) and seed >= 0 and off >= 0):
            raise ValueError(f"CounterRNG: state needs integer seed >= 0 and offset >= 0, got {st!r}")
        self.seed, self._key, self.offset = seed, _mix64(seed), off

    def _buffers(self, n, dtype):
        key = (n, np.dtype(dtype).str)
        b = self._bufs.get(key)
        if b is None:
            if len(self._bufs) > 8:
                self._bufs.clear()
            weyl = cp.arange(1, n + 1, dtype=np.uint64)
            cp.multiply(weyl, np.uint64(_GOLDEN), out=weyl)  # (i + 1) * golden (mod 2**64)
            b = self._bufs[key] = (weyl, cp.empty(n, np.uint64), cp.empty(n, np.uint64), cp.empty(n, dtype))
        return b

    def random(self, size, dtype=np.float64):
        """``size`` uniforms in [0, 1) as a flat device array of ``dtype`` (float32: 24-bit, float64: 53-bit).

        The array is a reused buffer, overwritten by the next call of the same
        size and dtype. Advances :attr:`offset` by ``size``.

        Raises
        ------
        ValueError
            On a dtype other than float32/float64 or a negative size.
        """
        n = int(np.prod(size)) if isinstance(size, tuple) else int(size)
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64) or n < 0:
            raise ValueError(f"CounterRNG.random: need size >= 0 and float32/float64, got {size}, {dtype}")
        weyl, z, t, u = self._buffers(n, dtype)
        base = np.uint64((self._key + self.offset * _GOLDEN) & _MASK64)
        cp.add(weyl, base, out=z)  # key + (offset + i + 1) * golden
        for shift, mult in ((30, _M1), (27, _M2)):
            cp.right_shift(z, np.uint64(shift), out=t)
            cp.bitwise_xor(z, t, out=z)
            cp.multiply(z, np.uint64(mult), out=z)
        cp.right_shift(z, np.uint64(31), out=t)
        cp.bitwise_xor(z, t, out=z)
        bits = 24 if dtype == np.float32 else 53
        cp.right_shift(z, np.uint64(64 - bits), out=t)
        cp.copyto(u, t, casting="unsafe")  # exact: t < 2**bits
        cp.multiply(u, dtype.type(2.0 ** -bits), out=u)
        self.offset += n
        return u


def make_rng(seed):
    """Return this backend's generator: a :class:`CounterRNG` (SplitMix64 by counter) seeded with ``seed``."""
    return CounterRNG(seed)


def dropout_forward(out, mask, x, p, rng):
    """Inverted dropout forward (training mode).

    Parameters
    ----------
    out : cupy.ndarray [shape=x.shape, dtype=x.dtype], C-contiguous
        Overwritten: ``x * mask / (1 - p)``.
    mask : cupy.ndarray [shape=x.shape, dtype=uint8], C-contiguous
        1 where the unit is kept (``u >= p``), else 0.
    x : cupy.ndarray [float32 or float64]
    p : float in [0, 1)
    rng : CounterRNG (or any object with ``random(n, dtype=...)`` giving device uniforms)
        From :func:`make_rng`; advanced by ``x.size`` draws.

    Raises
    ------
    ValueError
        On ``p`` outside [0, 1) or mismatched shapes/dtypes.
    """
    dt = L.float_dtype(x)
    scale = dropout_scale(p)
    L.check_out("out", out, x.shape, dt)
    L.check_out("mask", mask, x.shape, np.uint8)
    x = L.contig(x)
    n = x.size
    u = rng.random(n, dtype=dt)
    L.kernel("dropout.cu", "dropout_forward", dt)(
        L.flat_grid(n), (L.THREADS,), (out, mask, x, u, L.real(dt, p), L.real(dt, scale), L.i64(n)))


def dropout_backward(dx, dout, mask, p):
    """Dropout backward with the forward's mask: ``dx = dout * mask / (1 - p)`` (overwrites ``dx``)."""
    dt = L.float_dtype(dout, "dout")
    scale = dropout_scale(p)
    L.check_out("dx", dx, dout.shape, dt)
    dout = L.contig(dout)
    mask = L.check("mask", mask, dout.shape, np.uint8)
    n = dout.size
    L.kernel("dropout.cu", "dropout_backward", dt)(
        L.flat_grid(n), (L.THREADS,), (dx, dout, mask, L.real(dt, scale), L.i64(n)))
