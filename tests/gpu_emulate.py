"""CPU emulation of the GPU backend, for machines without CUDA (tests only; never used in production).

:func:`install` puts a small NumPy-backed stand-in for CuPy into
``sys.modules['cupy']`` *before* ``kernels.gpu`` is imported. Then the real
launchers (``kernels/gpu/*.py``) run unchanged and their ``RawModule`` is
the *same CUDA C source* compiled for the host with g++: every
``extern "C" __global__`` kernel gets a wrapper that loops over the grid and
the block in C, one call per CUDA thread, with ``blockIdx`` / ``threadIdx``
set as the GPU would. GEMMs and FFTs are NumPy's (cuBLAS and cuFFT stand-ins).

What this checks without a GPU: the kernels' index arithmetic, guards and
float expressions (compiled with ``-ffp-contract=off`` like ``--fmad=false``),
and the launchers' argument lists: the emulated launch raises TypeError when
an argument's count, C type (``int`` vs ``long long`` vs ``float`` vs
``double``), pointer dtype or contiguity does not match the kernel's
parameter list, which real CuPy does not check. What it cannot check:
concurrency (threads of a block run one after another; kernels whose body
calls ``block_sum`` are run with one thread per block, which their strided
loops support), shared-memory races, warp shuffles, and performance.

Usage: ``HITCNN_GPU_EMULATE=1 python -m pytest tests/test_gpu_parity.py``
(tests/test_gpu_compile.py does this in CI when g++ is present).
"""
from __future__ import annotations

import ctypes
import hashlib
import importlib.machinery
import os
import re
import subprocess
import sys
import tempfile
import types

import numpy as np

CUDA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kernels", "gpu", "cuda")

_HEADER = r"""
#include <cmath>
#include <algorithm>
struct emu_dim3 { unsigned int x, y, z; };
static emu_dim3 blockIdx, threadIdx, blockDim, gridDim;
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __restrict__
static inline void __syncthreads() {}
// Only meaningful with blockDim.x == 1 (the emulator runs block_sum kernels so): no partner lane.
template <class T> static inline T __shfl_xor_sync(unsigned, T, int) { return (T)0; }
using std::min; using std::max; using std::sqrt; using std::exp; using std::log; using std::log10;
using std::fabs; using std::fmax;
"""

_SIG = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)', re.S)


def _params(text):
    out = []
    for p in (q.strip() for q in text.split(",")):
        name = re.findall(r"(\w+)\s*$", p)[0]
        typ = p[: p.rfind(name)].replace("const", "").replace("__restrict__", "").strip()
        out.append((typ, name))
    return out


def _kernels(src):
    """[(name, [(ctype, pname)], uses_block_sum)] of a source."""
    found = []
    for m in _SIG.finditer(src):
        body_start = m.end()
        nxt = _SIG.search(src, body_start)
        body = src[body_start: nxt.start() if nxt else len(src)]
        found.append((m.group(1), _params(m.group(2)), "block_sum(" in body))
    return found


