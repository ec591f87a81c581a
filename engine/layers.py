"""Layers of hitcnn: Conv2d, BatchNorm2d, ReLU, MaxPool2d, Dropout, Flatten, Linear.

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
from __future__ import annotations

import numpy as np

import kernels
from kernels.shapes import conv2d_output_size, maxpool2d_output_size

__all__ = ["Layer", "Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "Dropout", "Flatten", "Linear", "workspace_for"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_WORKSPACES = {}


def workspace_for(device):
    """The :class:`kernels.Workspace` shared by all layers on ``device`` ('cpu' or 'gpu').

    Layers run one at a time and the conv kernels never keep scratch contents
    between calls, so one workspace per device is enough and bounds the
    scratch memory to the largest single layer's need.
    """
    ws = _WORKSPACES.get(device)
    if ws is None:
        ws = _WORKSPACES[device] = kernels.Workspace()
    return ws


def _as_rng(rng):
    """A numpy Generator from a seed (int/None) or a Generator (returned as is)."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def _to_numpy(a):
    return a.get() if not isinstance(a, np.ndarray) and hasattr(a, "get") else np.asarray(a)


def cached_buffer(cache, name, shape, dtype, xp):
    """Return ``cache``'s buffer for ``(name, shape, dtype, array module)``, allocating it once.

    Layers and the loss keep their outputs and gradients in such buffers, so
    a training step after warm-up allocates nothing proportional to the
    activations. Contents are whatever the last user left.
    """
    key = (name, tuple(shape), np.dtype(dtype).str, xp.__name__)
    b = cache.get(key)
    if b is None:
        b = cache[key] = xp.empty(shape, dtype=dtype)
    return b


class Layer:
    """Base class: parameter/grad/buffer bookkeeping, train/eval, cached buffers, dtype and device moves."""

    def __init__(self):
        self.params = {}
        self.grads = {}
        self.buffers = {}
        self.training = True
        self._cache = {}

    # -- modes ----------------------------------------------------------------
    def train(self, mode=True):
        """Set training mode (``mode=True``) or eval mode; returns self."""
        self.training = bool(mode)
        return self

    def eval(self):
        """Set eval mode; returns self."""
        return self.train(False)

    def zero_grad(self):
        """Set every parameter gradient to zero (in place)."""
        for g in self.grads.values():
            g.fill(0)

    def __call__(self, x):
        return self.forward(x)

    # -- buffers and checks -------------------------------------------------------
    def buffer(self, name, shape, dtype, xp):
        """The layer's cached buffer ``name`` of ``shape`` and ``dtype`` on array module ``xp``.

        Allocated once per (name, shape, dtype, module) and reused by every later call, so its
        contents are whatever the last user wrote. Used by the layer itself and by code that runs
        the layer's op in its place (``engine.model``'s fused block, ``engine.distributed``'s
        SyncBatchNorm), so outputs land in the same buffers either way.
        """
        return cached_buffer(self._cache, name, shape, dtype, xp)

    def _param_dtype(self):
        for p in self.params.values():
            return p.dtype
        return None

    def _check_dtype(self, x):
        if x.dtype not in _FLOATS:
            raise ValueError(f"{type(self).__name__}: input must be float32 or float64, got {x.dtype} (shape {x.shape})")
        pd = self._param_dtype()
        if pd is not None and x.dtype != pd:
            raise ValueError(
                f"{type(self).__name__}: input dtype {x.dtype} (shape {x.shape}) does not match the parameters' "
                f"{pd}; convert the model with .astype({x.dtype})"
            )

    def check_input(self, x, channels=None):
        """Raise ValueError (naming the layer and the shape) unless ``x`` is a C-contiguous float32/float64
        ``(N, channels, H, W)`` array of the parameters' dtype (any ``C`` when ``channels`` is None)."""
        if x.ndim != 4:
            want = f"(N, {channels}, H, W)" if channels is not None else "(N, C, H, W)"
            raise ValueError(f"{type(self).__name__}: expected a 4-D input {want}, got shape {x.shape}")
        if channels is not None and x.shape[1] != channels:
            raise ValueError(
                f"{type(self).__name__}: expected input shape (N, {channels}, H, W), got {x.shape} "
                f"({x.shape[1]} channels)"
            )
        self._check_dtype(x)
        if not x.flags.c_contiguous:
            raise ValueError(f"{type(self).__name__}: input of shape {x.shape} must be C-contiguous")

    def _need_forward(self, attr):
        if getattr(self, attr, None) is None:
            raise ValueError(f"{type(self).__name__}.backward called before forward")

    def check_grad(self, dy, shape):
        """Raise ValueError (naming the layer) unless the upstream gradient ``dy`` is C-contiguous of ``shape``."""
        if tuple(dy.shape) != tuple(shape):
            raise ValueError(f"{type(self).__name__}.backward: expected gradient of shape {tuple(shape)}, got {dy.shape}")
        if not dy.flags.c_contiguous:
            raise ValueError(f"{type(self).__name__}.backward: gradient of shape {dy.shape} must be C-contiguous")

    # -- conversions ----------------------------------------------------------------
    def _map_arrays(self, fn):
        for d in (self.params, self.grads, self.buffers):
            for k in list(d):
                d[k] = fn(d[k])
        self._cache.clear()

    def astype(self, dtype):
        """Convert parameters, gradients and buffers to ``dtype`` (float32 or float64); returns self."""
        dtype = np.dtype(dtype)
        if dtype not in _FLOATS:
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        self._map_arrays(lambda a: a.astype(dtype))
        return self

    def to(self, device):
        """Move parameters, gradients and buffers to ``device`` ('cpu' or 'gpu'); returns self."""
        xp = kernels.get_backend(device).xp
        if device == "cpu":
            self._map_arrays(lambda a: np.ascontiguousarray(_to_numpy(a)))
        else:
            self._map_arrays(lambda a: xp.ascontiguousarray(xp.asarray(a)))
        return self

    def output_shape(self, in_shape):
        """Shape of the output for an input of shape ``in_shape`` (no computation)."""
        return tuple(in_shape)

    def num_params(self):
        """Number of scalar parameters."""
        return int(sum(int(np.prod(p.shape)) for p in self.params.values()))

    def extra_repr(self):
        return ""

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"


