"""pipeline.spectrogram: dB, mel, resize, images, crops (ok / padded / skipped)."""
import matplotlib
import numpy as np
import pytest

from audio_fixtures import sine, tags_only_mp3, truncated_mp3, write_mp3, write_wav, zero_byte
from pipeline import clips as Cl
from pipeline import spectral as Sp
from pipeline import spectrogram as S
from pipeline import windows as Wn
from pipeline.errors import PipelineError

SMALL = S.SpectrogramConfig(sr=8000, crop_seconds=1.0, n_fft=256, hop_length=64)


# ------------------------------------------------------------------ dB

def test_power_to_db_formula_and_silence_is_finite():
    P = np.array([[0.0, 1e-12, 1e-10], [1.0, 100.0, 1e4]], np.float32)
    db = Sp.power_to_db(P, top_db=None)
    np.testing.assert_allclose(db, [[-100, -100, -100], [0, 20, 40]], atol=1e-4)
    db80 = Sp.power_to_db(P)  # floor at max - 80 = -40
    np.testing.assert_allclose(db80, [[-40, -40, -40], [0, 20, 40]], atol=1e-4)
    silence = Sp.power_to_db(np.zeros((5, 7), np.float32))
    assert np.all(np.isfinite(silence)) and np.all(silence == pytest.approx(-100.0))
    np.testing.assert_allclose(Sp.power_to_db(P, ref=np.max, top_db=None)[1], [-40, -20, 0], atol=1e-4)


def test_amplitude_to_db_is_power_to_db_of_square():
    A = np.abs(np.random.default_rng(0).standard_normal((20, 30))).astype(np.float32)
    np.testing.assert_allclose(Sp.amplitude_to_db(A), Sp.power_to_db(A ** 2), rtol=1e-6)
    np.testing.assert_allclose(Sp.amplitude_to_db(np.array([10.0]), top_db=None), [20.0])


