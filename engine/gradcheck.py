"""Finite-difference gradient checker for layers and models (float64).

For a module ``f`` (a layer or :class:`engine.model.Sequential`), an input
``x`` and a random upstream gradient ``dy`` (never all ones), the scalar
``L = sum(f(x) * dy)`` has gradient ``backward(dy)``. Each checked element is
perturbed by ``+-h`` and the central difference ``(L+ - L-) / 2h`` compared
with the analytic value (cs231n ``eval_numerical_gradient_array``; chainer
``check_backward``). Modules run in their current mode; Dropout generators
are reset before every forward so all evaluations use the same mask, and
parameters, BatchNorm running statistics and generator states are restored
at the end.

Relative error of a tensor (normwise, over the checked elements):
``max_i |a_i - n_i| / max_i max(|a_i|, |n_i|)``; an elementwise ratio would be
dominated by float64 rounding noise (about ``1e-16 * |y| / h``) on elements
many orders below the tensor's largest gradient. Tensors whose gradients
are all below ``atol`` on both sides count as exactly zero (see :func:`rel_error`).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

__all__ = ["gradcheck", "rel_error", "GradcheckResult"]


@dataclass
class GradcheckResult(Mapping):
    """What :func:`gradcheck` found: a read-only mapping ``tensor name -> relative error``.

    Attributes
    ----------
    errors : dict of str to float
        ``{param_name: rel_error, ..., "input": rel_error}`` (see :func:`rel_error`);
        iterating, indexing and ``len`` of the result are those of ``errors``.
    skipped : dict of str to int
        Per tensor, the checked elements left out because their perturbation
        flipped a ReLU mask or a max-pool argmax (a kink or a tie crossed).
    """

    errors: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)

    def __getitem__(self, name):
        return self.errors[name]

    def __iter__(self):
        return iter(self.errors)

    def __len__(self):
        return len(self.errors)

    @property
    def max_error(self) -> float:
        """The largest relative error over the checked tensors (0.0 when none)."""
        return max(self.errors.values(), default=0.0)


def rel_error(a, n, atol=1e-7):
    """Normwise relative error ``max_i |a_i - n_i| / max(max_i |a_i|, max_i |n_i|)`` of analytic ``a``, numeric ``n``.

    A tensor whose analytic and numeric gradients are both below ``atol``
    everywhere has error 0 (its true gradient is zero, e.g. the bias of a
    Conv2d followed by BatchNorm2d, and the numeric value is rounding noise).
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    n = np.asarray(n, dtype=np.float64).ravel()
    if a.size == 0:
        return 0.0
    scale = max(np.abs(a).max(), np.abs(n).max())
    if scale < atol:
        return 0.0
    return float(np.abs(a - n).max() / scale)


def _params(module):
    if hasattr(module, "parameters"):
        return [(n, p, g) for n, p, g in module.parameters()]
    return [(k, p, module.grads[k]) for k, p in module.params.items()]


def _rng_get(module):
    if hasattr(module, "rng_states"):
        return module.rng_states()
    if hasattr(module, "rng_state"):
        return module.rng_state()
    return None


def _rng_set(module, state):
    if state is None:
        return
    if hasattr(module, "set_rng_states"):
        module.set_rng_states(state)
    else:
        module.set_rng_state(state)


def _buffers(module):
    layers = getattr(module, "layers", [module])
    return [a for layer in layers for a in layer.buffers.values()]


def _kinks(module):
    """Signature of the non-differentiable decisions of the last forward: ReLU masks and pool argmaxes.

    Read from the steps' documented saved state: ``argmax`` of a MaxPool2d or a
    fused BN-ReLU-pool step, and ``output > 0`` of a ReLU or a fused step (its
    pooled output), over ``Sequential.last_steps`` (or the layer itself).
    """
    steps = getattr(module, "last_steps", None) or getattr(module, "layers", [module])
    sig = []
    for s in steps:
        a = getattr(s, "argmax", None)
        if a is not None:
            sig.append(np.array(a, copy=True))
        out = getattr(s, "output", None)  # ReLU output, or the fused block's pooled output
        if out is not None:
            sig.append(np.asarray(out) > 0)
    return sig