class Conv2d(Layer):
    """2-D convolution (cross-correlation), PyTorch ``torch.nn.Conv2d`` with square kernel, no dilation/groups.

    Op ``conv2d``: kernels ``conv2d_forward``, ``conv2d_backward_input``,
    ``conv2d_backward_weight`` (``kernels/{cpu,gpu}/conv2d.py``); reference
    :mod:`engine.reference.conv2d`.

    Parameters
    ----------
    in_channels, out_channels : int > 0
    kernel_size : int > 0
        Square kernel ``KH = KW = kernel_size``.
    stride : int > 0
    padding : int >= 0
        Zero padding on each side; ``OH = (H + 2*padding - KH)//stride + 1``.
    rng : int, None or numpy.random.Generator
        Seed or generator for the initialisation.
    dtype : float32 (default) or float64

    Notes
    -----
    Initialisation: He-normal (He et al. 2015), ``weight ~ N(0, 2/(in_channels*KH*KW))``;
    bias 0. ``weight (F, C, KH, KW)``, ``bias (F,)``.
    ``input_grad = False`` skips the gradient with respect to the input (the
    model's first layer does not need it); ``backward`` then returns None.

    Attributes
    ----------
    saved_input : array [shape=(N, C, H, W)] or None
        The last forward's input (the caller's array, not a copy), read by ``backward``.
    """

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=1, rng=None, dtype=np.float32):
        super().__init__()
        for name, v, lo in (("in_channels", in_channels, 1), ("out_channels", out_channels, 1),
                            ("kernel_size", kernel_size, 1), ("stride", stride, 1), ("padding", padding, 0)):
            if int(v) != v or v < lo:
                raise ValueError(f"Conv2d: {name} must be an integer >= {lo}, got {v!r}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride, self.padding = int(kernel_size), int(stride), int(padding)
        k = self.kernel_size
        std = np.sqrt(2.0 / (self.in_channels * k * k))
        w = _as_rng(rng).standard_normal((self.out_channels, self.in_channels, k, k)) * std
        self.params = {"weight": w.astype(dtype), "bias": np.zeros(self.out_channels, dtype)}
        self.grads = {n: np.zeros_like(p) for n, p in self.params.items()}
        self.input_grad = True
        self.saved_input = None

    def output_shape(self, in_shape):
        n, c, h, w = in_shape
        k = self.kernel_size
        try:
            oh, ow = conv2d_output_size(h, w, k, k, self.stride, self.padding)
        except ValueError:
            raise ValueError(f"Conv2d: input shape {tuple(in_shape)} too small for kernel {self.kernel_size} "
                             f"with padding {self.padding}") from None
        return (n, self.out_channels, oh, ow)

    def forward(self, x):
        """``(N, C, H, W) -> (N, F, OH, OW)``; raises ValueError on a wrong rank, channel count or dtype."""
        self.check_input(x, self.in_channels)
        kb = kernels.backend_for(x)
        out = self.buffer("out", self.output_shape(x.shape), x.dtype, kb.xp)
        p = self.params
        # eval mode: each image's output independent of the rest of the batch (issue 10, item 19)
        kb.conv2d.conv2d_forward(out, x, p["weight"], p["bias"], self.stride, self.padding,
                                 workspace_for(kernels.device_of(x)), batch_invariant=not self.training)
        self.saved_input = x
        return out

    def backward(self, dy):
        """Accumulate ``grads['weight']``, ``grads['bias']``; return dx ``(N, C, H, W)`` (None if ``input_grad`` is False)."""
        self._need_forward("saved_input")
        x = self.saved_input
        self.check_grad(dy, self.output_shape(x.shape))
        kb = kernels.backend_for(x)
        ws = workspace_for(kernels.device_of(x))
        kb.conv2d.conv2d_backward_weight(self.grads["weight"], self.grads["bias"], dy, x, self.stride, self.padding, ws)
        if not self.input_grad:
            return None
        dx = self.buffer("dx", x.shape, x.dtype, kb.xp)
        kb.conv2d.conv2d_backward_input(dx, dy, self.params["weight"], self.stride, self.padding, ws)
        return dx

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")


class BatchNorm2d(Layer):
    """Batch normalisation over ``(N, H, W)`` per channel, PyTorch ``torch.nn.BatchNorm2d``.

    Op ``batchnorm``: kernels ``batchnorm_forward_train``, ``batchnorm_forward_eval``,
    ``batchnorm_backward`` (``kernels/{cpu,gpu}/batchnorm.py``; the split steps with
    :attr:`sync`); reference :mod:`engine.reference.batchnorm`.

    Parameters
    ----------
    num_features : int > 0
        Channels ``C``.
    momentum : float in [0, 1]
        ``running = (1 - momentum)*running + momentum*batch_stat``.
    eps : float > 0
        Added to the variance.
    dtype : float32 (default) or float64

    Notes
    -----
    Training normalises with the biased batch variance and updates
    ``running_var`` with the unbiased one; eval uses the running statistics and
    never changes them. ``params``: ``weight`` (gamma, init 1), ``bias`` (beta,
    init 0); ``buffers``: ``running_mean`` (init 0), ``running_var`` (init 1).

    Attributes
    ----------
    saved_input : array [shape=(N, C, H, W)] or None
        The last training-mode forward's input (None after an eval forward: no backward then).
    save_mean, save_invstd : array [shape=(C,), dtype=float64] or None
        That forward's batch mean and ``1/sqrt(var + eps)`` (the kernels' ``save_*`` buffers).
    sync : engine.distributed.SyncBatchNorm or None
        Set by data-parallel training: batch statistics summed over MPI ranks.
    """

    def __init__(self, num_features, momentum=0.1, eps=1e-5, dtype=np.float32):
        super().__init__()
        if int(num_features) != num_features or num_features < 1:
            raise ValueError(f"BatchNorm2d: num_features must be a positive integer, got {num_features!r}")
        if not 0.0 <= momentum <= 1.0 or not eps > 0:
            raise ValueError(f"BatchNorm2d: need 0 <= momentum <= 1 and eps > 0, got {momentum}, {eps}")
        c = self.num_features = int(num_features)
        self.momentum, self.eps = float(momentum), float(eps)
        self.params = {"weight": np.ones(c, dtype), "bias": np.zeros(c, dtype)}
        self.grads = {n: np.zeros_like(p) for n, p in self.params.items()}
        self.buffers = {"running_mean": np.zeros(c, dtype), "running_var": np.ones(c, dtype)}
        self.saved_input = None
        self.save_mean = self.save_invstd = None
        self.sync = None  # engine.distributed.SyncBatchNorm: batch statistics summed over MPI ranks

    def forward(self, x):
        """``(N, C, H, W) -> (N, C, H, W)``; training mode needs ``N*H*W >= 2``."""
        self.check_input(x, self.num_features)
        kb = kernels.backend_for(x)
        out = self.buffer("out", x.shape, x.dtype, kb.xp)
        p, b = self.params, self.buffers
        if self.training:
            self.save_mean = self.buffer("save_mean", (self.num_features,), np.float64, kb.xp)
            self.save_invstd = self.buffer("save_invstd", (self.num_features,), np.float64, kb.xp)
            if self.sync is not None:
                self.sync.bn_forward(self, kb, x, out)
            else:
                kb.batchnorm.batchnorm_forward_train(out, self.save_mean, self.save_invstd, x, p["weight"], p["bias"],
                                                     b["running_mean"], b["running_var"], self.momentum, self.eps)
            self.saved_input = x
        else:
            kb.batchnorm.batchnorm_forward_eval(out, x, p["weight"], p["bias"], b["running_mean"],
                                                b["running_var"], self.eps)
            self.saved_input = None
        return out

    def backward(self, dy):
        """Accumulate ``grads``; return dx. Only after a training-mode forward (batch statistics)."""
        if self.saved_input is None:
            raise ValueError("BatchNorm2d.backward needs a preceding forward in training mode")
        x = self.saved_input
        self.check_grad(dy, x.shape)
        kb = kernels.backend_for(x)
        dx = self.buffer("dx", x.shape, x.dtype, kb.xp)
        if self.sync is not None:
            self.sync.bn_backward(self, kb, dy, x, dx)
            return dx
        kb.batchnorm.batchnorm_backward(dx, self.grads["weight"], self.grads["bias"], dy, x, self.save_mean,
                                        self.save_invstd, self.params["weight"])
        return dx

    def extra_repr(self):
        return f"{self.num_features}, momentum={self.momentum}, eps={self.eps}"


class ReLU(Layer):
    """Rectified linear unit ``max(x, 0)`` (PyTorch ``torch.nn.ReLU``); any input shape.

    Op ``relu``: kernels ``relu_forward``, ``relu_backward`` (``kernels/{cpu,gpu}/relu.py``);
    reference :mod:`engine.reference.relu`.

    Attributes
    ----------
    output : array or None
        The last forward's output (the layer's buffer); ``backward`` masks with ``output > 0``.
    """

    def __init__(self):
        super().__init__()
        self.output = None

    def forward(self, x):
        """Elementwise ``max(x, 0)``, same shape."""
        self._check_dtype(x)
        kb = kernels.backend_for(x)
        out = self.buffer("out", x.shape, x.dtype, kb.xp)
        kb.relu.relu_forward(out, x)
        self.output = out
        return out

    def backward(self, dy):
        """``dy * (out > 0)``."""
        self._need_forward("output")
        self.check_grad(dy, self.output.shape)
        kb = kernels.backend_for(dy)
        dx = self.buffer("dx", dy.shape, dy.dtype, kb.xp)
        kb.relu.relu_backward(dx, dy, self.output)
        return dx


class MaxPool2d(Layer):
    """Max pooling, PyTorch ``torch.nn.MaxPool2d(kernel_size, stride)`` (floor mode, no padding).

    Op ``maxpool``: kernels ``maxpool2d_forward``, ``maxpool2d_backward``
    (``kernels/{cpu,gpu}/maxpool.py``); reference :mod:`engine.reference.maxpool`.

    ``OH = (H - kernel_size)//stride + 1``. On ties the gradient goes to exactly
    one input: the first maximum of the window in row-major order.

    Parameters
    ----------
    kernel_size : int > 0
    stride : int > 0 or None
        Defaults to ``kernel_size`` (PyTorch).

    Attributes
    ----------
    argmax : array [shape=(N, C, OH, OW), dtype=int32] or None
        The last forward's flat index ``h*W + w`` of each window's maximum (not set when
        ``Sequential`` ran this layer inside its fused block).
    in_shape : tuple or None
        That forward's input shape; ``in_dtype`` its dtype.
    """

    def __init__(self, kernel_size=2, stride=None):
        super().__init__()
        stride = kernel_size if stride is None else stride
        if int(kernel_size) != kernel_size or kernel_size < 1 or int(stride) != stride or stride < 1:
            raise ValueError(f"MaxPool2d: kernel_size and stride must be positive integers, got {kernel_size}, {stride}")
        self.kernel_size, self.stride = int(kernel_size), int(stride)
        self.argmax = self.in_shape = self.in_dtype = None

    def output_shape(self, in_shape):
        n, c, h, w = in_shape
        try:
            oh, ow = maxpool2d_output_size(h, w, self.kernel_size, self.stride)
        except ValueError:
            raise ValueError(f"MaxPool2d: input shape {tuple(in_shape)} smaller than the window "
                             f"{self.kernel_size}") from None
        return (n, c, oh, ow)

    def forward(self, x):
        """``(N, C, H, W) -> (N, C, OH, OW)``."""
        self.check_input(x)
        kb = kernels.backend_for(x)
        shape = self.output_shape(x.shape)
        out = self.buffer("out", shape, x.dtype, kb.xp)
        self.argmax = self.buffer("argmax", shape, np.int32, kb.xp)
        kb.maxpool.maxpool2d_forward(out, self.argmax, x, self.kernel_size, self.stride)
        self.in_shape, self.in_dtype = x.shape, x.dtype
        return out

    def backward(self, dy):
        """Gather the gradient to each window's argmax; return dx ``(N, C, H, W)``."""
        self._need_forward("in_shape")
        self.check_grad(dy, self.output_shape(self.in_shape))
        kb = kernels.backend_for(dy)
        dx = self.buffer("dx", self.in_shape, self.in_dtype, kb.xp)
        kb.maxpool.maxpool2d_backward(dx, dy, self.argmax, self.kernel_size, self.stride)
        return dx

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class Dropout(Layer):
    """Inverted dropout, PyTorch ``torch.nn.Dropout(p)``; any input shape.

    Op ``dropout``: kernels ``make_rng``, ``dropout_forward``, ``dropout_backward``
    (``kernels/{cpu,gpu}/dropout.py``); reference :mod:`engine.reference.dropout`.

    Training: each unit is kept with probability ``1 - p`` and scaled by
    ``1/(1 - p)``; eval: identity (returns ``x`` itself). The random stream is
    the backend's generator, held by the layer, one per device it has been on:
    ``Generator(PCG64(seed))`` on the CPU, a counter-based SplitMix64 stream
    (``kernels.gpu.dropout.CounterRNG``, state ``(seed, offset)``) on the GPU.
    :meth:`rng_state` / :meth:`set_rng_state` save and restore the current
    device's generator as a JSON-serialisable dict for bit-exact resume.

    Parameters
    ----------
    p : float in [0, 1)
        Drop probability.
    seed : int or None
        Seed of the layer's generators.

    Attributes
    ----------
    mask : array [dtype=uint8] or None
        The last training forward's keep mask (1 kept, 0 dropped); None after an eval or
        ``p = 0`` forward (identity).
    in_shape : tuple or None
        That forward's input shape.
    rng : generator
        The current device's generator (see :meth:`rng_state`).
    draws : callable or None
        ``engine.distributed``'s hook ``(rng, x) -> draws`` (masks a function of the global sample index).
    """

    def __init__(self, p=0.5, seed=0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = float(p)
        self.seed = seed
        self._device = "cpu"
        self.rng = kernels.get_backend("cpu").dropout.make_rng(seed)
        self._rngs = {"cpu": self.rng}  # device -> generator (kept across moves: to('gpu').to('cpu') resumes it)
        self._pending = {}  # device -> state of a generator not created yet (set_rng_state on another device)
        self.mask = None
        self.in_shape = None
        self.draws = None  # engine.distributed: (rng, x) -> the draws of this rank's rows of the global batch

    def forward(self, x):
        """Same shape as ``x``; draws ``x.size`` uniforms from the layer's generator in training mode."""
        self._check_dtype(x)
        if not self.training or self.p == 0.0:
            self.mask = None
            self.in_shape = x.shape
            return x
        kb = kernels.backend_for(x)
        out = self.buffer("out", x.shape, x.dtype, kb.xp)
        self.mask = self.buffer("mask", x.shape, np.uint8, kb.xp)
        rng = self.rng if self.draws is None else self.draws(self.rng, x)
        kb.dropout.dropout_forward(out, self.mask, x, self.p, rng)
        self.in_shape = x.shape
        return out

    def backward(self, dy):
        """``dy * mask / (1 - p)`` with the forward's mask (identity after an eval/p=0 forward)."""
        self._need_forward("in_shape")
        self.check_grad(dy, self.in_shape)
        if self.mask is None:
            return dy
        kb = kernels.backend_for(dy)
        dx = self.buffer("dx", dy.shape, dy.dtype, kb.xp)
        kb.dropout.dropout_backward(dx, dy, self.mask, self.p)
        return dx

    @staticmethod
    def _kind(rng):
        bg = getattr(rng, "bit_generator", None)
        if bg is not None:
            return type(bg).__name__  # NumPy: 'PCG64', as in bit_generator.state['bit_generator']
        st = getattr(rng, "state", None)
        return st.get("bit_generator") if isinstance(st, dict) else None

    def rng_state(self):
        """JSON-serialisable state of the current device's generator (a dict with key ``"bit_generator"``).

        CPU: NumPy's ``bit_generator.state``; GPU: ``{"bit_generator":
        "hitcnn-splitmix64-counter", "seed", "offset"}``.

        Raises
        ------
        ValueError
            If the generator exposes no serialisable state.
        """
        bg = getattr(self.rng, "bit_generator", None)
        if bg is not None:
            return bg.state
        st = getattr(self.rng, "state", None)
        if not isinstance(st, dict):
            raise ValueError(f"Dropout: cannot read the state of generator {type(self.rng).__name__}")
        return dict(st)

    def set_rng_state(self, state):
        """Restore a state returned by :meth:`rng_state`.

        A state of the other device's generator (e.g. a GPU checkpoint loaded
        into a model on the CPU) is kept and applied when the layer moves to
        that device; the current generator is left as it is.

        Raises
        ------
        ValueError
            If ``state`` is not a dict with a ``"bit_generator"`` key.
        """
        if not isinstance(state, dict) or "bit_generator" not in state:
            raise ValueError(f"Dropout.set_rng_state: expected a dict with key 'bit_generator', got {state!r}")
        if state["bit_generator"] != self._kind(self.rng):
            other = "cpu" if self._device != "cpu" else "gpu"
            if other in self._rngs and state["bit_generator"] == self._kind(self._rngs[other]):
                self._set(self._rngs[other], state)
            else:
                self._pending[other] = state
            return
        self._set(self.rng, state)

    @staticmethod
    def _set(rng, state):
        bg = getattr(rng, "bit_generator", None)
        if bg is not None:
            bg.state = state
        else:
            rng.state = state

    def to(self, device):
        """Move to ``device``; each device keeps its own generator (created on the first move, seeded with ``seed``).

        So ``to('gpu').to('cpu')`` continues the CPU stream where it was.
        """
        super().to(device)
        if device != self._device:
            rng = self._rngs.get(device)
            if rng is None:
                rng = self._rngs[device] = kernels.get_backend(device).dropout.make_rng(self.seed)
            self.rng = rng
            self._device = device
            pending = self._pending.pop(device, None)
            if pending is not None:
                self.set_rng_state(pending)
        return self

    def extra_repr(self):
        return f"p={self.p}"


class Flatten(Layer):
    """``(N, d1, d2, ...) -> (N, d1*d2*...)`` (PyTorch ``torch.nn.Flatten``); returns a view, no copy.

    No kernel (a reshape). Attribute ``in_shape``: the last forward's input shape (None before).
    """

    def __init__(self):
        super().__init__()
        self.in_shape = None

    def output_shape(self, in_shape):
        return (in_shape[0], int(np.prod(in_shape[1:])))

    def forward(self, x):
        """Reshape to ``(N, -1)``; needs a C-contiguous input of rank >= 2."""
        if x.ndim < 2:
            raise ValueError(f"Flatten: expected an input of rank >= 2 (N, ...), got shape {x.shape}")
        self._check_dtype(x)
        if not x.flags.c_contiguous:
            raise ValueError(f"Flatten: input of shape {x.shape} must be C-contiguous")
        self.in_shape = x.shape
        return x.reshape(self.output_shape(x.shape))

    def backward(self, dy):
        """Reshape the gradient back to the input shape (a view)."""
        self._need_forward("in_shape")
        self.check_grad(dy, self.output_shape(self.in_shape))
        return dy.reshape(self.in_shape)


class Linear(Layer):
    """Fully connected layer ``y = x @ weight.T + bias`` (PyTorch ``torch.nn.Linear`` layout).

    Op ``linear``: kernels ``linear_forward``, ``linear_backward_input``,
    ``linear_backward_weight`` (``kernels/{cpu,gpu}/linear.py``); reference
    :mod:`engine.reference.linear`.

    Parameters
    ----------
    in_features, out_features : int > 0
    rng : int, None or numpy.random.Generator
        Seed or generator for the initialisation.
    dtype : float32 (default) or float64

    Notes
    -----
    Initialisation (our choice, documented because PyTorch's differs): He-normal
    ``weight ~ N(0, 2/in_features)``, bias 0, the same rule as :class:`Conv2d`
    (the hidden Linear feeds a ReLU). PyTorch's default is
    ``U(-1/sqrt(in), 1/sqrt(in))`` for both weight and bias.
    ``weight (out_features, in_features)``, ``bias (out_features,)``.

    Attributes
    ----------
    saved_input : array [shape=(N, in_features)] or None
        The last forward's input (the caller's array, not a copy), read by ``backward``.
    """

    def __init__(self, in_features, out_features, rng=None, dtype=np.float32):
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if int(v) != v or v < 1:
                raise ValueError(f"Linear: {name} must be a positive integer, got {v!r}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        w = _as_rng(rng).standard_normal((self.out_features, self.in_features)) * np.sqrt(2.0 / self.in_features)
        self.params = {"weight": w.astype(dtype), "bias": np.zeros(self.out_features, dtype)}
        self.grads = {n: np.zeros_like(p) for n, p in self.params.items()}
        self.input_grad = True
        self.saved_input = None

    def output_shape(self, in_shape):
        return (in_shape[0], self.out_features)

    def forward(self, x):
        """``(N, in_features) -> (N, out_features)``; ValueError on a wrong rank, width or dtype."""
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"Linear: expected input shape (N, {self.in_features}), got {x.shape}")
        self._check_dtype(x)
        if not x.flags.c_contiguous:
            raise ValueError(f"Linear: input of shape {x.shape} must be C-contiguous")
        kb = kernels.backend_for(x)
        out = self.buffer("out", (x.shape[0], self.out_features), x.dtype, kb.xp)
        kb.linear.linear_forward(out, x, self.params["weight"], self.params["bias"], batch_invariant=not self.training,
                                 ws=workspace_for(kernels.device_of(x)))
        self.saved_input = x
        return out

    def backward(self, dy):
        """Accumulate ``grads``; return dx ``(N, in_features)`` (None if ``input_grad`` is False)."""
        self._need_forward("saved_input")
        x = self.saved_input
        self.check_grad(dy, (x.shape[0], self.out_features))
        kb = kernels.backend_for(x)
        kb.linear.linear_backward_weight(self.grads["weight"], self.grads["bias"], dy, x)
        if not self.input_grad:
            return None
        dx = self.buffer("dx", x.shape, x.dtype, kb.xp)
        kb.linear.linear_backward_input(dx, dy, self.params["weight"])
        return dx

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}"
