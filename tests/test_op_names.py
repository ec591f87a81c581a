"""One name per op across the tree: both backends export the same ops and entry points, the float64
references carry the kernels' names, and every CUDA kernel carries its op's name and is launched.

Read from the source text (``ast`` and the ``.cu`` files), so it runs without CuPy or a GPU.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CPU, GPU, CUDA = REPO / "kernels" / "cpu", REPO / "kernels" / "gpu", REPO / "kernels" / "gpu" / "cuda"

#: Modules of a backend that are not ops: the CPU's BLAS binding and the conv2d algorithms it composes.
HELPERS = {"blas", "conv2d_gemm", "im2col", "winograd"}
#: Ops one backend has and the other does not (none: a new gap is an error).
KNOWN_GAPS: set = set()
#: Entry points a backend may lack (the caller probes for them): one launch for every Adam tensor; the STFT's
#: host helpers (window, frame count, framing: the CPU's, the GPU uses its window) and the GPU-only
#: spectrogram image on the device.
OPTIONAL = {"adam": {"adam_update_multi"},
            "stft": {"hann_window", "n_frames", "frame", "spectrogram_db", "spectrogram_image"}}
#: Kernel entry points without a float64 reference: the SyncBatchNorm split steps and the multi-tensor
#: Adam are tested against the one-call kernels instead (tests/ops/test_batchnorm.py, test_adam.py).
NO_REFERENCE = {"batchnorm_stats", "batchnorm_stats_finish", "batchnorm_apply_train", "batchnorm_backward_sums",
                "batchnorm_backward_params", "batchnorm_backward_apply", "bn_relu_pool_apply_train",
                "bn_relu_pool_backward_sums", "bn_relu_pool_backward_apply", "adam_update_multi", "channel_stats",
                "default_shift", "make_rng"}
#: A reference function named like a pass (``*_forward*``, ``*_backward*``, ``*_update*``, ``*_batch``) must be
#: a kernel entry point of the same op; other names are the reference's helpers (sizes, parameter tables).
PASS_NAME = re.compile(r"_(forward|backward|update)|_batch$")
#: Name prefixes of the CUDA kernels of ``<op>.cu`` where the op's name alone is not the rule: the fused op's
#: entry points are ``bn_relu_pool_*``, mixup is part of augment, util.cu holds helpers shared by ops.
PREFIXES = {"fused": ("bn_relu_pool_",), "augment": ("augment_", "mixup_"), "util": ("util_",)}
#: CUDA sources whose kernels are not renamed yet (none left).
UNPREFIXED: set = set()
#: Ops without a float64 module in engine/reference/: the STFT is checked against librosa and a direct
#: float64 DFT of the frames (tests/test_stft.py), its GPU twin against the CPU (tests/test_gpu_parity.py);
#: ``device`` is the backend's device policy (feeding, host copies, counting), no arithmetic to refer to.
NO_REFERENCE_OPS = {"stft", "device"}


def _module(path):
    return ast.parse(path.read_text())


def entry_points(path):
    """The lowercase names in a module's ``__all__`` (constants and classes are not entry points)."""
    for node in _module(path).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return {n for n in ast.literal_eval(node.value) if n.islower()}
    raise AssertionError(f"{path} has no __all__")


def ops(folder):
    return {p.stem for p in folder.glob("*.py") if not p.stem.startswith("_")} - HELPERS


def test_both_backends_have_the_same_ops():
    gaps = ops(CPU) ^ ops(GPU)
    assert gaps <= KNOWN_GAPS, f"ops in one backend only: {sorted(gaps - KNOWN_GAPS)}"


@pytest.mark.parametrize("op", sorted(ops(CPU) & ops(GPU)))
def test_both_backends_export_the_same_entry_points(op):
    cpu, gpu = entry_points(CPU / f"{op}.py"), entry_points(GPU / f"{op}.py")
    extra = OPTIONAL.get(op, set())
    assert cpu - extra == gpu - extra, f"{op}: CPU only {sorted(cpu - gpu)}, GPU only {sorted(gpu - cpu)}"


def _reference_ops():
    init = _module(REPO / "engine" / "reference" / "__init__.py")
    for node in init.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "OPS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("engine/reference/__init__.py has no OPS")


@pytest.mark.parametrize("op", _reference_ops())
def test_reference_module_carries_the_kernels_names(op):
    ref = entry_points(REPO / "engine" / "reference" / f"{op}.py")
    kern = entry_points(CPU / f"{op}.py")
    passes = {n for n in ref if PASS_NAME.search(n)}
    assert passes <= kern, f"reference/{op}.py passes no kernel has: {sorted(passes - kern)}"
    assert kern - NO_REFERENCE <= ref, f"kernels/cpu/{op}.py entry points without a reference: {sorted(kern - NO_REFERENCE - ref)}"


def test_every_kernel_op_has_a_reference():
    assert (ops(CPU) | ops(GPU)) - KNOWN_GAPS - NO_REFERENCE_OPS <= set(_reference_ops())


_GLOBAL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(')


def cuda_kernels():
    """{source name: [kernel names]} of kernels/gpu/cuda/*.cu."""
    return {p.name: _GLOBAL.findall(p.read_text()) for p in sorted(CUDA.glob("*.cu"))}


def launches():
    """(every string constant of kernels/gpu/*.py, [(source, kernel, file) of each ``L.kernel(src, name, ...)``])."""
    strings, calls = set(), []
    for path in sorted(GPU.glob("*.py")):
        for node in ast.walk(_module(path)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                strings.add(node.value)
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "kernel" and len(node.args) >= 2
                    and all(isinstance(a, ast.Constant) for a in node.args[:2])):
                calls.append((node.args[0].value, node.args[1].value, path.name))
    return strings, calls


def test_every_cuda_kernel_is_launched():
    strings, _ = launches()
    unused = {src: [k for k in names if k not in strings] for src, names in cuda_kernels().items()}
    assert not {s: k for s, k in unused.items() if k}, f"__global__ kernels no launcher names: {unused}"


def test_every_launch_names_a_kernel_of_its_source():
    kernels = cuda_kernels()
    _, calls = launches()
    assert calls
    wrong = [(f, src, k) for src, k, f in calls if k not in kernels.get(src, ())]
    assert not wrong, f"launches of kernels their source does not define: {wrong}"


@pytest.mark.parametrize("src", sorted(cuda_kernels()))
def test_cuda_kernels_carry_the_op_name(src):
    op = src[: -len(".cu")]
    if op in UNPREFIXED:
        pytest.skip(f"{src}: kernels renamed with the STFT op's move")
    prefixes = PREFIXES.get(op, (op,))
    bad = [k for k in cuda_kernels()[src] if not k.startswith(prefixes)]
    assert not bad, f"{src}: kernels not named {' / '.join(p + '*' for p in prefixes)}: {bad}"
