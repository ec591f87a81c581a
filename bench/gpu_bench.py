"""GPU benchmark of issue 5: hitcnn's CUDA kernels and training step vs PyTorch + cuDNN on the same GPU.

Run by bench/gpu_check.sh on a machine with CuPy, PyTorch (CUDA) and a GPU;
installs nothing. Times with CUDA events (median of repeats after warm-up).

1. Kernels at the paper's shapes (cnn6_rgb's layers on 102 x 159 input),
   batch 16 and 64: conv2d forward / backward-input / backward-weight, the
   fused BatchNorm -> ReLU -> MaxPool forward and backward, Adam over all
   parameters; PyTorch peers: cuDNN convolution and its gradients,
   BatchNorm2d + ReLU + MaxPool2d through autograd, torch.optim.Adam.
2. The whole training step (forward, loss read, backward, Adam) of each model
   at batch 16 and 64, hitcnn vs the same architecture in PyTorch (cuDNN,
   default TF32 for convolutions as PyTorch ships, and strict FP32).
   GEMM FLOPs counted analytically -> TFLOP/s; the fraction of the step
   outside kernels = 1 - (sum of kernel times, from torch.profiler's CUPTI
   trace, which also sees CuPy's kernels) / wall time.
3. One epoch of 6,400 images of 3 x 102 x 159 (fma_small's training split)
   with cnn6_rgb at batch 64: data resident on the GPU (device_batches) and
   streamed from host memory (PinnedPrefetcher).

The short table is printed last.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import cupy as cp  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import kernels  # noqa: E402
from engine.layers import Conv2d, Linear  # noqa: E402
from engine.losses import SoftmaxCrossEntropy  # noqa: E402
from engine.models import HIDDEN, MODELS, build  # noqa: E402
from engine.optim import Adam  # noqa: E402

G = kernels.get_backend("gpu")
H, W = 102, 159
SUMMARY = []


def median_ms(fn, reps=20, warmup=3, lib="cupy"):
    """Median milliseconds of ``fn()`` over ``reps`` event-timed calls (after ``warmup``)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if lib == "cupy":
            a, b = cp.cuda.Event(), cp.cuda.Event()
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(cp.cuda.get_elapsed_time(a, b))
        else:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
    return float(np.median(times))


def cnn6_layers():
    """(C, F, H, W) of each conv of cnn6_rgb on 102 x 159."""
    c, h, w, out = 3, H, W, []
    for f in MODELS["cnn6_rgb"][1]:
        out.append((c, f, h, w))
        c, h, w = f, h // 2, w // 2
    return out


