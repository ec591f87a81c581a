"""Training throughput of hitcnn vs PyTorch at its best (CPU), raced in one run.

For each of the paper's four models and each batch size, one training step
(forward, softmax cross-entropy, backward, Adam step) is timed in hitcnn and
in the same architecture in PyTorch eager, in every peer configuration of
:mod:`peers` (NCHW and ``channels_last``, each under a caching allocator:
glibc told to keep its buffers, and jemalloc / tcmalloc via ``LD_PRELOAD``
when installed). Every runner is its own worker subprocess (an allocator
must be chosen before a process starts) with the same thread count; a torch
peer is a bare torch process (``bench/torch_worker.py``: no Numba, no
engine, so torch runs on the OpenMP runtime it ships with); the
parent alternates rounds of steps between them (one runs at a time, the
start rotates), so load on a shared machine hits all alike. Reported: the
median images/s of each, the ratio hitcnn / **best** peer, the achieved
GFLOP/s of both (nominal training FLOPs = 3 x the forward FLOPs of the convs
and Linears, per image) and their fraction of the sgemm peak measured in the
same run with the same threads (the best of NumPy's and torch's sgemm,
2048^3, measured just before the race; the value after it is printed too). Also the peak resident memory of a
hitcnn cnn6_rgb training run at batch 16, measured in a fresh subprocess as
its ``VmHWM`` (target: < 1 GiB; ``resource.getrusage`` is not used because
Linux carries ``ru_maxrss`` over fork+exec).

Usage::

    python bench/train_throughput.py                       # all models, batch 16 and 64
    python bench/train_throughput.py --models cnn6_rgb --batch 16 --profile
    python bench/train_throughput.py --weak-peer           # also the untuned NCHW/glibc peer (old baseline)
    python bench/train_throughput.py --out                 # also writes bench/results/cpu_train_throughput.txt
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numba  # noqa: E402
from machine import cpu_model, load_line  # noqa: E402  (bench/machine.py)
from peers import env_with, peer_configs, sgemm_gflops  # noqa: E402  (bench/peers.py)
from torch_worker import batch  # noqa: E402  (bench/torch_worker.py; imports no torch at module level)

from engine import models  # noqa: E402
from engine.losses import SoftmaxCrossEntropy  # noqa: E402
from engine.optim import Adam  # noqa: E402

RESULT = ROOT / "bench" / "results" / "cpu_train_throughput.txt"


def blas_info():
    """The BLAS libraries loaded and their thread counts (threadpoolctl), for the printed header."""
    try:
        cfg = np.show_config(mode="dicts")
        b = cfg["Build Dependencies"]["blas"]
        return f"{b.get('name')} {b.get('version', '')}".strip()
    except Exception:  # older numpy
        return "unknown"


class Ours:
    """One hitcnn training step (forward, loss, backward, Adam) of a model at batch n."""
    name = "hitcnn"

    def __init__(self, model_name, n):
        self.model = models.build(model_name, seed=0)
        self.loss = SoftmaxCrossEntropy()
        self.opt = Adam(self.model.parameters())
        self.x, self.y = batch(models.MODELS[model_name][0], n)

    def step(self):
        m = self.model
        self.loss.forward(m.forward(self.x), self.y)
        m.zero_grad()
        m.backward(self.loss.backward())
        self.opt.step()


def forward_flops(model_name, h=102, w=159):
    """Multiply-add FLOPs (2 per MAC) of one image's forward pass through the convs and Linears."""
    c, widths = models.MODELS[model_name]
    fl = 0
    for f in widths:
        fl += 2 * f * c * 9 * h * w
        c, h, w = f, h // 2, w // 2
    return fl + 2 * c * h * w * models.HIDDEN + 2 * models.HIDDEN * 3


