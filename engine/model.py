"""``Sequential``: a chain of layers with forward, backward, modes, parameters, state and a summary.

Execution plan: when ``fuse=True`` (default) every ``BatchNorm2d -> ReLU ->
MaxPool2d(k, stride=k)`` run is executed by the backend's fused kernel
(``kernels.<backend>.fused``, one pass each way over the big activations)
if the backend provides one, otherwise layer by layer. Both paths give the
same result (the forward bit for bit; the backward up to float64 rounding of
the BatchNorm sums) and are tested against each other. The layer objects,
their ``params``/``grads``/``buffers`` and ``state_dict`` names are the same
either way. Names follow PyTorch's ``nn.Sequential``: ``"<index>.<key>"``.
"""
from __future__ import annotations

import numpy as np

import kernels

from .layers import BatchNorm2d, Dropout, Layer, MaxPool2d, ReLU

__all__ = ["Sequential", "FusedBNReLUPool"]


class FusedBNReLUPool:
    """One step of a :class:`Sequential` plan: ``BatchNorm2d -> ReLU -> MaxPool2d(k, k)`` through the fused op.

    Op ``fused``: kernels ``bn_relu_pool_forward_train``, ``bn_relu_pool_forward_eval``,
    ``bn_relu_pool_backward`` (``kernels/{cpu,gpu}/fused.py``; the split steps with ``bn.sync``);
    reference :mod:`engine.reference.fused`. The three layers keep their parameters, gradients
    and buffers; their outputs land in the layers' own buffers (``pool``'s ``out`` and ``argmax``,
    ``bn``'s ``save_mean`` / ``save_invstd`` / ``dx``), through their public :meth:`Layer.buffer`.

    Attributes
    ----------
    bn, relu, pool : BatchNorm2d, ReLU, MaxPool2d
    saved_input : array [shape=(N, C, H, W)] or None
        The last training-mode forward's input (None after an eval forward).
    save_mean, save_invstd : array [shape=(C,), dtype=float64] or None
        That forward's batch statistics (also ``bn.save_mean`` / ``bn.save_invstd``).
    argmax : array [shape=(N, C, OH, OW), dtype=int32] or None
        The last forward's pooling argmax.
    output : array [shape=(N, C, OH, OW)] or None
        The last forward's pooled output.
    """

    def __init__(self, bn, relu, pool):
        self.bn, self.relu, self.pool = bn, relu, pool
        self.saved_input = self.save_mean = self.save_invstd = self.argmax = self.output = None

    @staticmethod
    def module_for(x):
        """The fused op of the backend that holds ``x`` (``kernels.<backend>.fused``; both backends have it)."""
        return kernels.backend_for(x).fused

    def forward(self, x):
        """``(N, C, H, W) -> (N, C, OH, OW)``: normalise (batch or running statistics), rectify, pool."""
        bn, pool = self.bn, self.pool
        bn.check_input(x, bn.num_features)
        kb = kernels.backend_for(x)
        shape = pool.output_shape(x.shape)
        out = pool.buffer("out", shape, x.dtype, kb.xp)
        argmax = pool.buffer("argmax", shape, np.int32, kb.xp)
        p, b = bn.params, bn.buffers
        fz = self.module_for(x)
        if bn.training:
            mean = bn.buffer("save_mean", (bn.num_features,), np.float64, kb.xp)
            invstd = bn.buffer("save_invstd", (bn.num_features,), np.float64, kb.xp)
            if bn.sync is not None:  # statistics summed over MPI ranks (engine.distributed)
                bn.sync.fused_forward(bn, kb, fz, x, out, argmax, pool.kernel_size)
            else:
                fz.bn_relu_pool_forward_train(out, argmax, mean, invstd, x, p["weight"], p["bias"],
                                              b["running_mean"], b["running_var"], bn.momentum, bn.eps,
                                              pool.kernel_size)
            self.saved_input, self.save_mean, self.save_invstd = x, mean, invstd
            bn.save_mean, bn.save_invstd = mean, invstd
        else:
            fz.bn_relu_pool_forward_eval(out, argmax, x, p["weight"], p["bias"], b["running_mean"],
                                         b["running_var"], bn.eps, pool.kernel_size)
            self.saved_input = None
        self.argmax, self.output = argmax, out
        return out

    def backward(self, dy):
        """Accumulate ``bn``'s gradients; return dx ``(N, C, H, W)``. Only after a training-mode forward."""
        if self.saved_input is None:
            raise ValueError("fused BatchNorm2d/ReLU/MaxPool2d backward needs a preceding training-mode forward")
        x, bn = self.saved_input, self.bn
        bn.check_grad(dy, self.pool.output_shape(x.shape))
        kb = kernels.backend_for(x)
        dx = bn.buffer("dx", x.shape, x.dtype, kb.xp)
        if bn.sync is not None:
            bn.sync.fused_backward(bn, kb, self.module_for(x), dy, self.argmax, x, self.save_mean, self.save_invstd,
                                   dx, self.pool.kernel_size)
            return dx
        self.module_for(x).bn_relu_pool_backward(dx, bn.grads["weight"], bn.grads["bias"], dy, self.argmax, x,
                                                 self.save_mean, self.save_invstd, bn.params["weight"],
                                                 bn.params["bias"], self.pool.kernel_size, out=self.output)
        return dx