# ----------------------------------------------------------------------------- 1. kernels
def bench_kernels(batch, rows):
    """Time each GPU kernel against its PyTorch/cuDNN counterpart (CUDA events, medians); return table rows."""
    rng = np.random.default_rng(0)
    ws = kernels.Workspace()
    for (c, f, h, w) in cnn6_layers():
        x = cp.asarray(rng.standard_normal((batch, c, h, w), dtype=np.float32))
        wt = cp.asarray(rng.standard_normal((f, c, 3, 3), dtype=np.float32) * 0.1)
        b = cp.zeros(f, np.float32)
        out = cp.empty((batch, f, h, w), np.float32)
        dy = cp.asarray(rng.standard_normal((batch, f, h, w), dtype=np.float32))
        dx, dw, db = cp.empty_like(x), cp.zeros_like(wt), cp.zeros_like(b)
        flops = 2.0 * batch * f * h * w * c * 9
        tx, twt, tdy = (torch.as_tensor(a, device="cuda") for a in (x, wt, dy))
        tb = torch.zeros(f, device="cuda")
        name = f"conv {c}->{f} {h}x{w}"
        ours = [median_ms(lambda: G.conv2d.conv2d_forward(out, x, wt, b, 1, 1, ws)),
                median_ms(lambda: G.conv2d.conv2d_backward_input(dx, dy, wt, 1, 1, ws)),
                median_ms(lambda: G.conv2d.conv2d_backward_weight(dw, db, dy, x, 1, 1, ws))]
        peer = [median_ms(lambda: F.conv2d(tx, twt, tb, 1, 1), lib="torch"),
                median_ms(lambda: torch.nn.grad.conv2d_input(tx.shape, twt, tdy, 1, 1), lib="torch"),
                median_ms(lambda: torch.nn.grad.conv2d_weight(tx, twt.shape, tdy, 1, 1), lib="torch")]
        for tag, o, p in zip(("fwd", "bwd-in", "bwd-w"), ours, peer):
            rows.append((batch, f"{name} {tag}", o, p, flops / o / 1e9))
        # fused BN -> ReLU -> pool on the conv output
        oh, ow = h // 2, w // 2
        pout, am = cp.empty((batch, f, oh, ow), np.float32), cp.empty((batch, f, oh, ow), np.int32)
        sm, si = cp.empty(f), cp.empty(f)
        g1, b0, rm, rv = cp.ones(f, np.float32), cp.zeros(f, np.float32), cp.zeros(f, np.float32), cp.ones(f, np.float32)
        pdy = cp.asarray(rng.standard_normal((batch, f, oh, ow), dtype=np.float32))
        dg, dbb = cp.zeros(f, np.float32), cp.zeros(f, np.float32)
        fz = G.fused
        o_f = median_ms(lambda: fz.bn_relu_pool_forward_train(pout, am, sm, si, out, g1, b0, rm, rv, 0.1, 1e-5, 2))
        bdx = cp.empty_like(out)
        o_b = median_ms(lambda: fz.bn_relu_pool_backward(bdx, dg, dbb, pdy, am, out, sm, si, g1, b0, 2))
        bn = nn.Sequential(nn.BatchNorm2d(f), nn.ReLU(), nn.MaxPool2d(2)).cuda()
        tin = torch.as_tensor(out, device="cuda").requires_grad_(True)
        tpdy = torch.as_tensor(pdy, device="cuda")
        p_f = median_ms(lambda: bn(tin), lib="torch")

        def torch_bn_bwd():
            y = bn(tin)
            y.backward(tpdy)
        p_fb = median_ms(torch_bn_bwd, lib="torch")
        rows.append((batch, f"bn+relu+pool {f}x{h}x{w} fwd", o_f, p_f, None))
        rows.append((batch, f"bn+relu+pool {f}x{h}x{w} fwd+bwd", o_f + o_b, p_fb, None))
    # Adam over cnn6_rgb's parameters: one multi-tensor launch vs torch.optim.Adam (foreach)
    m = build("cnn6_rgb").to("gpu")
    params = [p for _, p, _ in m.parameters()]
    grads = [cp.asarray(rng.standard_normal(p.shape, dtype=np.float32)) for p in params]
    ms_, vs_ = [cp.zeros_like(p) for p in params], [cp.zeros_like(p) for p in params]
    o = median_ms(lambda: G.adam.adam_update_multi(params, grads, ms_, vs_, 3, 5e-4, 0.9, 0.999, 1e-8, 0.0))
    o1 = median_ms(lambda: [G.adam.adam_update(p, g, a, v, 3, 5e-4, 0.9, 0.999, 1e-8, 0.0)
                            for p, g, a, v in zip(params, grads, ms_, vs_)])
    tp = [torch.nn.Parameter(torch.as_tensor(p, device="cuda").clone()) for p in params]
    for p, g in zip(tp, grads):
        p.grad = torch.as_tensor(g, device="cuda").clone()
    topt = torch.optim.Adam(tp, lr=5e-4)
    pt = median_ms(topt.step, lib="torch")
    rows.append((batch, "adam multi-tensor (cnn6 params)", o, pt, None))
    rows.append((batch, "adam per-tensor (cnn6 params)", o1, pt, None))


