"""PyTorch peer worker of ``bench/train_throughput.py``: a bare torch process (imports torch and NumPy only).

The peer must run as a PyTorch user runs it. A torch worker started from
``train_throughput.py`` itself imported Numba and the engine first and
started Numba's OpenMP pool (``numba.set_num_threads``), so the dynamic
loader bound torch's ``libgomp.so.1`` to the one Numba had already mapped
(the system's ``/usr/lib/x86_64-linux-gnu/libgomp.so.1.0.0``) instead of
the one torch ships (``torch/lib/libgomp.so.1``), with Numba's idle pool and
SciPy's OpenBLAS in the process beside it. This file imports neither: its
process maps only torch's own runtime (check with ``--maps``).

Protocol (stdin/stdout, one line each, as ``train_throughput.worker``):
prints ``ready`` after the model is built, answers ``steps K`` with a JSON
list of K step times in seconds and ``peak`` with torch's sgemm GFLOP/s
(``peers.sgemm_gflops``, in this bare process), exits on anything else.

Usage (by ``train_throughput.py``)::

    python bench/torch_worker.py FORMAT IN_CH WIDTHS HIDDEN N THREADS   # e.g. channels_last 3 32,32,64 512 16 2
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np


def batch(c, n, seed=0):
    """A seeded random batch: float32 images (n, c, 102, 159) and int64 labels in [0, 3)."""
    rng = np.random.default_rng(seed)
    return rng.random((n, c, 102, 159), dtype=np.float32), (np.arange(n) % 3).astype(np.int64)


class Torch:
    """One PyTorch training step (forward, cross-entropy, backward, Adam) of the paper's CNN at batch n.

    Architecture as ``engine.models``: per width ``f`` a 3x3 Conv2d (padding 1),
    BatchNorm2d, ReLU, 2x2 MaxPool; then Flatten, Linear(., hidden), ReLU,
    Dropout(0.4), Linear(hidden, 3). ``memory_format``: 'nchw' or 'channels_last'
    (model and input converted).
    """
    name = "torch"

    def __init__(self, in_ch, widths, hidden, n, memory_format="nchw"):
        import torch

        c, mods, h, w = in_ch, [], 102, 159
        for f in widths:
            mods += [torch.nn.Conv2d(c, f, 3, 1, 1), torch.nn.BatchNorm2d(f), torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
            c, h, w = f, h // 2, w // 2
        mods += [torch.nn.Flatten(), torch.nn.Linear(c * h * w, hidden), torch.nn.ReLU(), torch.nn.Dropout(0.4),
                 torch.nn.Linear(hidden, 3)]
        self.torch = torch
        self.model = torch.nn.Sequential(*mods).train()
        x, y = batch(in_ch, n)
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)
        if memory_format == "channels_last":
            self.model = self.model.to(memory_format=torch.channels_last)
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=5e-4)

    def step(self):
        """One training step."""
        self.opt.zero_grad(set_to_none=False)
        loss = self.torch.nn.functional.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()


def mapped_runtimes():
    """The OpenMP / BLAS / allocator libraries mapped by this process (paths), for checking what torch runs on."""
    keys = ("gomp", "iomp", "openblas", "mkl", "malloc", "numba")
    with open("/proc/self/maps") as fh:
        return sorted({ln.split()[-1] for ln in fh if any(k in ln.rsplit("/", 1)[-1] for k in keys)})


def main(argv=None):
    """Build the peer, print ``ready``, then answer ``steps K`` lines (or print the mapped runtimes with --maps)."""
    argv = sys.argv[1:] if argv is None else argv
    maps = argv[:1] == ["--maps"]
    fmt, in_ch, widths, hidden, n, threads = argv[1:] if maps else argv
    import torch

    torch.set_num_threads(int(threads))
    r = Torch(int(in_ch), [int(f) for f in widths.split(",")], int(hidden), int(n), fmt)
    if maps:
        r.step()
        print("\n".join(mapped_runtimes()))
        return
    print("ready", flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd and cmd[0] == "steps":
            ts = []
            for _ in range(int(cmd[1])):
                t = time.perf_counter()
                r.step()
                ts.append(time.perf_counter() - t)
            print(json.dumps(ts), flush=True)
        elif cmd and cmd[0] == "peak":
            from peers import sgemm_gflops  # bench/peers.py: NumPy and time only

            print(json.dumps(sgemm_gflops(int(threads), libs=("torch",))), flush=True)
        else:
            return


if __name__ == "__main__":
    main()
