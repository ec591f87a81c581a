"""pipeline.stft: frame count, direct framing + rfft recomputation, librosa equality."""
import numpy as np
import pytest
from scipy.signal import get_window

from pipeline.errors import PipelineError
from pipeline.stft import hann_window, n_frames, stft


def _signal(n, seed=0):
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32) * 0.3


def _direct(y, n_fft, hop, center, pad_mode):
    """Textbook STFT in float64: explicit loop over frames, numpy.fft.rfft."""
    y = y.astype(np.float64)
    if center:
        y = np.pad(y, n_fft // 2, mode=pad_mode)
    w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    cols = [np.fft.rfft(w * y[t * hop: t * hop + n_fft]) for t in range((len(y) - n_fft) // hop + 1)]
    return np.stack(cols, axis=1)


def _frame_rel_err(D, ref):
    """Worst per-frame relative error ||D[:, t] - ref[:, t]|| / ||ref[:, t]||."""
    num = np.linalg.norm(D - ref, axis=0)
    den = np.maximum(np.linalg.norm(ref, axis=0), 1e-30)
    return float(np.max(num / den))


@pytest.mark.parametrize("n", [2048, 2049, 5000, 22050, 22050 * 2 + 511])
@pytest.mark.parametrize("center", [True, False])
def test_frame_count_formula(n, center):
    D = stft(_signal(n), n_fft=2048, hop_length=512, center=center)
    expect = 1 + n // 512 if center else 1 + (n - 2048) // 512
    assert D.shape == (1025, expect) == (1025, n_frames(n, 2048, 512, center))
    assert D.dtype == np.complex64


@pytest.mark.parametrize("n_fft,hop,center,pad_mode", [
    (2048, 512, True, "constant"), (2048, 512, True, "reflect"), (2048, 512, False, "constant"),
    (256, 64, True, "constant"), (512, 100, True, "edge"), (1024, 1024, True, "constant"),
])
def test_equals_direct_framing_rfft(n_fft, hop, center, pad_mode):
    y = _signal(9000, seed=n_fft + hop)
    D = stft(y, n_fft=n_fft, hop_length=hop, center=center, pad_mode=pad_mode)
    ref = _direct(y, n_fft, hop, center, pad_mode)
    assert D.shape == ref.shape
    assert _frame_rel_err(D, ref) < 1e-5
    # first and last frame explicitly (the padded edges)
    for t in (0, -1):
        np.testing.assert_allclose(D[:, t], ref[:, t], rtol=1e-4, atol=1e-5 * np.abs(ref[:, t]).max())


def test_float64_input_gives_complex128():
    y = _signal(4096).astype(np.float64)
    D = stft(y, n_fft=512, hop_length=128)
    assert D.dtype == np.complex128
    assert _frame_rel_err(D, _direct(y, 512, 128, True, "constant")) < 1e-12


def test_dc_row_is_sum_of_windowed_frame():
    y = np.ones(8192, np.float32)
    D = stft(y, n_fft=1024, hop_length=256, center=False)
    np.testing.assert_allclose(D[0].real, hann_window(1024).sum(), rtol=1e-5)  # sum of Hann = n_fft / 2
    np.testing.assert_allclose(D[0].real, 512.0, rtol=1e-5)


def test_periodic_hann_equals_scipy():
    np.testing.assert_allclose(hann_window(2048, np.float64), get_window("hann", 2048, fftbins=True), atol=1e-15)


@pytest.mark.parametrize("n_fft,hop,center,pad_mode", [
    (2048, 512, True, "constant"), (2048, 512, True, "reflect"), (2048, 512, False, "constant"),
    (256, 64, True, "constant"), (1024, 333, True, "edge"),
])
def test_equals_librosa(n_fft, hop, center, pad_mode):
    librosa = pytest.importorskip("librosa")
    y = _signal(22050 * 2 + 123, seed=7)
    D = stft(y, n_fft=n_fft, hop_length=hop, center=center, pad_mode=pad_mode)
    L = librosa.stft(y, n_fft=n_fft, hop_length=hop, center=center, pad_mode=pad_mode)
    assert D.shape == L.shape and D.dtype == L.dtype
    assert _frame_rel_err(D, L) < 1e-5
    for t in (0, -1):
        assert _frame_rel_err(D[:, [t]], L[:, [t]]) < 1e-5


@pytest.mark.parametrize("kwargs,match", [
    ({"y": np.zeros((2, 4096), np.float32)}, "1-D"),
    ({"y": np.array([1.0, np.nan] * 2048, np.float32)}, "NaN"),
    ({"y": np.zeros(100, np.float32), "center": False}, "too short"),
    ({"y": np.zeros(4096, np.float32), "pad_mode": "mirror"}, "pad_mode"),
    ({"y": np.zeros(4096, np.float32), "hop_length": 0}, "hop_length"),
    ({"y": np.zeros(4096, np.float32), "window": "hamming"}, "window"),
    ({"y": np.zeros(4096, np.int16)}, "dtype"),
])
def test_bad_input_raises(kwargs, match):
    with pytest.raises(PipelineError, match=match):
        stft(**kwargs)


def test_gpu_arrays_route_to_kernels_gpu_stft(monkeypatch):
    """A CuPy input goes to kernels.gpu.stft.stft with the same arguments (faked here, no GPU needed)."""
    import sys
    import types

    import kernels

    calls = []
    fake = types.ModuleType("kernels.gpu.stft")
    fake.stft = lambda y, **kw: calls.append(kw) or "gpu result"
    monkeypatch.setitem(sys.modules, "kernels.gpu.stft", fake)
    monkeypatch.setattr(kernels, "is_gpu_array", lambda a: True)
    assert stft(np.zeros(4096, np.float32), n_fft=512, hop_length=128, pad_mode="reflect") == "gpu result"
    assert calls == [dict(n_fft=512, hop_length=128, window="hann", center=True, pad_mode="reflect")]


def test_kept_work_buffer_never_aliases_results_and_is_per_thread():
    from concurrent.futures import ThreadPoolExecutor

    ys = [_signal(22050 + 97 * k, seed=k) for k in range(6)]
    first = stft(ys[0])
    kept = first.copy()
    serial = [stft(y) for y in ys]  # reuses the buffer the first call wrote its frames into
    np.testing.assert_array_equal(first, kept)
    with ThreadPoolExecutor(3) as ex:
        threaded = list(ex.map(stft, ys * 3))
    for k, D in enumerate(threaded):
        np.testing.assert_array_equal(D, serial[k % len(ys)])
