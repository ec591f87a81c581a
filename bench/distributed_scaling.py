"""Data-parallel scaling: 2 MPI ranks x 1 thread vs 1 process x 2 threads, and a model to 8-64 ranks.

    python bench/distributed_scaling.py [--steps 6] [--out bench/results/distributed_scaling.md]

Measured part: the real training step (forward, backward, gradient Allreduce
of engine.distributed, Adam) of cnn6_rgb on random 3 x 102 x 159 images, at
global batch 32 and 64, (a) one process with NUMBA_NUM_THREADS=2, (b) ``mpirun
-n 2`` with one thread per rank, each rank training half the batch. Reported:
images/s (global batch / median step time) and the share of the step spent in
the Allreduce (rank 0).

Model part: from the measured compute time per image on one thread (t_img)
and the Allreduce message (4 bytes x parameters), the step time of K ranks at
a fixed global batch B (strong scaling) is ``B/K * t_img + T_ar(K)`` with a
ring Allreduce ``T_ar = 2 (K-1)/K * S / bw + 2 (K-1) * alpha`` (Patarasuk &
Yuan 2009; alpha = 5 us per message latency), over 10 and 100 Gbit/s links.
Compute is assumed to scale perfectly per image (no straggler, no
overlap of communication with backward: our Allreduce runs after backward).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARAMS = {"cnn6_rgb": 421_027, "cnn2_mono": None}


def worker(model_name, batch, steps, distributed):
    """One process's timing loop; prints a JSON line on rank 0."""
    import numpy as np

    sys.path.insert(0, str(REPO))
    from engine import models
    from engine.losses import SoftmaxCrossEntropy
    from engine.optim import Adam

    in_shape = (3, 102, 159) if model_name.endswith("rgb") else (1, 102, 159)
    m = models.build(model_name, in_shape=in_shape, n_classes=3, dropout=0.4, seed=0)
    opt = Adam(m.parameters(), lr=5e-4)
    crit = SoftmaxCrossEntropy()
    dist = None
    rank, size = 0, 1
    if distributed:
        from engine import distributed as D
        from engine.config import TrainConfig

        dist = D.init()
        rank, size = dist.rank, dist.size
        dist.setup(m, TrainConfig(model=model_name, batch_size=batch))
    n = batch // size
    rng = np.random.default_rng(rank)
    x = rng.random((n,) + in_shape, dtype=np.float32)
    y = rng.integers(0, 3, n)
    times, ar = [], []
    for s in range(steps + 1):
        if dist is not None:
            dist.comm.Barrier()
            dist.begin_step(batch)
            a0 = dist.allreduce_seconds
        t0 = time.perf_counter()
        m.zero_grad()
        crit.forward(m.forward(x), y)
        dl = crit.backward()
        if dist is not None:
            dl *= n / batch
        m.backward(dl)
        if dist is not None:
            dist.allreduce_grads(m)
            dist.end_step()
        opt.step()
        t = time.perf_counter() - t0
        if s:  # the first step warms caches
            times.append(t)
            ar.append(dist.allreduce_seconds - a0 if dist is not None else 0.0)
    if rank == 0:
        med = float(np.median(times))
        print(json.dumps(dict(model=model_name, batch=batch, ranks=size, step_s=med, images_per_s=batch / med,
                              allreduce_share=float(np.median(ar)) / med if dist else 0.0,
                              allreduce_s=float(np.median(ar)), params=int(m.num_params()))), flush=True)


def run(cmd, threads):
    """Run worker command ``cmd`` (list of str) with ``threads`` Numba / BLAS threads; its last JSON line as a dict.

    Raises ``subprocess.CalledProcessError`` when the worker fails.
    """
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), PYTHONPATH=str(REPO), OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS=str(threads))
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])


def ring_allreduce_s(k, nbytes, gbit, alpha=5e-6):
    """Modelled seconds of a ring Allreduce of ``nbytes`` over ``k`` ranks on a ``gbit`` Gbit/s link.

    ``2 (k-1)/k * nbytes / bandwidth + 2 (k-1) * alpha`` (bandwidth term and per-hop latency ``alpha`` in
    seconds; Patarasuk and Yuan 2009, the cost model NCCL's ring follows).
    """
    return 2 * (k - 1) / k * nbytes / (gbit * 1e9 / 8) + 2 * (k - 1) * alpha


def main():
    """Measure one-process and 2-rank MPI training steps, model larger jobs, write the Markdown table (--out)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "distributed_scaling.md"))
    ap.add_argument("--worker", nargs=3, metavar=("MODEL", "BATCH", "DIST"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a.worker[0], int(a.worker[1]), a.steps, a.worker[2] == "1")
        return
    me = [sys.executable, str(Path(__file__).resolve()), "--steps", str(a.steps), "--worker"]
    mpirun = [shutil.which("mpirun"), "-n", "2", "--oversubscribe", "-x", "NUMBA_NUM_THREADS", "-x", "PYTHONPATH",
              "-x", "OPENBLAS_NUM_THREADS"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    rows = []
    for batch in (32, 64):
        one = run(me + ["cnn6_rgb", str(batch), "0"], threads=2)
        two = run(mpirun + me + ["cnn6_rgb", str(batch), "1"], threads=1)
        rows.append((batch, one, two))
        print(batch, one, two, flush=True)
    # compute time per image on one thread, for the model
    t1 = {}
    nparams = {}
    for name in ("cnn6_rgb", "cnn2_mono"):
        r = run(me + [name, "16", "0"], threads=1)
        t1[name] = r["step_s"] / 16
        nparams[name] = r["params"]
    lines = ["# Data-parallel scaling (engine/distributed.py)", "",
             f"`python bench/distributed_scaling.py --steps {a.steps}`, this machine: 2 CPU cores shared with other "
             "jobs; Open MPI over shared memory; median step of the real training step (forward, backward, "
             "packed float32 gradient Allreduce, Adam) on random 3 x 102 x 159 images.", "",
             "| model | global batch | 1 rank x 2 threads img/s | 2 ranks x 1 thread img/s | speed-up | "
             "Allreduce share of the step (2 ranks) | Allreduce ms |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for batch, one, two in rows:
        lines.append(f"| cnn6_rgb | {batch} | {one['images_per_s']:.1f} | {two['images_per_s']:.1f} | "
                     f"{two['images_per_s'] / one['images_per_s']:.2f}x | {100 * two['allreduce_share']:.2f} % | "
                     f"{1e3 * two['allreduce_s']:.2f} |")
    lines += ["", "## Model: K ranks over a network (ring Allreduce, alpha = 5 us)", "",
              "Step time = B/K x t_img + 2(K-1)/K x S/bw + 2(K-1) alpha; t_img measured on one thread here "
              + ", ".join(f"({n}: {1e3 * t:.1f} ms/image, {nparams[n]:,} parameters = {4 * nparams[n] / 1e6:.1f} MB)"
                          for n, t in t1.items()) + ". Efficiency = ideal step (B/K x t_img) / modelled step.", "",
              "| model | global batch B | link | K=8 img/s (eff.) | K=16 | K=32 | K=64 |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name in ("cnn6_rgb", "cnn2_mono"):
        for batch in (64, 1024):
            for gbit in (10, 100):
                cells = []
                for k in (8, 16, 32, 64):
                    comp = batch / k * t1[name]
                    t = comp + ring_allreduce_s(k, 4 * nparams[name], gbit)
                    cells.append(f"{batch / t:,.0f} ({100 * comp / t:.0f} %)")
                lines.append(f"| {name} | {batch} | {gbit} Gbit/s | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    Path(a.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