def _build(source, real):
    src = open(os.path.join(CUDA_DIR, source), encoding="utf-8").read()
    common = open(os.path.join(CUDA_DIR, "common.cuh"), encoding="utf-8").read()
    kern = _kernels(src)
    wrappers = []
    for name, params, _ in kern:
        plist = ", ".join(f"{t} {n}" for t, n in params)
        args = ", ".join(n for _, n in params)
        wrappers.append(
            f'extern "C" void emu_{name}(unsigned emu_gx, unsigned emu_gy, unsigned emu_gz, unsigned emu_bx, {plist}) {{\n'
            f"  gridDim = {{emu_gx, emu_gy, emu_gz}}; blockDim = {{emu_bx, 1, 1}};\n"
            f"  for (unsigned emu_z = 0; emu_z < emu_gz; ++emu_z)\n"
            f"  for (unsigned emu_y = 0; emu_y < emu_gy; ++emu_y)\n"
            f"  for (unsigned emu_x = 0; emu_x < emu_gx; ++emu_x) {{\n"
            f"    blockIdx = {{emu_x, emu_y, emu_z}};\n"
            f"    for (unsigned emu_t = 0; emu_t < emu_bx; ++emu_t) {{ threadIdx = {{emu_t, 0, 0}}; {name}({args}); }}\n"
            f"  }}\n}}\n")
    text = _HEADER + f'#include "{source}"\n' + "\n".join(wrappers)
    key = hashlib.sha1((text + common + src + real).encode()).hexdigest()[:16]
    d = os.path.join(tempfile.gettempdir(), "hitcnn_gpu_emu")
    os.makedirs(d, exist_ok=True)
    lib = os.path.join(d, f"{source[:-3]}_{real}_{key}.so")
    if not os.path.exists(lib):
        cpp = lib[:-3] + ".cpp"
        with open(cpp, "w", encoding="utf-8") as f:
            f.write(text)
        tmp = lib + f".{os.getpid()}.tmp"
        res = subprocess.run(["g++", "-O2", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off", f"-DREAL={real}",
                              f"-I{CUDA_DIR}", cpp, "-o", tmp], capture_output=True, text=True)
        if res.returncode:
            raise RuntimeError(f"host build of {source} ({real}) failed:\n{res.stderr[-3000:]}")
        os.replace(tmp, lib)
    return ctypes.CDLL(lib), kern


_SCALARS = {"int": (np.int32, ctypes.c_int), "i64": (np.int64, ctypes.c_longlong),
            "long long": (np.int64, ctypes.c_longlong), "double": (np.float64, ctypes.c_double)}
_POINTEES = {"int": np.int32, "i64": np.int64, "double": np.float64, "unsigned char": np.uint8,
             "unsigned long long": np.uint64, "float": np.float32}


class _Kernel:
    def __init__(self, lib, name, params, reduce, real):
        self.name, self.params, self.reduce = name, params, reduce
        self.real = np.float32 if real == "float" else np.float64
        self.fn = getattr(lib, "emu_" + name)
        self.fn.restype = None

    def __call__(self, grid, block, args):
        if len(args) != len(self.params):
            raise TypeError(f"{self.name}: {len(args)} arguments for {len(self.params)} parameters")
        grid = tuple(grid) + (1,) * (3 - len(grid))
        bx = 1 if self.reduce else int(block[0])
        cargs = [ctypes.c_uint(int(g)) for g in grid] + [ctypes.c_uint(bx)]
        for (typ, pname), a in zip(self.params, args):
            if typ.endswith("*"):
                base = typ[:-1].strip()
                want = self.real if base == "real" else _POINTEES[base]
                if not isinstance(a, np.ndarray):
                    raise TypeError(f"{self.name}: parameter {pname} ({typ}) got {type(a).__name__}")
                if a.dtype != want:
                    raise TypeError(f"{self.name}: parameter {pname} ({typ}) got an array of {a.dtype}")
                if not a.flags.c_contiguous:
                    raise TypeError(f"{self.name}: parameter {pname} got a non-contiguous array")
                cargs.append(ctypes.c_void_p(a.ctypes.data))
            else:
                if typ == "real":
                    want, ct = self.real, (ctypes.c_float if self.real == np.float32 else ctypes.c_double)
                else:
                    want, ct = _SCALARS[typ]
                if type(a) is not want:
                    raise TypeError(f"{self.name}: parameter {pname} ({typ}) got {type(a).__name__}, "
                                    f"want {want.__name__}")
                cargs.append(ct(a.item()))
        self.fn(*cargs)


class _RawModule:
    def __init__(self, code=None, options=(), **kw):
        real = [o.split("=", 1)[1] for o in options if o.startswith("-DREAL=")][0]
        name = re.match(r"// hitcnn kernels/gpu/cuda/(\S+)", code).group(1)  # first line, see _launch.source
        lib, kern = _build(name, real)
        self._k = {n: _Kernel(lib, n, p, r, real) for n, p, r in kern}

    def get_function(self, name):
        return self._k[name]