# ----------------------------------------------------------------------------- 2. training step
def torch_model(name, c_in):
    """The PyTorch twin of a hitcnn model (same layers and widths) on the GPU, for the side-by-side step timing."""
    widths = MODELS[name][1]
    layers, c, h, w = [], c_in, H, W
    for f in widths:
        layers += [nn.Conv2d(c, f, 3, padding=1), nn.BatchNorm2d(f), nn.ReLU(), nn.MaxPool2d(2)]
        c, h, w = f, h // 2, w // 2
    layers += [nn.Flatten(), nn.Linear(c * h * w, HIDDEN), nn.ReLU(), nn.Dropout(0.4), nn.Linear(HIDDEN, 3)]
    return nn.Sequential(*layers).cuda()


def step_flops(model, batch, c_in):
    """GEMM FLOPs of one training step (forward + both backward GEMMs; no input grad for the first conv)."""
    total, shape, first = 0.0, (batch, c_in, H, W), True
    for layer in model.layers:
        out = layer.output_shape(shape)
        if isinstance(layer, Conv2d):
            k = layer.in_channels * layer.kernel_size ** 2
            fl = 2.0 * batch * layer.out_channels * out[2] * out[3] * k
            total += fl * (2 if first else 3)
            first = False
        elif isinstance(layer, Linear):
            total += 3 * 2.0 * batch * layer.in_features * layer.out_features
        shape = out
    return total


def kernel_fraction(fn, steps):
    """(wall ms per step, fraction of wall time outside GPU kernels) via torch.profiler (CUPTI)."""
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            cp.cuda.Device().synchronize()
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            cp.cuda.Device().synchronize()
            wall = time.perf_counter() - t0
        from torch.autograd import DeviceType

        busy_us = sum(e.time_range.elapsed_us() for e in prof.events() if e.device_type == DeviceType.CUDA)
        if busy_us <= 0:
            return wall * 1e3 / steps, None
        return wall * 1e3 / steps, max(0.0, 1.0 - busy_us * 1e-6 / wall)
    except Exception as exc:  # profiler unavailable on this runtime
        print(f"  (profiler unavailable: {exc})")
        return None, None


def bench_steps(name, batch, steps, rows):
    """Time whole training steps (forward, loss, backward, Adam) of each model, hitcnn vs PyTorch+cuDNN; return table rows."""
    c_in = MODELS[name][0]
    rng = np.random.default_rng(1)
    x = cp.asarray(rng.random((batch, c_in, H, W), dtype=np.float32))
    y = cp.asarray(rng.integers(0, 3, batch).astype(np.int64))
    model = build(name, seed=0).to("gpu")
    opt, loss_fn = Adam(model), SoftmaxCrossEntropy()

    def ours():
        opt.zero_grad()
        loss_fn.forward(model.forward(x), y)  # returns a float: the step's one host sync
        model.backward(loss_fn.backward())
        opt.step()

    t_ours = median_ms(ours, reps=steps, warmup=3)
    wall, outside = kernel_fraction(ours, steps)
    flops = step_flops(model, batch, c_in)
    res = {"ours": t_ours}
    tx, ty = torch.as_tensor(x, device="cuda"), torch.as_tensor(y, device="cuda")
    for tf32 in (True, False):
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
        tm = torch_model(name, c_in)
        topt = torch.optim.Adam(tm.parameters(), lr=5e-4)

        def peer():
            topt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(tm(tx), ty)
            loss.backward()
            topt.step()
            loss.item()

        res["torch_tf32" if tf32 else "torch_fp32"] = median_ms(peer, reps=steps, warmup=5, lib="torch")
    torch.backends.cudnn.allow_tf32 = True
    ips = lambda ms: batch / ms * 1e3  # noqa: E731
    rows.append(dict(model=name, batch=batch, ours_ips=ips(res["ours"]), tf32_ips=ips(res["torch_tf32"]),
                     fp32_ips=ips(res["torch_fp32"]), tflops=flops / res["ours"] / 1e9, outside=outside,
                     ms=res["ours"]))


