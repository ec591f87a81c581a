"""Compile every CUDA source of kernels/gpu for sm_90, without a GPU (runs in CI).

Two compilers, the same sources and options as the launchers
(``kernels.gpu._launch``), each for float32 and float64 (``-DREAL``):

* ``nvcc -arch=sm_90 -cubin -Xptxas -v``: a syntax or type error fails the
  test; the registers and spill bytes of every kernel are parsed and printed
  (``pytest -s``), and the hot kernels must not spill. Skipped without nvcc.
* NVRTC (what ``cupy.RawModule`` uses at run time; it has no system headers,
  unlike nvcc): skipped when CuPy's NVRTC binding or library is absent.

And the whole GPU parity suite (the ``gpu`` tests of tests/ops/ and
tests/test_gpu_parity.py) once more under
CPU emulation (tests/gpu_emulate.py: the same CUDA sources built for the
host with g++, the real launchers, NumPy standing in for cuBLAS/cuFFT), in a
subprocess; skipped without g++. It checks index arithmetic, float
expressions and launcher argument types, not concurrency or speed.

The _launch module imports CuPy, so the sources and options are read from
its text here when CuPy is not installed.
"""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CUDA_DIR = Path(__file__).resolve().parents[1] / "kernels" / "gpu" / "cuda"
LAUNCH = CUDA_DIR.parent / "_launch.py"

#: Kernels on the training step's hot path: no spills allowed.
HOT = {"conv2d_im2col", "conv2d_col2im", "conv2d_fnp_to_nfp_bias", "conv2d_nfp_to_fnp", "batchnorm_stats_partial",
       "batchnorm_apply", "batchnorm_bwd_partial", "batchnorm_bwd_apply", "relu_forward", "relu_backward",
       "maxpool2d_forward", "maxpool2d_backward", "bn_relu_pool_forward", "bn_relu_pool_bwd_partial",
       "bn_relu_pool_bwd_apply", "adam_update", "adam_update_multi", "util_chan_partial_sum", "util_sum_rows_add",
       "dropout_forward", "dropout_backward"}


def _launch_constant(name):
    """Value of a module-level tuple constant of kernels/gpu/_launch.py, read without importing CuPy."""
    tree = ast.parse(LAUNCH.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise LookupError(name)


SOURCES = _launch_constant("SOURCES")
NVRTC_OPTIONS = _launch_constant("NVRTC_OPTIONS")
REALS = ("float", "double")


def test_every_cu_file_is_listed():
    """A .cu file that the launchers do not list would never be compile-checked."""
    assert sorted(p.name for p in CUDA_DIR.glob("*.cu")) == sorted(SOURCES)


def parse_ptxas(log: str) -> dict:
    """{kernel: {'registers': int, 'spill_stores': int, 'spill_loads': int, 'stack': int}} from ``-Xptxas -v``."""
    out, cur = {}, None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            cur = out.setdefault(m.group(1), {"registers": 0, "spill_stores": 0, "spill_loads": 0, "stack": 0})
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            cur["stack"], cur["spill_stores"], cur["spill_loads"] = (int(g) for g in m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m:
            cur["registers"] = int(m.group(1))
    return out


def test_parse_ptxas_reads_registers_and_spills():
    log = ("ptxas info    : Compiling entry function 'k' for 'sm_90'\n"
           "ptxas info    : Function properties for k\n"
           "    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n"
           "ptxas info    : Used 40 registers, used 0 barriers\n")
    assert parse_ptxas(log) == {"k": {"registers": 40, "spill_stores": 4, "spill_loads": 12, "stack": 8}}


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
@pytest.mark.parametrize("real", REALS)
@pytest.mark.parametrize("src", SOURCES)
def test_nvcc_compiles_for_sm90(src, real, tmp_path):
    opts = [o.replace("--fmad=", "-fmad=") for o in NVRTC_OPTIONS]
    cmd = ["nvcc", "-arch=sm_90", "-cubin", "-Xptxas", "-v", f"-DREAL={real}", f"-I{CUDA_DIR}", *opts,
           "-o", str(tmp_path / "k.cubin"), str(CUDA_DIR / src)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stdout}\n{res.stderr}"
    table = parse_ptxas(res.stdout + res.stderr)
    assert table, f"no kernels reported for {src}:\n{res.stderr}"
    for name, r in sorted(table.items()):
        print(f"{src:16s} {real:6s} {name:28s} regs {r['registers']:3d}  stack {r['stack']:4d}  "
              f"spill st {r['spill_stores']:4d} ld {r['spill_loads']:4d}")
        assert 0 < r["registers"] <= 255
    spilled = {k: v for k, v in table.items() if k in HOT and (v["spill_stores"] or v["spill_loads"])}
    assert not spilled, f"hot kernels spill registers: {spilled}"


def _nvrtc():
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
        return nvrtc
    except Exception:  # CuPy absent, or its NVRTC library missing
        return None


@pytest.mark.parametrize("real", REALS)
@pytest.mark.parametrize("src", SOURCES)
def test_nvrtc_compiles_for_sm90(src, real):
    nvrtc = _nvrtc()
    if nvrtc is None:
        pytest.skip("CuPy's NVRTC (cupy + nvidia-cuda-nvrtc) not available")
    import numpy as np

    from kernels.gpu import _launch  # CuPy is importable here (its NVRTC binding is)

    prog = nvrtc.createProgram(_launch.source(src), src, (), ())  # exactly the text and options the launchers use
    opts = _launch.options(np.float32 if real == "float" else np.float64) + ("--gpu-architecture=sm_90",)
    try:
        nvrtc.compileProgram(prog, opts)
    except Exception as exc:
        pytest.fail(f"NVRTC failed on {src} ({real}): {exc}\n{nvrtc.getProgramLog(prog)}")
    assert len(nvrtc.getCUBIN(prog)) > 0


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed")
def test_gpu_parity_suite_passes_under_cpu_emulation():
    env = dict(os.environ, HITCNN_GPU_EMULATE="1")
    here = Path(__file__).parent
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", str(here / "ops"),
           str(here / "test_gpu_parity.py")]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200, cwd=Path(__file__).resolve().parents[1])
    tail = "\n".join(res.stdout.splitlines()[-30:])
    assert res.returncode == 0, f"emulated GPU parity suite failed:\n{tail}\n{res.stderr[-2000:]}"
    assert re.search(r"(\d+) passed", tail) and " failed" not in tail, tail