def _same(a, b):
    return len(a) == len(b) and all(u.shape == v.shape and np.array_equal(u, v) for u, v in zip(a, b))


def gradcheck(module, x, seed=0, h=1e-6, max_checks=30, check_input=True):
    """Compare ``module``'s backward with central finite differences.

    Parameters
    ----------
    module : engine.layers.Layer or engine.model.Sequential
        In float64 (``module.astype(np.float64)``).
    x : np.ndarray [dtype=float64]
        Input; small shapes keep this fast.
    seed : int
        Seeds the upstream gradient and the choice of checked elements.
    h : float > 0
        Finite-difference step.
    max_checks : int > 0
        At most this many randomly chosen elements per tensor are perturbed
        (all of them when the tensor is smaller).
    check_input : bool
        Also check the gradient with respect to ``x`` (Sequential needs
        ``input_grad=True``).

    Returns
    -------
    GradcheckResult
        A mapping ``{param_name: rel_error, ..., "input": rel_error}``.
        Elements whose perturbation flips a ReLU mask or a max-pool argmax (a
        kink or a tie crossed) are left out; ``result.skipped`` holds their
        count per tensor.

    Raises
    ------
    ValueError
        If ``x`` or a parameter is not float64.
    """
    x = np.ascontiguousarray(x)
    if x.dtype != np.float64:
        raise ValueError(f"gradcheck needs a float64 input, got {x.dtype} (shape {x.shape})")
    params = _params(module)
    for n, p, _ in params:
        if p.dtype != np.float64:
            raise ValueError(f"gradcheck needs float64 parameters; {n} is {p.dtype}: call module.astype(np.float64)")
    rng = np.random.default_rng(seed)
    rng0 = _rng_get(module)
    bufs = [b.copy() for b in _buffers(module)]

    def out(xx):
        _rng_set(module, rng0)
        return np.array(module.forward(xx), dtype=np.float64, copy=True)

    _rng_set(module, rng0)
    y = module.forward(x)
    dy = rng.standard_normal(y.shape)
    module.zero_grad()
    _rng_set(module, rng0)
    module.forward(x)
    base = _kinks(module)
    dx = module.backward(dy.copy())
    dx = None if dx is None else np.array(dx, copy=True)
    analytic = {n: np.array(g, copy=True) for n, _, g in params}

    def numeric(arr, idx):
        res = np.full(len(idx), np.nan)
        flat = arr.reshape(-1)
        for k, i in enumerate(idx):
            old = flat[i]
            flat[i] = old + h
            yp = out(x)
            ok = _same(_kinks(module), base)
            flat[i] = old - h
            ym = out(x)
            ok = ok and _same(_kinks(module), base)
            flat[i] = old
            if ok:  # differences first: less cancellation than L+ - L-
                res[k] = np.sum((yp - ym) * dy) / (2 * h)
        return res

    result = GradcheckResult()

    def compare(name, a, n):
        keep = ~np.isnan(n)
        result.skipped[name] = int((~keep).sum())
        return rel_error(a[keep], n[keep])

    for n, p, _ in params:
        idx = np.arange(p.size) if p.size <= max_checks else rng.choice(p.size, max_checks, replace=False)
        result.errors[n] = compare(n, analytic[n].reshape(-1)[idx], numeric(p, idx))
    if check_input:
        if dx is None:
            raise ValueError("gradcheck: the module returned no input gradient (set input_grad=True)")
        idx = np.arange(x.size) if x.size <= max_checks else rng.choice(x.size, max_checks, replace=False)
        result.errors["input"] = compare("input", dx.reshape(-1)[idx], numeric(x, idx))
    for b, saved in zip(_buffers(module), bufs):
        b[...] = saved
    _rng_set(module, rng0)
    return result