# ----------------------------------------------------------------------------- 3. one epoch
def bench_epoch(batch=64, n_images=6400):
    """Time one epoch of 6,400 random 3x102x159 images through cnn6_rgb on the GPU (the issue's 5 s target)."""
    from kernels.gpu.device import PinnedPrefetcher, device_batches

    rng = np.random.default_rng(2)
    host_x = rng.random((n_images, 3, H, W), dtype=np.float32)
    host_y = rng.integers(0, 3, n_images).astype(np.int64)
    model = build("cnn6_rgb", seed=0).to("gpu")
    opt, loss_fn = Adam(model), SoftmaxCrossEntropy()

    def train(batches):
        cp.cuda.Device().synchronize()
        t0 = time.perf_counter()
        for xb, yb in batches:
            opt.zero_grad()
            loss_fn.forward(model.forward(xb), yb)
            model.backward(loss_fn.backward())
            opt.step()
        cp.cuda.Device().synchronize()
        return time.perf_counter() - t0

    dx, dy = cp.asarray(host_x), cp.asarray(host_y)
    train(device_batches(dx[:batch * 3], dy[:batch * 3], batch))  # warm-up: compile, workspaces
    t_res = train(device_batches(dx, dy, batch, shuffle=True, seed=0))
    host_batches = ((host_x[i:i + batch], host_y[i:i + batch]) for i in range(0, n_images, batch))
    t_pin = train(PinnedPrefetcher(host_batches))
    return t_res, t_pin


def main():
    """Run every GPU benchmark and print the short table last."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--models", nargs="+", default=["cnn6_rgb", "cnn4_rgb", "cnn4_mono", "cnn2_mono"])
    ap.add_argument("--skip-kernels", action="store_true")
    args = ap.parse_args()
    props = cp.cuda.runtime.getDeviceProperties(0)
    print(f"device {props['name'].decode()} | cupy {cp.__version__} | torch {torch.__version__} "
          f"cudnn {torch.backends.cudnn.version()} | our GEMMs: cuBLAS FP32 (no TF32)")
    import traceback

    def guarded(what, fn, *a):
        """Run one section; on an error print it and go on, so the final table still prints."""
        try:
            return fn(*a)
        except Exception:
            print(f"!! {what} failed:\n{traceback.format_exc()}")
            return None

    krows = []
    if not args.skip_kernels:
        for b in args.batches:
            guarded(f"kernels at batch {b}", bench_kernels, b, krows)
        print("\n== kernels (median ms; ours vs PyTorch/cuDNN with its defaults) ==")
        print(f"{'N':>3} {'op':44s} {'ours':>8} {'torch':>8} {'ratio':>6} {'TFLOP/s':>8}")
        for b, op, o, p, tf in krows:
            print(f"{b:>3} {op:44s} {o:8.3f} {p:8.3f} {p / o:6.2f} {'' if tf is None else f'{tf:8.2f}'}")
    srows = []
    for name in args.models:
        for b in args.batches:
            guarded(f"training step {name} batch {b}", bench_steps, name, b, args.steps, srows)
    t_res, t_pin = guarded("epoch", bench_epoch) or (float("nan"), float("nan"))
    print("\n== training step: images/s (ratio = ours / torch; torch tf32 = cuDNN default, fp32 = TF32 off) ==")
    print(f"{'model':10s} {'N':>3} {'ours':>8} {'torch tf32':>10} {'torch fp32':>10} {'x tf32':>7} {'x fp32':>7} "
          f"{'ms/step':>8} {'TFLOP/s':>8} {'outside':>8}")
    for r in srows:
        out = "n/a" if r["outside"] is None else f"{100 * r['outside']:.0f}%"
        print(f"{r['model']:10s} {r['batch']:>3} {r['ours_ips']:8.0f} {r['tf32_ips']:10.0f} {r['fp32_ips']:10.0f} "
              f"{r['ours_ips'] / r['tf32_ips']:7.2f} {r['ours_ips'] / r['fp32_ips']:7.2f} {r['ms']:8.2f} "
              f"{r['tflops']:8.2f} {out:>8}")
    print(f"epoch of 6400 x 3x102x159, cnn6_rgb, batch 64: {t_res:.2f} s (data on GPU), "
          f"{t_pin:.2f} s (pinned host prefetch); target < 5 s")


if __name__ == "__main__":
    main()
