"""The paper's four CNNs, built from :mod:`engine.layers`.

The paper names the networks (2, 4 and 6 convolutional blocks on mono or RGB
spectrogram images) but does not give their layer widths; these are ours::

    block(F)  = Conv2d(C, F, 3, stride 1, pad 1) -> BatchNorm2d(F) -> ReLU -> MaxPool2d(2)
    head      = Flatten -> Linear(flat, 512) -> ReLU -> Dropout(dropout) -> Linear(512, n_classes)

==========  ===========  ==============================
name        in channels  block widths F
==========  ===========  ==============================
cnn2_mono   1            [32, 64]
cnn4_mono   1            [32, 64, 64, 128]
cnn4_rgb    3            [32, 64, 64, 128]
cnn6_rgb    3            [32, 32, 64, 64, 128, 128]  (the paper's best)
==========  ===========  ==============================

``flat`` follows from the input shape: each block keeps ``H, W`` (3x3, pad 1)
and the pool floors them by 2, e.g. ``102 x 159 -> 1 x 2`` after six blocks,
so ``flat = 128 * 1 * 2 = 256`` for cnn6_rgb.
"""
from __future__ import annotations

import numpy as np

from .layers import BatchNorm2d, Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU
from .model import Sequential

__all__ = ["MODELS", "build", "HIDDEN", "min_side"]

#: name -> (input channels, block widths). Widths are ours: the paper does not give them.
MODELS = {
    "cnn2_mono": (1, (32, 64)),
    "cnn4_mono": (1, (32, 64, 64, 128)),
    "cnn4_rgb": (3, (32, 64, 64, 128)),
    "cnn6_rgb": (3, (32, 32, 64, 64, 128, 128)),
}

#: Width of the hidden fully connected layer.
HIDDEN = 512


def min_side(name: str) -> int:
    """Smallest image height and width ``name`` accepts: every block's 2x2 max-pool halves H and W (floor)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return 2 ** len(MODELS[name][1])


def build(name, in_shape=None, n_classes=3, dropout=0.4, seed=0, dtype=np.float32, fuse=True):
    """Build one of the paper's networks with freshly initialised weights.

    Parameters
    ----------
    name : str
        A key of :data:`MODELS`.
    in_shape : tuple (C, H, W) or None
        Input image shape; default ``(C, 102, 159)`` with ``C`` from :data:`MODELS`.
    n_classes : int >= 2
        Outputs of the last Linear (logits).
    dropout : float in [0, 1)
        Drop probability before the last Linear.
    seed : int
        Seeds every initialisation (in layer order) and the Dropout generator:
        the same seed gives bit-identical models.
    dtype : float32 (training) or float64 (gradient checks)
    fuse : bool
        Passed to :class:`engine.model.Sequential`.

    Returns
    -------
    Sequential
        With ``input_grad=False`` (training never needs the input gradient).

    Raises
    ------
    ValueError
        On an unknown name, a channel count that does not match the model, an
        input too small for the pools, or bad ``n_classes``/``dropout``.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    c_in, widths = MODELS[name]
    in_shape = (c_in, 102, 159) if in_shape is None else tuple(int(v) for v in in_shape)
    if len(in_shape) != 3 or in_shape[0] != c_in:
        raise ValueError(f"{name} expects in_shape ({c_in}, H, W), got {in_shape}")
    if int(n_classes) != n_classes or n_classes < 2:
        raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}")
    _, h, w = in_shape
    for _ in widths:
        h, w = h // 2, w // 2
    if h < 1 or w < 1:
        raise ValueError(f"{name} has {len(widths)} 2x2 pools; input {in_shape} is too small "
                         f"(needs H, W >= {2 ** len(widths)})")
    rng = np.random.default_rng(seed)
    layers, c = [], c_in
    for f in widths:
        layers += [Conv2d(c, f, 3, 1, 1, rng=rng, dtype=dtype), BatchNorm2d(f, dtype=dtype), ReLU(), MaxPool2d(2, 2)]
        c = f
    flat = c * h * w
    drop_seed = int(rng.integers(0, 2**63 - 1))
    layers += [Flatten(), Linear(flat, HIDDEN, rng=rng, dtype=dtype), ReLU(), Dropout(dropout, seed=drop_seed),
               Linear(HIDDEN, int(n_classes), rng=rng, dtype=dtype)]
    return Sequential(layers, fuse=fuse, input_grad=False)
