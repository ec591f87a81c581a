"""``python cli.py inspect RUN_DIR``: what backprop does inside each layer, for one batch.

For one mini-batch, in training mode, layer by layer (``Sequential``'s own
forward and backward with fusion off, so every layer's output is visible; a
trace hook of ``Sequential.forward`` reads each output):

- ``act_mean``, ``act_std``: mean and standard deviation of the layer's output;
- ``dead_frac`` (ReLU layers): fraction of units (one unit = one channel at one
  position, or one feature) that output 0 for *every* sample of the batch --
  units that pass no gradient for this batch ("dead ReLUs", cs231n notes);
- ``zero_frac`` (ReLU layers): fraction of output elements that are 0;
- ``grad_norm`` (layers with parameters): L2 norm of all the layer's
  parameter gradients after backward of the mean cross-entropy;
- ``update_ratio``: ``||W_after - W_before|| / ||W_before||`` over the layer's
  parameters for one Adam step from the checkpoint's optimizer state (the
  rule of thumb is about 1e-3; much larger means a too-high learning rate).

The model and optimizer are loaded from the checkpoint and nothing is written
back to it; the results go to ``inspect.json``, ``inspect.md`` and
``inspect.png`` in the run directory.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import kernels


def _stats(out, kind):
    o = kernels.to_host(out).astype(np.float64)
    rec = dict(act_mean=float(o.mean()), act_std=float(o.std()), dead_frac=None, zero_frac=None)
    if kind == "ReLU":
        rec["dead_frac"] = float((o <= 0).all(axis=0).mean())
        rec["zero_frac"] = float((o <= 0).mean())
    return rec


def inspect_batch(model, opt, x, y):
    """Per-layer statistics for one batch ``(x, y)``; applies one Adam step to ``model``.

    Parameters
    ----------
    model : engine.model.Sequential
        Set to training mode; run unfused (every layer its own step) and without
        the input's gradient, its ``fuse`` and ``input_grad`` restored afterwards.
    opt : engine.optim.Adam
        Over ``model.parameters()`` (state from the checkpoint).
    x : array [shape=(N, C, H, W), dtype=float32]
    y : array [shape=(N,), dtype=int64]

    Returns
    -------
    rows : list of dict
        One per layer: ``index``, ``layer`` (name), ``output_shape``,
        ``act_mean``, ``act_std``, ``dead_frac``, ``zero_frac``, ``grad_norm``,
        ``param_norm``, ``update_ratio`` (None where not applicable), plus
        ``loss`` on the first row.
    """
    from engine.losses import SoftmaxCrossEntropy

    model.train()
    model.zero_grad()
    rows = []

    def record(i, layer, out):
        kind = type(layer).__name__
        rows.append(dict(index=i, layer=f"{i}:{kind}", output_shape=list(out.shape), **_stats(out, kind)))

    fuse, input_grad = model.fuse, model.input_grad
    model.fuse, model.input_grad = False, False
    try:
        h = model.forward(x, trace=record)
        crit = SoftmaxCrossEntropy()
        loss = float(crit.forward(h, y))
        model.backward(crit.backward())
    finally:
        model.fuse, model.input_grad = fuse, input_grad
    before = []
    for i, layer in enumerate(model.layers):
        ps = getattr(layer, "params", {}) or {}
        gs = getattr(layer, "grads", {}) or {}
        if ps:
            g2 = sum(float((kernels.to_host(g).astype(np.float64) ** 2).sum()) for g in gs.values())
            w2 = sum(float((kernels.to_host(p).astype(np.float64) ** 2).sum()) for p in ps.values())
            rows[i].update(grad_norm=g2 ** 0.5, param_norm=w2 ** 0.5)
            before.append((i, {k: kernels.to_host(p).astype(np.float64).copy() for k, p in ps.items()}))
        else:
            rows[i].update(grad_norm=None, param_norm=None, update_ratio=None)
    opt.step()
    for i, saved in before:
        ps = model.layers[i].params
        d2 = sum(float(((kernels.to_host(ps[k]).astype(np.float64) - v) ** 2).sum()) for k, v in saved.items())
        w2 = sum(float((v ** 2).sum()) for v in saved.values())
        rows[i]["update_ratio"] = (d2 ** 0.5) / max(w2 ** 0.5, 1e-30)
    rows[0]["loss"] = loss
    return rows


def format_table(rows) -> str:
    """Markdown table of :func:`inspect_batch` rows."""
    def f(v, spec):
        return "" if v is None else format(v, spec)

    head = "| layer | output shape | act mean | act std | dead ReLU | zero frac | grad norm | update/weight |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['layer']} | {tuple(r['output_shape'])} | {f(r['act_mean'], '.4g')} | "
                     f"{f(r['act_std'], '.4g')} | {f(r['dead_frac'], '.3f')} | {f(r['zero_frac'], '.3f')} | "
                     f"{f(r.get('grad_norm'), '.3e')} | {f(r.get('update_ratio'), '.3e')} |")
    if rows and "loss" in rows[0]:
        lines.append(f"\nbatch loss {rows[0]['loss']:.4f}")
    return "\n".join(lines)


def inspect_run(run_dir, cfg, dataset, model, split="train", batch_size=16, checkpoint="last"):
    """Load the run's optimizer state, take the first batch of ``split`` and write the outputs.

    Returns the rows of :func:`inspect_batch`; writes ``inspect.json``,
    ``inspect.md`` and ``inspect.png`` into ``run_dir``.
    """
    from engine import plots
    from engine.batches import first_batch
    from engine.config import make_optimizer, model_mode
    from engine.run import load_state

    run = Path(run_dir)
    opt = make_optimizer(model, cfg)
    load_state(run / "checkpoints" / f"{checkpoint}.npz", model, opt)
    mode = model_mode(cfg.model)
    x, y = first_batch(dataset, split, batch_size, mode, shuffle=True, seed=cfg.seed)
    dev = kernels.get_backend(cfg.device).device
    x, y = dev.to_device(x), dev.to_device(y)
    rows = inspect_batch(model, opt, x, y)
    (run / "inspect.json").write_text(json.dumps(rows, indent=2))
    (run / "inspect.md").write_text(f"# inspect: one {split} batch of {len(y)}, {checkpoint} checkpoint\n\n"
                                    + format_table(rows) + "\n")
    plots.plot_inspect(rows, run / "inspect.png")
    return rows