class Sequential:
    """A chain of layers run in order (PyTorch ``torch.nn.Sequential`` semantics).

    Parameters
    ----------
    layers : list of engine.layers.Layer
    fuse : bool
        Run ``BatchNorm2d -> ReLU -> MaxPool2d(k, stride=k)`` through the fused
        kernel when the backend has one (see the module docstring).
    input_grad : bool
        Whether :meth:`backward` computes the gradient with respect to the
        model input. Training never needs it, so :func:`engine.models.build`
        sets it to False and ``backward`` then returns None; gradient checks
        set it to True.

    Attributes
    ----------
    layers : list of engine.layers.Layer
    last_steps : list or None
        The steps the last :meth:`forward` ran, in order: the layers, with a
        :class:`FusedBNReLUPool` in place of each fused triple; :meth:`backward`
        runs them in reverse. None before the first forward (and after :meth:`to`).

    Raises
    ------
    ValueError
        If an element of ``layers`` is not a Layer.
    """

    def __init__(self, layers, fuse=True, input_grad=True):
        layers = list(layers)
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise ValueError(f"Sequential: element {i} is {type(layer).__name__}, not an engine Layer")
        self.layers = layers
        self.fuse = bool(fuse)
        self.input_grad = bool(input_grad)
        self.training = True
        self.last_steps = None
        self._plans = {}

    # -- execution ------------------------------------------------------------
    def _plan(self, x):
        """Steps to run for input ``x``: layers, with fusable triples replaced when the backend allows."""
        fused_ok = self.fuse and FusedBNReLUPool.module_for(x) is not None
        key = (fused_ok, self.input_grad)
        plan = self._plans.get(key)
        if plan is None:
            plan, i, L = [], 0, self.layers
            while i < len(L):
                if (fused_ok and i + 2 < len(L) and isinstance(L[i], BatchNorm2d) and isinstance(L[i + 1], ReLU)
                        and isinstance(L[i + 2], MaxPool2d) and L[i + 2].kernel_size == L[i + 2].stride):
                    plan.append(FusedBNReLUPool(L[i], L[i + 1], L[i + 2]))
                    i += 3
                else:
                    plan.append(L[i])
                    i += 1
            self._plans[key] = plan
        return plan

    def forward(self, x, trace=None):
        """Run every layer on ``x``; returns the last output (a reused buffer: copy it to keep it).

        Parameters
        ----------
        x : array [shape=(N, C, H, W)]
        trace : callable or None
            ``trace(index, step, output)`` is called after each step (``index``
            into :attr:`last_steps`; with ``fuse=False`` the steps are the
            layers), while ``output`` is still that step's result
            (``engine.inspect`` reads each layer's activations so).
        """
        self.last_steps = plan = self._plan(x)
        for i, step in enumerate(plan):
            if hasattr(step, "input_grad"):
                step.input_grad = self.input_grad or i > 0
            x = step.forward(x)
            if trace is not None:
                trace(i, step, x)
        return x

    def backward(self, dy):
        """Backpropagate ``dy`` (gradient of the loss w.r.t. the output); parameter grads accumulate.

        Returns
        -------
        dx : array or None
            Gradient with respect to the model input, or None when ``input_grad`` is False.

        Raises
        ------
        ValueError
            If called before :meth:`forward`.
        """
        plan = self.last_steps
        if plan is None:
            raise ValueError("Sequential.backward called before forward")
        for step in reversed(plan):
            dy = step.backward(dy)
            if dy is None:
                break
        return dy

    __call__ = forward

    # -- modes and parameters ---------------------------------------------------
    def train(self, mode=True):
        """Set every layer to training mode (or eval when ``mode`` is False); returns self."""
        self.training = bool(mode)
        for layer in self.layers:
            layer.train(mode)
        return self

    def eval(self):
        """Set every layer to eval mode; returns self."""
        return self.train(False)

    def parameters(self):
        """List of ``(name, param, grad)`` in layer order, names ``"<index>.<key>"`` (PyTorch)."""
        return [(f"{i}.{k}", p, layer.grads[k]) for i, layer in enumerate(self.layers) for k, p in layer.params.items()]

    def zero_grad(self):
        """Zero every parameter gradient."""
        for layer in self.layers:
            layer.zero_grad()

    def num_params(self):
        """Total number of scalar parameters."""
        return sum(layer.num_params() for layer in self.layers)

    # -- state ------------------------------------------------------------------
    def state_dict(self):
        """Copies (NumPy) of every parameter and buffer: ``{"<i>.weight": ..., "<i>.running_mean": ...}``."""
        sd = {}
        for i, layer in enumerate(self.layers):
            for d in (layer.params, layer.buffers):
                for k, a in d.items():
                    sd[f"{i}.{k}"] = np.array(kernels.to_host(a), copy=True)
        return sd

    def load_state_dict(self, state):
        """Copy ``state`` (from :meth:`state_dict`) into the model in place.

        Raises
        ------
        ValueError
            On missing or unexpected keys, or a shape mismatch (naming the key and both shapes).
        """
        want = {}
        for i, layer in enumerate(self.layers):
            for d in (layer.params, layer.buffers):
                for k, a in d.items():
                    want[f"{i}.{k}"] = (d, k, a)
        missing = sorted(set(want) - set(state))
        extra = sorted(set(state) - set(want))
        if missing or extra:
            raise ValueError(f"load_state_dict: missing keys {missing}, unexpected keys {extra}")
        for name, (d, k, a) in want.items():
            v = np.asarray(kernels.to_host(state[name]))
            if tuple(v.shape) != tuple(a.shape):
                raise ValueError(f"load_state_dict: {name} has shape {tuple(v.shape)}, the model expects {tuple(a.shape)}")
        for name, (d, k, a) in want.items():
            xp = kernels.backend_for(a).xp
            a[...] = xp.asarray(np.asarray(kernels.to_host(state[name]), dtype=a.dtype))

    def rng_states(self):
        """``{"<i>": state}`` of every Dropout layer's generator (JSON-serialisable)."""
        return {str(i): layer.rng_state() for i, layer in enumerate(self.layers) if isinstance(layer, Dropout)}

    def set_rng_states(self, states):
        """Restore generator states from :meth:`rng_states`; ValueError on a layer mismatch."""
        have = {str(i) for i, layer in enumerate(self.layers) if isinstance(layer, Dropout)}
        if set(states) != have:
            raise ValueError(f"set_rng_states: states for layers {sorted(states)}, model has Dropout at {sorted(have)}")
        for k, s in states.items():
            self.layers[int(k)].set_rng_state(s)

    # -- conversions ----------------------------------------------------------------
    def astype(self, dtype):
        """Convert every layer to ``dtype`` (float32 or float64, e.g. float64 for gradient checks); returns self."""
        for layer in self.layers:
            layer.astype(dtype)
        return self

    def to(self, device):
        """Move parameters, gradients and buffers to ``device`` ('cpu' or 'gpu', via :func:`kernels.get_backend`).

        Create the optimizer after moving the model (it holds references to the arrays).
        """
        kernels.get_backend(device)
        for layer in self.layers:
            layer.to(device)
        self._plans.clear()
        self.last_steps = None
        return self

    # -- summary ----------------------------------------------------------------
    def summary(self, in_shape):
        """A text table of layer, output shape and parameter count for an input of shape ``in_shape``.

        Parameters
        ----------
        in_shape : tuple (C, H, W) or (N, C, H, W)
            Without a batch dimension the batch size is written as ``N``.

        Returns
        -------
        str
        """
        shape = tuple(in_shape)
        batched = len(shape) == 4
        if not batched:
            shape = (1,) + shape
        rows = [("input", shape, 0)]
        for i, layer in enumerate(self.layers):
            shape = layer.output_shape(shape)
            rows.append((f"{i}: {layer!r}", shape, layer.num_params()))

        def fmt(s):
            return "(" + ", ".join(["N" if (j == 0 and not batched) else str(v) for j, v in enumerate(s)]) + ")"

        w0 = max(len(r[0]) for r in rows)
        w1 = max(len(fmt(r[1])) for r in rows)
        lines = [f"{'layer':<{w0}}  {'output shape':<{w1}}  {'params':>10}", "-" * (w0 + w1 + 14)]
        lines += [f"{a:<{w0}}  {fmt(b):<{w1}}  {c:>10,}" for a, b, c in rows]
        lines += ["-" * (w0 + w1 + 14), f"{'total':<{w0}}  {'':<{w1}}  {self.num_params():>10,}"]
        return "\n".join(lines)

    def __repr__(self):
        return "Sequential(\n" + "\n".join(f"  ({i}): {layer!r}" for i, layer in enumerate(self.layers)) + "\n)"
