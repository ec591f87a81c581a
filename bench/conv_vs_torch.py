"""Per conv layer of the paper's CNNs: hitcnn's CPU Conv2d kernels vs PyTorch at its best.

Usage::

    python bench/conv_vs_torch.py [--batch 16] [--repeats 15] [--threads 2]

For every conv layer shape of cnn6_rgb and cnn4_rgb (3x3 kernels, padding 1)
it times each pass separately: forward, backward-input and backward-weight
(+ bias); for torch ``conv2d`` and ``aten.convolution_backward`` with the
output mask of one pass, in NCHW and in ``channels_last`` (input, weight
and gradient in that format), and reports the ratio against the faster of
the two (``best torch ms / ours ms``, > 1 means we are faster). Repeats are
interleaved (ours, torch NCHW, torch channels_last, ...) so all see the same
load; medians. The process re-executes itself once with glibc's caching
thresholds (``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``, see
bench/peers.py) unless they are set or ``--no-reexec`` is given, so torch's
buffers are not mapped and unmapped per call. Also printed: GFLOP/s
(``2*N*F*C*9*H*W`` per pass), the fraction of the sgemm peak measured in this
run with the same threads, the machine, thread counts and versions. Without
torch installed only our times are printed.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import time

import numba
import numpy as np

from kernels import Workspace
from kernels.cpu import conv2d as K
from machine import cpu_model, load_line  # bench/machine.py
from peers import GLIBC_CACHE, sgemm_gflops  # bench/peers.py

# (C, F, H, W) of each conv layer: cnn6_rgb's six, then the three cnn4_rgb adds.
SHAPES = [
    ("cnn6/cnn4 L1", 3, 32, 102, 159),
    ("cnn6 L2", 32, 32, 51, 79),
    ("cnn6 L3", 32, 64, 25, 39),
    ("cnn6 L4", 64, 64, 12, 19),
    ("cnn6 L5", 64, 128, 6, 9),
    ("cnn6 L6", 128, 128, 3, 4),
    ("cnn4 L2", 32, 64, 51, 79),
    ("cnn4 L3", 64, 64, 25, 39),
    ("cnn4 L4", 64, 128, 12, 19),
]


def omp_runtimes():
    """Paths of the OpenMP runtimes mapped into this process (torch here shares Numba's process)."""
    try:
        with open("/proc/self/maps") as fh:
            libs = {line.split()[-1] for line in fh if re.match(r"lib(g|i)?omp[.0-9]*\.so", line.rsplit("/", 1)[-1])}
    except OSError:
        return "unknown"
    return ", ".join(sorted(libs)) or "none"


def machine_info(torch, start_load):
    """One-paragraph description of the machine, threads and versions; ``start_load`` is taken before the runs."""
    cpu = cpu_model()
    blas = "unknown"
    try:
        import threadpoolctl

        blas = ", ".join(f"{i['internal_api']} {i.get('version')} {i.get('architecture')} x{i['num_threads']} ({os.path.basename(i['filepath'])})"
                         for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas")
    except ImportError:
        pass
    lines = [
        f"machine: {cpu}, {os.cpu_count()} cpus, {platform.system()} {platform.release()}",
        f"python {platform.python_version()}, numpy {np.__version__}, numba {numba.__version__} "
        f"(threading layer {numba.threading_layer()}, {numba.get_num_threads()} threads)",
        f"BLAS: {blas}",
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '<unset>')} OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE', '<unset>')}",
        start_load,
    ]
    if torch is not None:
        lines.append(f"torch {torch.__version__}, {torch.get_num_threads()} threads, mkldnn={torch.backends.mkldnn.is_available()}, "
                     f"in this process (one OpenMP runtime for both: {omp_runtimes()})")
    return "\n".join(lines)


PASSES = ("forward", "bwd-input", "bwd-weight")