def worker(kind, model_name, n, threads):
    """hitcnn worker process: build the runner, then answer 'steps K' (JSON list of seconds) and 'peak' lines on stdin.

    The PyTorch peers run in ``bench/torch_worker.py`` instead (a bare torch process: no Numba, no engine).
    """
    if kind != "hitcnn":
        raise ValueError(f"this worker runs hitcnn only (torch peers: bench/torch_worker.py), got {kind!r}")
    numba.set_num_threads(threads)
    r = Ours(model_name, n)
    print("ready", flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "steps":
            ts = []
            for _ in range(int(cmd[1])):
                t = time.perf_counter()
                r.step()
                ts.append(time.perf_counter() - t)
            print(json.dumps(ts), flush=True)
        elif cmd[0] == "peak":
            print(json.dumps(sgemm_gflops(threads, libs=("numpy",))), flush=True)
        else:
            return


def worker_argv(kind, model_name, n, threads):
    """Command line of one runner: hitcnn in this script's ``--worker`` mode, a torch peer in bench/torch_worker.py."""
    if kind == "hitcnn":
        return [sys.executable, __file__, "--worker", kind, model_name, str(n), str(threads)]
    c, widths = models.MODELS[model_name]
    return [sys.executable, str(Path(__file__).with_name("torch_worker.py")), kind, str(c),
            ",".join(map(str, widths)), str(models.HIDDEN), str(n), str(threads)]


class Worker:
    """Parent side of one worker subprocess (see :func:`worker`)."""

    def __init__(self, label, kind, model_name, n, threads, env):
        self.label = label
        self.p = subprocess.Popen(worker_argv(kind, model_name, n, threads), stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, env=env)
        if self.p.stdout.readline().strip() != "ready":
            raise RuntimeError(f"benchmark worker {label} failed to start (exit {self.p.poll()})")

    def ask(self, cmd):
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()
        return json.loads(self.p.stdout.readline())

    def close(self):
        try:
            self.p.stdin.write("quit\n")
            self.p.stdin.close()
        except OSError:
            pass
        self.p.wait(timeout=60)


def peer_omp(threads):
    """The OpenMP library a torch peer process maps (path), from ``bench/torch_worker.py --maps``."""
    argv = worker_argv("nchw", "cnn2_mono", 2, threads)
    out = subprocess.run(argv[:2] + ["--maps"] + argv[2:], capture_output=True, text=True, env=env_with({}))
    libs = [ln for ln in out.stdout.splitlines() if "gomp" in ln or "iomp" in ln]
    return ", ".join(libs) or f"none found (exit {out.returncode})"


def sgemm_peaks(threads, env, with_torch):
    """``{"numpy": g, "torch": g}``: sgemm GFLOP/s of NumPy in a hitcnn worker and of torch in a bare torch worker."""
    res = {}
    for kind in ("hitcnn", "nchw") if with_torch else ("hitcnn",):
        probe = Worker("probe", kind, "cnn2_mono", 2, threads, env)
        try:
            res.update(probe.ask("peak"))
        finally:
            probe.close()
    return res


def race(workers, warmup, rounds, per_round):
    """Alternate ``per_round`` timed steps per worker for ``rounds`` rounds (start rotated); median s/step each."""
    for w in workers:
        w.ask(f"steps {warmup}")
    times = {w.label: [] for w in workers}
    for r in range(rounds):
        for i in range(len(workers)):
            w = workers[(i + r) % len(workers)]
            times[w.label] += w.ask(f"steps {per_round}")
    return {k: float(np.median(v)) for k, v in times.items()}


def profile(model_name, n, steps=5):
    """Median ms per plan step (forward and backward) of one hitcnn training step."""
    o = Ours(model_name, n)
    m = o.model
    for _ in range(2):
        o.step()
    plan = m._plan(o.x)
    fw = np.zeros((steps, len(plan)))
    bw = np.zeros((steps, len(plan)))
    other = []
    for s in range(steps):
        t0 = time.perf_counter()
        h = o.x
        for i, p in enumerate(plan):
            t = time.perf_counter()
            h = p.forward(h)
            fw[s, i] = time.perf_counter() - t
        o.loss.forward(h, o.y)
        m.zero_grad()
        d = o.loss.backward()
        for i in reversed(range(len(plan))):
            t = time.perf_counter()
            d = plan[i].backward(d)
            bw[s, i] = time.perf_counter() - t
            if d is None:
                break
        t = time.perf_counter()
        o.opt.step()
        adam = time.perf_counter() - t
        other.append((time.perf_counter() - t0, adam))
    lines = [f"profile: hitcnn {model_name} batch {n} (median ms over {steps} steps)",
             f"{'step':<44} {'forward':>8} {'backward':>9}"]
    for i, p in enumerate(plan):
        label = (f"{type(p.bn).__name__}+ReLU+MaxPool (fused)" if hasattr(p, "bn") else repr(p))[:44]
        lines.append(f"{label:<44} {np.median(fw[:, i]) * 1e3:8.2f} {np.median(bw[:, i]) * 1e3:9.2f}")
    tot, adam = np.median(np.array(other), axis=0)
    lines.append(f"{'Adam step':<44} {adam * 1e3:8.2f}")
    lines.append(f"{'total step':<44} {tot * 1e3:8.2f}")
    return "\n".join(lines)


def _status_kib(field):
    try:
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field))
    except (OSError, StopIteration):
        return -1


