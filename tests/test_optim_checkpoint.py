"""Adam (vs the float64 reference, state) and checkpoints (bit-exact resume, atomic write, clear errors)."""
import os

import numpy as np
import pytest

from engine import models
from engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from engine.losses import SoftmaxCrossEntropy
from engine.optim import Adam
from engine.reference import adam as R


def test_adam_matches_reference_and_counts_steps():
    rng = np.random.default_rng(0)
    p = rng.standard_normal((3, 4))
    g = np.zeros_like(p)
    opt = Adam([("w", p, g)], lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)
    P, M, V = p.copy(), np.zeros_like(p), np.zeros_like(p)
    for t in range(1, 4):
        g[...] = rng.standard_normal(p.shape)
        opt.step()
        P, M, V = R.adam_update(P, g, M, V, t, 0.01, 0.8, 0.99, 1e-6, 0.1)
    assert opt.step_count == 3
    np.testing.assert_allclose(p, P, rtol=1e-13)
    np.testing.assert_allclose(opt.m["w"], M, rtol=1e-13)
    opt.zero_grad()
    assert np.all(g == 0)
    with pytest.raises(ValueError, match="lr > 0"):
        Adam([("w", p, g)], lr=0.0)


def test_adam_state_dict_round_trip():
    p, g = np.ones(5, np.float32), np.full(5, 0.5, np.float32)
    a = Adam([("w", p, g)])
    a.step()
    st = a.state_dict()
    p2 = np.ones(5, np.float32)
    b = Adam([("w", p2, g.copy())])
    b.load_state_dict(st)
    assert b.step_count == 1 and np.array_equal(b.m["w"], a.m["w"]) and np.array_equal(b.v["w"], a.v["w"])
    with pytest.raises(ValueError, match=r"v\[w\] has shape \(5,\), expected \(6,\)"):
        Adam([("w", np.ones(6, np.float32), np.ones(6, np.float32))]).load_state_dict({**st, "m": {"w": np.ones(6)}})


def _steps(model, opt, xs, ys):
    loss_fn = SoftmaxCrossEntropy()
    out = []
    for x, y in zip(xs, ys):
        out.append(loss_fn.forward(model.forward(x), y))
        model.zero_grad()
        model.backward(loss_fn.backward())
        opt.step()
    return out


def test_checkpoint_round_trip_resumes_bit_exactly(tmp_path):
    rng = np.random.default_rng(1)
    xs = [rng.random((4, 3, 32, 36), dtype=np.float32) for _ in range(4)]
    ys = [rng.integers(0, 3, 4).astype(np.int64) for _ in range(4)]
    shape = (3, 32, 36)
    # uninterrupted: 4 steps
    m = models.build("cnn4_rgb", in_shape=shape, seed=2)
    opt = Adam(m.parameters())
    full = _steps(m, opt, xs, ys)
    final = m.state_dict()
    # interrupted after 2 steps, saved, restored into fresh objects, 2 more steps
    m1 = models.build("cnn4_rgb", in_shape=shape, seed=2)
    o1 = Adam(m1.parameters())
    first = _steps(m1, o1, xs[:2], ys[:2])
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, m1, o1, extra={"epoch": 3, "batch": 2, "order_rng": {"state": [1, 2]}})
    assert sorted(os.listdir(tmp_path)) == ["ckpt.npz"]  # the temporary file was renamed away
    m2 = models.build("cnn4_rgb", in_shape=shape, seed=99)  # different init, different dropout stream
    o2 = Adam(m2.parameters())
    extra = load_checkpoint(path, m2, o2)
    assert extra == {"epoch": 3, "batch": 2, "order_rng": {"state": [1, 2]}}
    assert o2.step_count == 2
    rest = _steps(m2, o2, xs[2:], ys[2:])
    assert first + rest == full
    for k, v in final.items():
        assert np.array_equal(m2.state_dict()[k], v), k


def test_load_checkpoint_errors_name_the_file(tmp_path):
    m = models.build("cnn2_mono", in_shape=(1, 16, 16))
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_checkpoint(tmp_path / "nope.npz", m)
    bad = tmp_path / "corrupt.npz"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(CheckpointError, match="corrupt.npz"):
        load_checkpoint(bad, m)
    good = tmp_path / "small.npz"
    save_checkpoint(good, m, None, {})
    other = models.build("cnn2_mono", in_shape=(1, 20, 20))
    with pytest.raises(CheckpointError, match=r"small.npz.*9\.weight has shape \(512, 1024\), the model expects \(512, 1600\)"):
        load_checkpoint(good, other)
    with pytest.raises(CheckpointError, match="no optimizer state"):
        load_checkpoint(good, m, Adam(m.parameters()))


def test_save_checkpoint_replaces_existing_file_atomically(tmp_path):
    m = models.build("cnn2_mono", in_shape=(1, 16, 16), seed=0)
    path = tmp_path / "c.npz"
    save_checkpoint(path, m, None, {"v": 1})
    m.layers[0].params["weight"][...] = 0.5
    save_checkpoint(path, m, None, {"v": 2})
    m2 = models.build("cnn2_mono", in_shape=(1, 16, 16), seed=1)
    assert load_checkpoint(path, m2) == {"v": 2}
    assert np.all(m2.layers[0].params["weight"] == 0.5)
    assert sorted(os.listdir(tmp_path)) == ["c.npz"]
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(path, m, None, {"bad": object()})
    assert sorted(os.listdir(tmp_path)) == ["c.npz"]


def test_read_history_keeps_earlier_epochs_and_drops_a_damaged_line(tmp_path):
    import json

    from engine.run import read_history

    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"epoch": 1, "loss": 1.0}) + "\n" + '{"epoch": 2, "lo\n'
                    + json.dumps({"epoch": 3, "loss": 0.5}) + "\n" + json.dumps({"epoch": 4}) + "\n")
    said = []
    hist = read_history(path, 4, log=said.append)
    assert [h["epoch"] for h in hist] == [1, 3]
    assert len(said) == 1 and str(path) in said[0] and "line 2" in said[0]
    assert [json.loads(x)["epoch"] for x in path.read_text().splitlines()] == [1, 3]  # rewritten to the kept ones