# ----------------------------------------------------------------------------- NumPy-backed CuPy stand-in
class ndarray(np.ndarray):
    """A NumPy array standing for a device array: ``.get()`` copies to a plain NumPy array."""

    def get(self):
        return np.array(self)

    def set(self, arr, stream=None):  # host -> device copy (synchronous here)
        self[...] = arr

    @property
    def data(self):  # cupy's MemoryPointer: only .ptr is used
        return types.SimpleNamespace(ptr=self.ctypes.data)

    # CuPy reductions return 0-d device arrays, not scalars
    def _red(self, fn, *a, **k):
        r = fn(np.asarray(self), *a, **k)
        return _wrap(np.asarray(r)) if np.ndim(r) == 0 else _wrap(r)

    def max(self, *a, **k):
        return self._red(np.max, *a, **k)

    def min(self, *a, **k):
        return self._red(np.min, *a, **k)

    def sum(self, *a, **k):
        return self._red(np.sum, *a, **k)

    def all(self, *a, **k):
        return self._red(np.all, *a, **k)

    def any(self, *a, **k):
        return self._red(np.any, *a, **k)


def _wrap(x):
    if isinstance(x, np.ndarray) and not isinstance(x, ndarray):
        return x.view(ndarray)
    if isinstance(x, (tuple, list)):
        return type(x)(_wrap(v) for v in x)
    return x


def _wrapped(fn):
    def f(*a, **k):
        return _wrap(fn(*a, **k))
    f.__name__ = getattr(fn, "__name__", "f")
    return f


class _FakeCupy(types.ModuleType):
    def __getattr__(self, name):
        v = getattr(np, name)
        return _wrapped(v) if callable(v) and not isinstance(v, type) else v


def _asarray(a, dtype=None):
    if isinstance(a, ndarray) and (dtype is None or a.dtype == np.dtype(dtype)):
        return a
    return np.array(a, dtype=dtype, copy=True).view(ndarray)  # host -> "device" is a copy


class _Generator:
    def __init__(self, seed):
        self._g = np.random.default_rng(seed)

    def random(self, size=None, dtype=np.float64, out=None):
        return _wrap(self._g.random(size, dtype=dtype))


def make_module():
    """The CuPy stand-in module (see the module docstring)."""
    cp = _FakeCupy("cupy")
    cp.__version__ = "emulated"
    cp.__spec__ = importlib.machinery.ModuleSpec("cupy", None)
    cp.ndarray = ndarray
    cp.asarray = _asarray
    cp.ascontiguousarray = lambda a, dtype=None: _wrap(np.ascontiguousarray(a, dtype=dtype))
    cp.RawModule = _RawModule
    cp.fft = types.SimpleNamespace(rfft=_wrapped(np.fft.rfft))
    cp.random = types.SimpleNamespace(default_rng=_Generator)
    device = types.SimpleNamespace(id=0, synchronize=lambda: None)
    cp.cuda = types.SimpleNamespace(Device=lambda *a: device, Stream=_Stream, Event=_Event,
                                    get_current_stream=lambda: _Stream(),
                                    runtime=types.SimpleNamespace(getDeviceCount=lambda: 1))
    return cp


class _Event:
    """Stand-in CUDA event: everything here is synchronous, so it is always complete."""

    def record(self, stream=None):
        return self

    def synchronize(self):
        pass


class _Stream:
    """Stand-in CUDA stream (work runs synchronously on the host)."""

    def __init__(self, non_blocking=False, **kw):
        pass

    def record(self, event=None):
        return _Event()

    def wait_event(self, event):
        pass


def install():
    """Put the stand-in into ``sys.modules['cupy']`` (idempotent); ValueError if real CuPy or kernels.gpu came first."""
    have = sys.modules.get("cupy")
    if have is not None and getattr(have, "__version__", None) == "emulated":
        return have
    if "kernels.gpu" in sys.modules or have is not None:
        raise ValueError("install() must run before cupy / kernels.gpu are imported")
    sys.modules["cupy"] = make_module()
    cupyx = types.ModuleType("cupyx")
    cupyx.empty_pinned = lambda shape, dtype=np.float64: np.empty(shape, dtype)
    sys.modules["cupyx"] = cupyx
    return sys.modules["cupy"]