def main(argv=None):
    """Print per conv layer and pass: our time vs torch's best (NCHW or channels_last), ratios, GFLOP/s, % of peak."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", "-b", type=int, default=16, help="batch size N (default 16)")
    ap.add_argument("--repeats", "-r", type=int, default=15, help="timed repeats per shape (default 15)")
    ap.add_argument("--threads", "-t", type=int, default=os.cpu_count(), help="threads for Numba and torch (default: all cores)")
    ap.add_argument("--no-reexec", action="store_true", help="do not re-execute with glibc's caching thresholds")
    args = ap.parse_args(argv)
    for flag, v, lo, hi in (("--batch", args.batch, 1, None), ("--repeats", args.repeats, 1, None),
                            ("--threads", args.threads, 1, numba.config.NUMBA_NUM_THREADS)):
        if v < lo or (hi is not None and v > hi):
            ap.error(f"{flag} {v}: must be at least {lo}" + (f" and at most {hi} (this machine's CPUs)" if hi else ""))
    start_load = load_line("start")
    if not args.no_reexec and any(os.environ.get(k) != v for k, v in GLIBC_CACHE.items()):
        env = dict(os.environ, **GLIBC_CACHE)
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *(argv if argv is not None else sys.argv[1:])], env)
    numba.set_num_threads(args.threads)
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    peak0 = sgemm_gflops(args.threads)

    n = args.batch
    rng = np.random.default_rng(0)
    ws = Workspace()
    rows = []
    for name, c, f, h, w in SHAPES:
        x = rng.standard_normal((n, c, h, w)).astype(np.float32)
        wt = (rng.standard_normal((f, c, 3, 3)) * np.sqrt(2 / (9 * c))).astype(np.float32)
        b = np.zeros(f, np.float32)
        out = np.empty((n, f, h, w), np.float32)
        g = rng.standard_normal(out.shape).astype(np.float32)
        dx = np.empty_like(x)
        dw = np.zeros_like(wt)
        db = np.zeros_like(b)
        runners = [[lambda: K.conv2d_forward(out, x, wt, b, 1, 1, ws),
                    lambda: K.conv2d_backward_input(dx, g, wt, 1, 1, ws),
                    lambda: K.conv2d_backward_weight(dw, db, g, x, 1, 1, ws)]]
        if torch is not None:
            for fmt in (torch.contiguous_format, torch.channels_last):
                tx = torch.from_numpy(x).contiguous(memory_format=fmt)
                tw = torch.from_numpy(wt).contiguous(memory_format=fmt)
                tb = torch.from_numpy(b)
                tg = torch.from_numpy(g).contiguous(memory_format=fmt)
                cb = torch.ops.aten.convolution_backward

                def mk(tx=tx, tw=tw, tb=tb, tg=tg, cb=cb):
                    return [lambda: torch.nn.functional.conv2d(tx, tw, tb, 1, 1),
                            lambda: cb(tg, tx, tw, [f], [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, False, False]),
                            lambda: cb(tg, tx, tw, [f], [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [False, True, True])]
                runners.append(mk())
        with torch.no_grad() if torch is not None else _null():
            for r in runners:  # warm-up: compilation, workspace growth, oneDNN primitive creation
                for fn in r:
                    fn()
                    fn()
            times = np.zeros((len(runners), 3, args.repeats))
            for rep in range(args.repeats):
                for i, r in enumerate(runners):
                    for j, fn in enumerate(r):
                        t0 = time.perf_counter()
                        fn()
                        times[i, j, rep] = time.perf_counter() - t0
        med = 1e3 * np.median(times, axis=2)  # (runner, pass) ms
        gflop = 2 * n * f * c * 9 * h * w / 1e9  # per pass
        rows.append((name, c, f, h, w, med, gflop))
    peak1 = sgemm_gflops(args.threads)
    peak = max(peak0.values())

    print(machine_info(torch, start_load))
    print(f"sgemm peak (2048^3, {args.threads} threads) before: "
          f"{', '.join(f'{k} {v:.0f}' for k, v in peak0.items())}; after: "
          f"{', '.join(f'{k} {v:.0f}' for k, v in peak1.items())} GFLOP/s; % of peak uses {peak:.0f}")
    print(f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', '<unset>')} "
          f"MALLOC_TRIM_THRESHOLD_={os.environ.get('MALLOC_TRIM_THRESHOLD_', '<unset>')}")
    print(f"batch {n}, {args.repeats} interleaved repeats, medians in ms; torch best = faster of NCHW and "
          "channels_last per pass; ratio = torch best / ours (> 1: hitcnn faster)")
    hdr = f"{'layer':13s} {'C->F':>9s} {'HxW':>8s} {'pass':>10s} {'ours':>7s} {'GFLOP/s':>7s} {'%pk':>4s}"
    if torch is not None:
        hdr += f" {'nchw':>7s} {'cl':>7s} {'best':>7s} {'%pk':>4s} {'ratio':>6s}"
    print(hdr)
    tot = np.zeros((len(rows[0][5]), 3))
    six = np.zeros_like(tot)
    for name, c, f, h, w, med, gflop in rows:
        tot += med
        if name.startswith("cnn6"):
            six += med
        for j, pname in enumerate(PASSES):
            line = (f"{name:13s} {c:>4d}->{f:<4d} {h:>3d}x{w:<4d} {pname:>10s} {med[0, j]:7.2f} "
                    f"{gflop / med[0, j] * 1e3:7.1f} {100 * gflop / med[0, j] * 1e3 / peak:4.0f}")
            if len(med) > 1:
                best = med[1:, j].min()
                line += (f" {med[1, j]:7.2f} {med[2, j]:7.2f} {best:7.2f} {100 * gflop / best * 1e3 / peak:4.0f} "
                         f"{best / med[0, j]:6.2f}")
            print(line)
    line = f"{'cnn6_rgb sum':13s} {'':>9s} {'':>8s} {'all':>10s} {six[0].sum():7.2f} {'':>7s} {'':>4s}"
    if len(six) > 1:
        best = six[1:].min(axis=0).sum()
        line += f" {six[1].sum():7.2f} {six[2].sum():7.2f} {best:7.2f} {'':>4s} {best / six[0].sum():6.2f}"
    print(line)
    print(load_line("end"))


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


if __name__ == "__main__":
    main()
