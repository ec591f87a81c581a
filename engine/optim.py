"""Adam optimiser (PyTorch ``torch.optim.Adam``): one fused backend kernel for all parameters, or one per tensor.

Update rule (amsgrad=False; ``weight_decay`` is L2, added to the gradient)::

    t += 1
    g = grad + weight_decay * param
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g**2
    param -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

Reference: https://pytorch.org/docs/stable/generated/torch.optim.Adam.html
The moments are allocated at construction (zeros, same dtype and device as
the parameter) and saved with the step count by :meth:`Adam.state_dict`.

Launches: when the parameters' backend has ``adam.adam_update_multi`` (the
GPU) and all parameters share that backend and one dtype, :meth:`Adam.step`
updates every tensor in one kernel launch; otherwise (the CPU) it calls
``adam.adam_update`` once per tensor. Both run the same elementwise
expression, so the results are bit-identical.
"""
from __future__ import annotations

import numpy as np

import kernels

__all__ = ["Adam"]




class Adam:
    """Adam over a list of ``(name, param, grad)`` (e.g. ``model.parameters()``) or a model.

    Parameters
    ----------
    parameters : list of (str, array, array) or object with ``parameters()``
        Parameters are updated in place; ``grad`` arrays are read.
    lr : float > 0
        Learning rate (default 5e-4).
    betas : (float, float) in [0, 1)
        Decay rates of the first and second moments.
    eps : float > 0
        Added to the bias-corrected ``sqrt(v)``.
    weight_decay : float >= 0
        L2 penalty added to the gradient (plain Adam when 0).

    Raises
    ------
    ValueError
        On invalid hyper-parameters or duplicated parameter names.
    """

    def __init__(self, parameters, lr=5e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        if hasattr(parameters, "parameters"):
            parameters = parameters.parameters()
        parameters = list(parameters)
        if not lr > 0 or not eps > 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Adam: need lr > 0, eps > 0, weight_decay >= 0, 0 <= betas < 1; got lr={lr}, "
                             f"betas={betas}, eps={eps}, weight_decay={weight_decay}")
        names = [n for n, _, _ in parameters]
        if len(set(names)) != len(names):
            raise ValueError(f"Adam: duplicated parameter names in {names}")
        self.lr, self.betas, self.eps, self.weight_decay = float(lr), tuple(map(float, betas)), float(eps), float(weight_decay)
        self.params = parameters
        self.step_count = 0
        self.m = {}
        self.v = {}
        for n, p, _ in parameters:
            xp = kernels.backend_for(p).xp
            self.m[n] = xp.zeros_like(p)
            self.v[n] = xp.zeros_like(p)

    def _multi(self):
        """``(adam_update_multi, params, grads, ms, vs)`` when one launch can update everything, else None."""
        if not self.params:
            return None
        p0 = self.params[0][1]
        fn = getattr(kernels.backend_for(p0).adam, "adam_update_multi", None)
        if fn is None:
            return None
        dev = kernels.device_of(p0)
        for n, p, g in self.params:
            if kernels.device_of(p) != dev or p.dtype != p0.dtype:
                return None
        return (fn, [p for _, p, _ in self.params], [g for _, _, g in self.params],
                [self.m[n] for n, _, _ in self.params], [self.v[n] for n, _, _ in self.params])

    def step(self):
        """Apply one update to every parameter from its current gradient (one launch when the backend allows)."""
        self.step_count += 1
        b1, b2 = self.betas
        if not hasattr(self, "_multi_args"):  # the arrays never change identity (moments are loaded in place)
            self._multi_args = self._multi()
        if self._multi_args is not None:
            fn, ps, gs, ms, vs = self._multi_args
            fn(ps, gs, ms, vs, self.step_count, self.lr, b1, b2, self.eps, self.weight_decay)
            return
        for n, p, g in self.params:
            kernels.backend_for(p).adam.adam_update(p, g, self.m[n], self.v[n], self.step_count, self.lr, b1, b2,
                                                    self.eps, self.weight_decay)

    def zero_grad(self):
        """Zero every parameter gradient (large CPU arrays over Numba's threads)."""
        from engine.layers.base import _zero

        for _, _, g in self.params:
            _zero(g)

    def state_dict(self):
        """``{"step": int, "lr", "betas", "eps", "weight_decay", "m": {name: array}, "v": {name: array}}`` (NumPy copies)."""
        return {
            "step": self.step_count, "lr": self.lr, "betas": list(self.betas), "eps": self.eps,
            "weight_decay": self.weight_decay,
            "m": {n: np.array(kernels.to_host(a), copy=True) for n, a in self.m.items()},
            "v": {n: np.array(kernels.to_host(a), copy=True) for n, a in self.v.items()},
        }

    def load_state_dict(self, state):
        """Restore a :meth:`state_dict` (moments copied in place, step count and hyper-parameters).

        Raises
        ------
        ValueError
            On missing/unexpected parameter names or shape mismatches.
        """
        for key in ("m", "v"):
            got, want = set(state[key]), set(self.m)
            if got != want:
                raise ValueError(f"Adam.load_state_dict: {key} has names {sorted(got - want)} not in the optimizer, "
                                 f"missing {sorted(want - got)}")
            for n, a in state[key].items():
                if tuple(np.shape(a)) != tuple(self.m[n].shape):
                    raise ValueError(f"Adam.load_state_dict: {key}[{n}] has shape {tuple(np.shape(a))}, "
                                     f"expected {tuple(self.m[n].shape)}")
        for key, dst in (("m", self.m), ("v", self.v)):
            for n, a in state[key].items():
                xp = kernels.backend_for(dst[n]).xp
                dst[n][...] = xp.asarray(np.asarray(kernels.to_host(a), dtype=dst[n].dtype))
        self.step_count = int(state["step"])
        self.lr = float(state.get("lr", self.lr))
        self.betas = tuple(float(b) for b in state.get("betas", self.betas))
        self.eps = float(state.get("eps", self.eps))
        self.weight_decay = float(state.get("weight_decay", self.weight_decay))