@pytest.mark.parametrize("ref", [1.0, np.max, 3.5])
@pytest.mark.parametrize("top_db", [80.0, None, 40.0])
def test_db_equals_librosa(ref, top_db):
    librosa = pytest.importorskip("librosa")
    rng = np.random.default_rng(1)
    A = (np.abs(rng.standard_normal((64, 50))) * rng.uniform(0, 1, (64, 50)) ** 8).astype(np.float32)
    A[:3] = 0.0  # digital silence rows
    np.testing.assert_allclose(Sp.amplitude_to_db(A, ref=ref, top_db=top_db),
                               librosa.amplitude_to_db(A, ref=ref, top_db=top_db), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(Sp.power_to_db(A ** 2, ref=ref, top_db=top_db),
                               librosa.power_to_db(A ** 2, ref=ref, top_db=top_db), rtol=1e-5, atol=1e-4)


def test_db_bad_arguments():
    with pytest.raises(PipelineError, match="amin"):
        Sp.power_to_db(np.ones(3), amin=0)
    with pytest.raises(PipelineError, match="top_db"):
        Sp.power_to_db(np.ones(3), top_db=-1)
    with pytest.raises(PipelineError, match="complex"):
        Sp.power_to_db(np.ones(3, np.complex64))


# ------------------------------------------------------------------ mel

@pytest.mark.parametrize("sr,n_fft,n_mels", [(22050, 2048, 128), (8000, 256, 40), (44100, 1024, 64)])
def test_mel_filterbank_equals_librosa(sr, n_fft, n_mels):
    librosa = pytest.importorskip("librosa")
    ours = Sp.mel_filterbank(sr, n_fft, n_mels)
    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, htk=False, norm="slaney")
    assert ours.shape == ref.shape == (n_mels, 1 + n_fft // 2) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-9)


def test_mel_scale_slaney_points():
    # Slaney: linear 200/3 Hz per mel below 1 kHz, 15 mel at 1 kHz, log above.
    np.testing.assert_allclose(Sp.hz_to_mel([0, 200 / 3, 1000, 6400]), [0, 1, 15, 42], atol=1e-9)
    np.testing.assert_allclose(Sp.mel_to_hz(Sp.hz_to_mel([55.0, 440.0, 3520.0])), [55.0, 440.0, 3520.0])


def test_mel_filterbank_rows_are_ordered_triangles():
    fb = Sp.mel_filterbank(22050, 2048, 128)
    peaks = fb.argmax(axis=1)
    assert np.all(np.diff(peaks) >= 0) and np.all(fb >= 0)
    assert np.all(fb.sum(axis=1) > 0)


# ------------------------------------------------------------------ resize and images

def test_resize_matrix_area_and_bilinear():
    R = Sp.resize_matrix(4, 2)
    np.testing.assert_allclose(R, [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])
    R3 = Sp.resize_matrix(3, 2)  # cells cover 1.5 inputs each
    np.testing.assert_allclose(R3, [[2 / 3, 1 / 3, 0], [0, 1 / 3, 2 / 3]], atol=1e-7)
    U = Sp.resize_matrix(2, 4)  # half-pixel bilinear, clamped
    np.testing.assert_allclose(U, [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
    for n_in, n_out in [(1025, 102), (431, 159), (129, 102), (126, 159)]:
        np.testing.assert_allclose(Sp.resize_matrix(n_in, n_out).sum(axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("shape,size", [((1025, 431), (102, 159)), ((129, 126), (102, 159)),
                                        ((7, 5), (3, 11)), ((128, 431), (102, 159))])
def test_resize_equals_matrix_form(shape, size):
    X = np.random.default_rng(0).uniform(-100, 40, shape).astype(np.float32)
    Rh = Sp.resize_matrix(shape[0], size[0]).astype(np.float64)
    Rw = Sp.resize_matrix(shape[1], size[1]).astype(np.float64)
    expect = Rh @ X.astype(np.float64) @ Rw.T
    out = Sp.resize(X, *size)
    assert out.shape == size and out.dtype == np.float32
    np.testing.assert_allclose(out, expect, rtol=1e-5, atol=1e-4)


def test_to_image_shape_range_and_orientation():
    cfg = S.SpectrogramConfig()
    y = sine(10.0, 22050, 200.0)  # low tone -> bright near row 0
    img = S.to_image(S.spectrogram_db(y, cfg), cfg)
    assert img.shape == (1, 102, 159) and img.dtype == np.float32
    assert img.min() == 0.0 and img.max() == pytest.approx(1.0, abs=1e-6)
    bright_row = img[0].mean(axis=1).argmax()
    assert bright_row == int(200 / 11025 * 102)  # row 0 = lowest frequency
    rgb = S.to_image(S.spectrogram_db(y, S.SpectrogramConfig(mode="rgb")), S.SpectrogramConfig(mode="rgb"))
    assert rgb.shape == (3, 102, 159) and rgb.dtype == np.float32
    # the colormap applied once, to the quantised mono image (the cache's read-time half)
    q = np.rint(S.mono_image(S.spectrogram_db(y, cfg), cfg) * 255).astype(np.uint8)
    np.testing.assert_array_equal(img[0], q.astype(np.float32) * np.float32(1 / 255))
    expect = matplotlib.colormaps["viridis"](q / 255.0)[..., :3].transpose(2, 0, 1)
    np.testing.assert_allclose(rgb, expect, atol=1e-7)


def test_model_input_halves():
    q = np.array([[[0, 128, 255]]], np.uint8)
    np.testing.assert_array_equal(S.model_input(q, "mono"), q[:, None].astype(np.float32) * np.float32(1 / 255))
    rgb = S.model_input(q, "rgb", "viridis")
    assert rgb.shape == (1, 3, 1, 3) and rgb.flags.c_contiguous
    np.testing.assert_array_equal(rgb[0, :, 0, :], S.colormap_lut("viridis")[q[0, 0]].T)
    assert S.model_input(q[0], "mono").shape == (1, 1, 3)
    assert S.quantize(np.array([0.0, 0.5 / 255 - 1e-6, 0.5, 1.0])).tolist() == [0, 0, 128, 255]
    with pytest.raises(PipelineError, match="uint8"):
        S.model_input(q.astype(np.float32), "mono")
    with pytest.raises(PipelineError, match="mode"):
        S.model_input(q, "grey")


def test_to_image_constant_gives_zeros_and_nan_raises():
    cfg = S.SpectrogramConfig()
    z = S.to_image(np.full((1025, 431), -100.0, np.float32), cfg)
    assert np.array_equal(z, np.zeros((1, 102, 159), np.float32))
    bad = np.zeros((1025, 431), np.float32)
    bad[5, 5] = np.nan
    with pytest.raises(PipelineError, match="NaN"):
        S.to_image(bad, S.SpectrogramConfig(mode="rgb"))
    bad[5, 5] = np.inf
    with pytest.raises(PipelineError, match="inf"):
        S.to_image(bad, cfg)


def test_colormap_lut_matches_matplotlib_quantisation():
    lut = S.colormap_lut("viridis")
    q = np.arange(256, dtype=np.uint8)
    np.testing.assert_allclose(lut[q], matplotlib.colormaps["viridis"](q / 255.0)[:, :3], atol=1e-7)
    with pytest.raises(PipelineError, match="colormap"):
        S.colormap_lut("no-such-map")


def test_mel_config_image():
    cfg = S.SpectrogramConfig(spectrogram="mel", n_mels=128)
    y = sine(10.0, 22050, 3000.0)
    db = S.spectrogram_db(y, cfg)
    assert db.shape == (128, 431)
    assert S.to_image(db, cfg).shape == (1, 102, 159)


def _floor_reference(S_db, height, width):
    """float64 reference of mono_image(norm='floor'): resize, subtract each row's 10th percentile, clip, / max."""
    x = (Sp.resize_matrix(S_db.shape[0], height).astype(np.float64) @ np.asarray(S_db, np.float64)
         @ Sp.resize_matrix(S_db.shape[1], width).astype(np.float64).T)
    d = np.maximum(x - np.percentile(x, S.FLOOR_PERCENTILE, axis=1, keepdims=True), 0.0)
    return d / d.max()


def test_floor_norm_equals_float64_reference():
    rng = np.random.default_rng(0)
    db = (rng.standard_normal((129, 90)) * 10 - 40).astype(np.float32)
    cfg = S.SpectrogramConfig(norm="floor", height=102, width=60)
    img = S.mono_image(db, cfg, width=60)
    assert img.dtype == np.float32 and img.shape == (102, 60) and img.min() == 0.0
    assert img.max() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(img, _floor_reference(db, 102, 60), atol=2e-6)
    # each row's floor is level 0: at least 10 % of every row's columns are the floor
    assert ((img == 0).mean(axis=1) >= 0.1 - 1e-9).all()
    assert S.SpectrogramConfig().norm == "minmax"  # the paper's scaling stays the default of the config


def test_floor_norm_removes_a_fixed_colouring_and_a_stationary_background():
    """A per-frequency gain (microphone, room) does not change the 'floor' image; 'minmax' changes; a
    clip whose every row is constant (stationary noise, silence) is all floor."""
    rng = np.random.default_rng(1)
    db = (rng.standard_normal((129, 120)) * 8 - 50).astype(np.float32)
    tilt = np.linspace(-30, 10, 129, dtype=np.float32)[:, None]  # a smooth channel colouring, in dB
    cfg = S.SpectrogramConfig(norm="floor", height=129, width=120)  # no resize: rows are bins
    np.testing.assert_allclose(S.mono_image(db + tilt, cfg, 120), S.mono_image(db, cfg, 120), atol=1e-5)
    mm = S.SpectrogramConfig(height=129, width=120)
    assert np.abs(S.mono_image(db + tilt, mm, 120) - S.mono_image(db, mm, 120)).max() > 0.1
    flat = np.repeat(np.linspace(-80, -20, 129, dtype=np.float32)[:, None], 120, axis=1)
    assert not S.mono_image(flat, cfg, 120).any()
    assert not S.to_image(np.full((129, 31), -100.0, np.float32), S.SpectrogramConfig(norm="floor")).any()


def test_floor_norm_through_the_clip_chain(tmp_path):
    """track_clip / track_images with norm='floor': the cached half's floor is over the clip's columns, and
    the windows are slices of it (padding = level 0 = the floor)."""
    y = (sine(0.5, 8000, 700.0) + 0.01 * np.random.default_rng(2).standard_normal(4000)).astype(np.float32)
    path = write_wav(tmp_path / "a.wav", y, 8000)
    cfg = S.SpectrogramConfig(sr=8000, crop_seconds=1.0, n_fft=256, hop_length=64, norm="floor")
    img, info = Cl.track_clip(path, cfg)
    assert info["status"] == "padded" and img.shape[1] < cfg.width
    yy, _ = Cl.clip(path, cfg)
    ref = _floor_reference(S.spectrogram_db(yy, cfg), cfg.height, img.shape[1])
    np.testing.assert_allclose(img, ref, atol=2e-6)
    x, _ = Cl.track_images(path, cfg, n_crops=1)
    s0 = (img.shape[1] - cfg.width) // 2
    q = S.quantize(img)
    expect = np.zeros((cfg.height, cfg.width), np.uint8)
    expect[:, -s0:-s0 + img.shape[1]] = q
    np.testing.assert_array_equal(x[0, 0], expect.astype(np.float32) * np.float32(1 / 255))


@pytest.mark.parametrize("field,value", [("mode", "grey"), ("spectrogram", "cqt"), ("sr", 0),
                                         ("crop_seconds", -1.0), ("height", 0), ("n_fft", 2.5),
                                         ("norm", "zscore")])
def test_config_validation(field, value):
    with pytest.raises(PipelineError, match=field):
        S.SpectrogramConfig(**{field: value})


# ------------------------------------------------------------------ crops

def test_crop_reproducible_and_seeded(tmp_path):
    y = np.random.default_rng(0).uniform(-0.5, 0.5, 5 * 8000).astype(np.float32)
    p = write_wav(tmp_path / "noise.wav", y, 8000)
    a, ia = Cl.crop(p, SMALL, seed=3, track_id=17)
    b, ib = Cl.crop(p, SMALL, seed=3, track_id=17)
    assert ia == ib and np.array_equal(a, b) and ia["status"] == "ok"
    start = int(round(ia["offset_s"] * 8000))
    np.testing.assert_array_equal(a, y[start:start + 8000])  # the crop is the window it claims
    offsets = {Cl.crop(p, SMALL, seed=s, track_id=17)[1]["offset_s"] for s in range(8)}
    assert len(offsets) > 4  # different seeds, different windows
    assert all(0 <= o <= 4.0 for o in offsets)


def test_crop_of_exact_length_starts_at_zero(tmp_path):
    p = write_wav(tmp_path / "one.wav", sine(1.0, 8000), 8000)
    for seed in range(5):
        y, info = Cl.crop(p, SMALL, seed=seed)
        assert info["offset_s"] == 0.0 and info["status"] == "ok" and len(y) == 8000


def test_short_clip_is_padded_and_flagged(tmp_path):
    p = write_wav(tmp_path / "short.wav", sine(0.3, 8000), 8000)
    y, info = Cl.crop(p, SMALL, seed=0)
    assert len(y) == 8000 and info["status"] == "padded" and "0.300 s" in info["reason"]
    assert np.all(y[2400:] == 0) and np.any(y[:2400] != 0)


def test_silence_gives_zero_image(tmp_path):
    p = write_wav(tmp_path / "silence.wav", np.zeros(16000, np.float32), 8000)
    img, info = Cl.track_clip(p, SMALL)
    assert np.array_equal(img, np.zeros((102, SMALL.columns(16000)), np.float32))
    assert info["status"] == "ok" and "silence" in info["reason"]
    imgs, info = Cl.track_images(p, SMALL, n_crops=2)
    assert np.array_equal(imgs, np.zeros((2, 1, 102, 159), np.float32)) and "silence" in info["reason"]


def test_truncated_mp3_header_lie_gives_padded_crop(tmp_path):
    p = truncated_mp3(tmp_path / "t.mp3", seconds=3.0, sr=22050, keep=0.4)
    cfg = S.SpectrogramConfig(crop_seconds=2.0)
    y, info = Cl.crop(p, cfg, seed=1)
    assert len(y) == 44100 and info["status"] == "padded"
    assert 0.3 < info["decoded_s"] < 1.8  # real data, not the header's 3 s


@pytest.mark.parametrize("maker", [zero_byte, tags_only_mp3])
def test_unusable_files_raise(tmp_path, maker):
    p = maker(tmp_path / "bad.mp3")
    with pytest.raises(PipelineError, match="bad.mp3"):
        Cl.track_clip(p, SMALL)


def test_stereo_44k_mp3_end_to_end(tmp_path):
    y = np.stack([sine(12.0, 44100, 440.0), sine(12.0, 44100, 880.0)], axis=1)
    p = write_mp3(tmp_path / "st.mp3", y, 44100)
    img, info = Cl.track_images(p, S.SpectrogramConfig(mode="rgb"), n_crops=1)
    assert img.shape == (1, 3, 102, 159) and info["status"] == "ok" and info["offset_s"] == 0.0
    assert 0.0 <= img.min() and img.max() <= 1.0 and info["decoded_s"] == pytest.approx(12.0, abs=1e-3)


def test_track_images_evenly_spaced(tmp_path):
    p = write_wav(tmp_path / "three.wav", sine(3.0, 8000), 8000)
    imgs, info = Cl.track_images(p, SMALL, n_crops=3)  # a 3 s clip: windows at 0, 1 and 2 s
    w = SMALL.columns(24000)
    assert imgs.shape == (3, 1, 102, 159) and w == 474
    assert Wn.window_starts([w], 159, Wn.Windows("even", n=3)).tolist() == [[0, 158, 315]]
    np.testing.assert_allclose(info["offsets_s"], [0.0, 1.0, 2.0], atol=0.01)
    img, _ = Cl.track_clip(p, SMALL)
    q = S.quantize(img)
    for k, c in enumerate((0, 158, 315)):
        np.testing.assert_array_equal(imgs[k, 0], S.model_input(q[:, c:c + 159], "mono")[0])
    with pytest.raises(PipelineError, match="n_crops"):
        Cl.track_images(p, SMALL, n_crops=0)


def test_track_images_refuses_less_than_one_frame_like_preprocessing(tmp_path):
    """Prediction and preprocessing share one threshold (n_fft samples) and one message."""
    n = SMALL.n_fft - 1
    p = write_wav(tmp_path / "blip.wav", sine(n / 8000, 8000)[:n], 8000)
    with pytest.raises(PipelineError) as pred:
        Cl.track_images(p, SMALL, n_crops=2)
    with pytest.raises(PipelineError) as prep:
        Cl.track_clip(p, SMALL)
    assert str(pred.value) == str(prep.value)
    assert f"blip.wav': {n} samples" in str(pred.value) and f"n_fft={SMALL.n_fft}" in str(pred.value)
    ok = write_wav(tmp_path / "frame.wav", sine(1.0, 8000)[:SMALL.n_fft], 8000)  # exactly one frame: padded
    imgs, info = Cl.track_images(ok, SMALL)
    assert imgs.shape == (1, 1, 102, 159) and info["status"] == "padded"


def test_track_images_refuses_fma_mini_24_sample_clip(fma_mini):
    p = fma_mini / "fma_small" / "000" / "000194.mp3"
    with pytest.raises(PipelineError, match=r"000194\.mp3': 24 samples .* fewer than one STFT frame \(n_fft=2048\)"):
        Cl.track_images(p, S.SpectrogramConfig())


def test_fma_mini_real_clip(fma_mini):
    p = fma_mini / "fma_small" / "000" / "000002.mp3"
    cfg = S.SpectrogramConfig()
    img, info = Cl.track_clip(p, cfg)
    assert info["status"] == "ok" and 29.0 < info["decoded_s"] <= 30.0 and info["offset_s"] == 0.0
    assert img.shape == (102, cfg.columns(int(round(info["decoded_s"] * cfg.sr)))) and 470 <= img.shape[1] <= 477
    assert img.std() > 0.05  # real music, not a flat image


@pytest.mark.parametrize("kind", ["stft", "mel"])
def test_spectrogram_db_equals_librosa_chain(kind):
    librosa = pytest.importorskip("librosa")
    cfg = S.SpectrogramConfig(spectrogram=kind)
    y = (sine(3.0, 22050, 440.0) + 0.05 * np.random.default_rng(0).standard_normal(66150)).astype(np.float32)
    ours = S.spectrogram_db(y, cfg)
    if kind == "stft":
        ref = librosa.amplitude_to_db(np.abs(librosa.stft(y, n_fft=2048, hop_length=512)), ref=1.0)
    else:
        M = librosa.feature.melspectrogram(y=y, sr=22050, n_fft=2048, hop_length=512, n_mels=128,
                                           power=2.0, htk=False, norm="slaney")
        ref = librosa.power_to_db(M, ref=1.0)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=2e-3)  # dB; float32 spectra


def test_spectrogram_db_is_power_to_db_of_stft_power():
    from pipeline.stft import stft

    cfg = S.SpectrogramConfig(sr=8000, crop_seconds=1.0, n_fft=256, hop_length=64, top_db=60.0)
    y = sine(1.0, 8000, 700.0) * np.linspace(0, 1, 8000, dtype=np.float32)
    D = stft(y, 256, 64)
    np.testing.assert_allclose(S.spectrogram_db(y, cfg), Sp.power_to_db(np.abs(D) ** 2, top_db=60.0),
                               rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------ clips and windows (issue 8, part 2)

def test_columns_keep_the_crop_ratio():
    assert SMALL.columns(SMALL.n_crop) == SMALL.width == 159
    assert SMALL.n_clip == 3 * SMALL.n_crop and SMALL.clip_width == SMALL.columns(24000) == 474
    cfg = S.SpectrogramConfig()  # the paper's: 10 s windows of 30 s clips
    assert cfg.columns(cfg.n_crop) == 159 and cfg.clip_width == 477
    assert S.SpectrogramConfig(clip_seconds=12.0).n_clip == 12 * 22050
    with pytest.raises(PipelineError, match="clip_seconds"):
        S.SpectrogramConfig(clip_seconds=5.0)  # shorter than a crop


def test_clip_of_a_long_file_is_its_centre_and_only_that_is_decoded(tmp_path, monkeypatch):
    """Issue 10 item 18: a long recording costs clip_seconds of decoding, and silence is reported."""
    sr = 8000
    y = np.zeros(60 * sr, np.float32)
    y[29 * sr:31 * sr] = sine(2.0, sr, 500.0)  # a tone only in the middle two seconds
    p = write_wav(tmp_path / "long.wav", y, sr)
    from pipeline import audio

    calls = []
    real = audio.load

    def spy(path, *a, **kw):
        calls.append(kw)
        return real(path, *a, **kw)

    monkeypatch.setattr(audio, "load", spy)
    got, info = Cl.clip(p, SMALL)  # SMALL: 3 s clips
    assert len(got) == 3 * sr and info["offset_s"] == pytest.approx(28.5) and info["duration_s"] == 60.0
    np.testing.assert_array_equal(got, y[int(28.5 * sr):int(31.5 * sr)])
    assert len(calls) == 1 and calls[0]["duration"] < 3.01  # seeked: never the whole minute
    assert "silence" not in info["reason"]
    quiet = write_wav(tmp_path / "quiet.wav", np.zeros(60 * sr, np.float32), sr)
    _, info = Cl.clip(quiet, SMALL)
    assert info["status"] == "ok" and info["reason"] == "digital silence"


def test_window_rules():
    w = np.array([474, 474, 159, 100, 300])
    keys = np.array([1, 2, 3, 4, 5])
    r0 = Wn.window_starts(w, 159, Wn.Windows("random", seed=0, epoch=0), keys)
    assert r0.shape == (5, 1)
    np.testing.assert_array_equal(r0, Wn.window_starts(w, 159, Wn.Windows("random", seed=0, epoch=0), keys))
    # one track's window depends on (seed, epoch, key) only: not on the other tracks of the batch
    assert Wn.window_starts(w[1:2], 159, Wn.Windows("random", seed=0, epoch=0), keys[1:2])[0, 0] == r0[1, 0]
    epochs = np.concatenate([Wn.window_starts(w, 159, Wn.Windows("random", seed=0, epoch=e), keys)
                             for e in range(40)], axis=1)
    assert np.all(epochs[0] >= 0) and np.all(epochs[0] <= 315) and len(set(epochs[0])) > 20
    assert set(epochs[2]) == {0}  # exactly one window long
    assert np.all(epochs[3] <= 0) and np.all(epochs[3] >= -59) and len(set(epochs[3])) > 10  # short: placed inside
    fixed = [Wn.window_starts(w, 159, Wn.Windows("fixed", seed=4), keys) for _ in range(2)]
    np.testing.assert_array_equal(fixed[0], fixed[1])
    assert not np.array_equal(Wn.window_starts(w, 159, Wn.Windows("fixed", seed=5), keys), fixed[0])
    even = Wn.window_starts(w, 159, Wn.Windows("even", n=3))
    assert even.tolist() == [[0, 158, 315], [0, 158, 315], [0, 0, 0], [0, -30, -59], [0, 70, 141]]
    assert Wn.window_starts(w, 159, Wn.Windows("even")).ravel().tolist() == [157, 157, 0, -30, 70]
    with pytest.raises(PipelineError, match="keys"):
        Wn.window_starts(w, 159, Wn.Windows("random"))
    for bad in (dict(rule="middle"), dict(rule="even", n=0), dict(rule="random", n=2), dict(rule="fixed", seed=-1)):
        with pytest.raises(PipelineError):
            Wn.Windows(**bad)


def test_cut_windows_pads_with_the_floor():
    q = [np.arange(1, 1 + 3 * 10, dtype=np.uint8).reshape(3, 10), np.full((3, 12), 7, np.uint8)]
    out = Wn.cut_windows(q, [10, 4], [-2, 2], 5)
    np.testing.assert_array_equal(out[0], np.concatenate([np.zeros((3, 2), np.uint8), q[0][:, :3]], axis=1))
    np.testing.assert_array_equal(out[1], np.concatenate([np.full((3, 2), 7, np.uint8),
                                                          np.zeros((3, 3), np.uint8)], axis=1))  # cols >= 4: floor
    np.testing.assert_array_equal(Wn.cut_windows(q[:1], [10], [3], 5)[0], q[0][:, 3:8])
