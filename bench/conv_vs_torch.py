"""Side-by-side time of hitcnn's CPU Conv2d kernels and PyTorch's, per layer shape of the paper's CNNs.

Usage::

    python bench/conv_vs_torch.py [--batch 16] [--repeats 15] [--threads 2]

For every conv layer shape of cnn6_rgb and cnn4_rgb (input 3 x 102 x 159, 3x3
kernels, padding 1) it times one forward + backward step (forward,
backward_input, backward_weight; for torch ``conv2d`` then autograd backward
producing dx, dweight and dbias) and prints the medians of ``--repeats``
interleaved repeats (ours, torch, ours, torch, ...) so both see the same
machine load, the ratio ``torch_time / our_time`` (> 1 means we are faster),
and the machine, thread counts and library versions. Without torch installed
only our times are printed.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numba
import numpy as np

from kernels import Workspace
from kernels.cpu import conv2d as K
from machine import cpu_model  # bench/machine.py

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


def machine_info(torch):
    """One-paragraph description of the machine, threads and versions."""
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
    ]
    if torch is not None:
        lines.append(f"torch {torch.__version__}, {torch.get_num_threads()} threads, mkldnn={torch.backends.mkldnn.is_available()}")
    return "\n".join(lines)


def main(argv=None):
    """Print per conv layer of the paper's models: our fwd+bwd time vs torch's, the ratio, and the machine."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", "-b", type=int, default=16, help="batch size N (default 16)")
    ap.add_argument("--repeats", "-r", type=int, default=15, help="timed repeats per shape (default 15)")
    ap.add_argument("--threads", "-t", type=int, default=os.cpu_count(), help="threads for Numba and torch (default: all cores)")
    args = ap.parse_args(argv)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None

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

        def ours():
            K.conv2d_forward(out, x, wt, b, 1, 1, ws)
            K.conv2d_backward_input(dx, g, wt, 1, 1, ws)
            K.conv2d_backward_weight(dw, db, g, x, 1, 1, ws)

        if torch is not None:
            tx = torch.from_numpy(x).requires_grad_()
            tw = torch.from_numpy(wt).requires_grad_()
            tb = torch.from_numpy(b).requires_grad_()
            tg = torch.from_numpy(g)

            def theirs():
                tx.grad = tw.grad = tb.grad = None
                torch.nn.functional.conv2d(tx, tw, tb, 1, 1).backward(tg)
        else:
            theirs = None
        fns = [ours] + ([theirs] if theirs else [])
        for fn in fns:  # warm-up: compilation, workspace growth, oneDNN primitive creation
            fn()
            fn()
        times = [[] for _ in fns]
        for _ in range(args.repeats):
            for i, fn in enumerate(fns):
                t0 = time.perf_counter()
                fn()
                times[i].append(time.perf_counter() - t0)
        med = [1e3 * float(np.median(t)) for t in times]
        gflop = 3 * 2 * n * f * c * 9 * h * w / 1e9  # fwd + two backward GEMMs
        rows.append((name, c, f, h, w, med, gflop))

    print(machine_info(torch))
    print(f"batch {n}, {args.repeats} interleaved repeats, medians; fwd+bwd = forward + backward_input + backward_weight")
    hdr = f"{'layer':13s} {'C->F':>9s} {'HxW':>8s} {'ours ms':>8s} {'GFLOP/s':>8s}"
    if torch is not None:
        hdr += f" {'torch ms':>9s} {'torch/ours':>10s}"
    print(hdr)
    tot = [0.0, 0.0]
    for name, c, f, h, w, med, gflop in rows:
        line = f"{name:13s} {c:>4d}->{f:<4d} {h:>3d}x{w:<4d} {med[0]:8.2f} {gflop / med[0] * 1e3:8.1f}"
        tot[0] += med[0]
        if len(med) > 1:
            line += f" {med[1]:9.2f} {med[1] / med[0]:10.2f}"
            tot[1] += med[1]
        print(line)
    six = [r for r in rows if r[0].startswith("cnn6")]
    s_ours = sum(r[5][0] for r in six)
    line = f"{'cnn6_rgb sum':13s} {'':>9s} {'':>8s} {s_ours:8.2f} {'':>8s}"
    if torch is not None:
        s_t = sum(r[5][1] for r in six)
        line += f" {s_t:9.2f} {s_t / s_ours:10.2f}"
    print(line)


if __name__ == "__main__":
    main()