def rss_child(model_name, n, steps):
    """Entry point of the child process that trains a few steps and reports its peak RSS (VmHWM)."""
    o = Ours(model_name, n)
    for _ in range(steps):
        o.step()
    # VmHWM is the peak RSS of this process image. resource.getrusage's ru_maxrss is not usable here: Linux
    # carries it over fork+exec, so a child of a big parent reports at least the parent's RSS at fork time.
    print(_status_kib("VmHWM"), _status_kib("VmRSS"), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def peak_rss_mib(model_name, n, steps=3):
    """(peak RSS, RSS after the steps) in MiB of a fresh process training ``model_name`` for ``steps`` steps."""
    out = subprocess.run([sys.executable, __file__, "--rss-child", model_name, str(n), str(steps)],
                         capture_output=True, text=True, check=True, env=os.environ.copy())
    hwm, cur, _ = out.stdout.strip().splitlines()[-1].split()
    return int(hwm) / 1024.0, int(cur) / 1024.0


def main(argv=None):
    """Measure and print the side-by-side throughput table, peak RSS and (with --profile) per-layer times."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(models.MODELS), help="models to run (default: all four)")
    ap.add_argument("--batch", nargs="+", type=int, default=[16, 64], help="batch sizes (default: 16 64)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per runner (default 3)")
    ap.add_argument("--rounds", type=int, default=12, help="alternating rounds (default 12)")
    ap.add_argument("--per-round", type=int, default=1, help="timed steps per runner per round (default 1)")
    ap.add_argument("--threads", type=int, default=None, help="threads for both (default: Numba's default)")
    ap.add_argument("--profile", action="store_true", help="also print hitcnn per-layer timings")
    ap.add_argument("--no-torch", action="store_true", help="hitcnn only")
    ap.add_argument("--weak-peer", action="store_true", help="also race untuned torch (NCHW, default glibc malloc)")
    ap.add_argument("--out", action="store_true", help=f"also write {RESULT.relative_to(ROOT)}")
    ap.add_argument("--rss-child", nargs=3, metavar=("MODEL", "N", "STEPS"), help=argparse.SUPPRESS)
    ap.add_argument("--worker", nargs=4, metavar=("KIND", "MODEL", "N", "THREADS"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        return worker(a.worker[0], a.worker[1], int(a.worker[2]), int(a.worker[3]))
    if a.rss_child:
        return rss_child(a.rss_child[0], int(a.rss_child[1]), int(a.rss_child[2]))
    unknown = [m for m in a.models if m not in models.MODELS]
    if unknown:
        ap.error(f"--models: unknown {', '.join(unknown)} (choose from {', '.join(models.MODELS)})")
    for flag, vals, lo in (("--batch", a.batch, 1), ("--rounds", [a.rounds], 1), ("--per-round", [a.per_round], 1),
                           ("--warmup", [a.warmup], 0)):
        bad = [v for v in vals if v < lo]
        if bad:
            ap.error(f"{flag} {bad[0]}: must be at least {lo}")
    if a.threads is not None and not 1 <= a.threads <= numba.config.NUMBA_NUM_THREADS:
        ap.error(f"--threads {a.threads}: must be between 1 and {numba.config.NUMBA_NUM_THREADS} (this machine's CPUs)")
    if a.threads:
        numba.set_num_threads(a.threads)
    threads = numba.get_num_threads()
    torch = None
    if not a.no_torch:
        try:
            import torch
        except ImportError:
            torch = None
    peers = [] if torch is None else peer_configs(a.weak_peer)
    lines = [
        "hitcnn vs PyTorch at its best: CPU training throughput (forward + loss + backward + Adam step), images/s",
        f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs; threads: numba {threads} "
        f"({numba.threading_layer() if _warm_numba() else '?'}), torch {threads if torch else '-'} (each runner "
        "its own process)",
        f"versions: python {platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}, "
        f"torch {torch.__version__ if torch else 'absent'}, BLAS {blas_info()}",
        f"peers: {', '.join(p[0] for p in peers) or 'none'}",
        f"timing: median over {a.rounds}x{a.per_round} steps per runner after {a.warmup} warm-up steps, "
        "runners alternated per round (start rotated); 102x159 inputs",
        "GFLOP/s: nominal training FLOPs = 3 x forward FLOPs of the convs and Linears per image; "
        "% of peak = of the best sgemm (2048^3) measured just before the race with the same threads "
        "(the value after the race is printed at the end)",
        load_line("start"),
    ]
    if peers:
        lines.insert(4, f"torch peers: bare processes (bench/torch_worker.py, no Numba), OpenMP runtime {peer_omp(threads)}")
    print("\n".join(lines), flush=True)
    peak_samples = []
    ref_env = env_with({})
    peak_samples.append(sgemm_peaks(threads, ref_env, torch is not None))
    peak = max(v for d in peak_samples for v in d.values())
    row = f"sgemm peak before the race: {', '.join(f'{k} {v:.0f}' for k, v in peak_samples[0].items())} GFLOP/s"
    print(row, flush=True)
    lines += [row, ""]
    hdr = (f"{'model':<10} {'batch':>5} {'hitcnn img/s':>12} {'GFLOP/s':>7} {'%peak':>5} {'best peer':<30} "
           f"{'img/s':>7} {'GFLOP/s':>7} {'%peak':>5} {'ratio':>6}")
    print(hdr, flush=True)
    lines.append(hdr)
    table = []
    per_peer = []
    for name in a.models:
        fl = 3 * forward_flops(name)
        for n in a.batch:
            ws = [Worker("hitcnn", "hitcnn", name, n, threads, ref_env)]
            ws += [Worker(label, fmt, name, n, threads, env_with(env)) for label, fmt, env in peers]
            try:
                med = race(ws, a.warmup, a.rounds, a.per_round)
            finally:
                for w in ws:
                    w.close()
            ips = {k: n / v for k, v in med.items()}
            ours = ips.pop("hitcnn")
            best = max(ips, key=ips.get) if ips else None
            table.append((name, n, ours, fl, best, ips.get(best, float("nan"))))
            per_peer.append((name, n, ours, ips))
            g, gb = ours * fl / 1e9, ips.get(best, float("nan")) * fl / 1e9
            row = (f"{name:<10} {n:>5} {ours:>12.1f} {g:>7.1f} {100 * g / peak:>5.0f} {best or '-':<30} "
                   f"{ips.get(best, float('nan')):>7.1f} {gb:>7.1f} {100 * gb / peak:>5.0f} "
                   f"{ours / ips[best] if best else float('nan'):>6.2f}")
            print(row, flush=True)
            lines.append(row)
    peak_samples.append(sgemm_peaks(threads, ref_env, torch is not None))
    peak2 = max(peak_samples[1].values())
    row = (f"sgemm peak after the race: {', '.join(f'{k} {v:.0f}' for k, v in peak_samples[1].items())} GFLOP/s "
           f"(%peak above uses the 'before' value {peak:.0f}; after: {peak2:.0f})")
    print(row, flush=True)
    lines.append(row)
    if peers:
        lines.append("")
        lines.append("every peer, img/s (ratio hitcnn / peer):")
        print("\nevery peer, img/s (ratio hitcnn / peer):", flush=True)
        for name, n, ours, ips in per_peer:
            row = f"{name:<10} {n:>5} " + "; ".join(f"{k} {v:.1f} ({ours / v:.2f})" for k, v in ips.items())
            lines.append(row)
            print(row, flush=True)
    # fresh children; one that JIT-compiles (cold or invalidated Numba cache) peaks higher, hence three
    rss = [peak_rss_mib("cnn6_rgb", 16) for _ in range(3)]
    best = min(rss)
    row = (f"\npeak RSS (VmHWM), hitcnn cnn6_rgb batch 16 training, fresh process, 3 steps: {best[0]:.0f} MiB "
           f"(target < 1024 MiB; min of 3 processes: {', '.join(f'{r[0]:.0f}' for r in rss)} MiB); "
           f"RSS after the steps {best[1]:.0f} MiB")
    print(row, flush=True)
    lines.append(row)
    if a.profile:
        for name in a.models:
            p = profile(name, a.batch[0])
            print("\n" + p, flush=True)
            lines += ["", p]
    print(load_line("end"), flush=True)
    lines.append(load_line("end"))
    if a.out:
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text("\n".join(lines) + "\n")
        print(f"\nwritten to {RESULT}")


def _warm_numba():
    """Run one tiny parallel kernel so that numba.threading_layer() is defined."""
    from kernels.cpu import relu

    x = np.ones(8, np.float32)
    relu.relu_forward(np.empty_like(x), x)
    return True


if __name__ == "__main__":
    main()
