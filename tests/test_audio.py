"""pipeline.audio: decoding, mono, resampling, seeking, faults, descriptors."""
import math
import os

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from audio_fixtures import sine, tags_only_mp3, text_as_mp3, truncated_mp3, write_mp3, write_wav, zero_byte
from pipeline import audio, decoder_messages, resample
from pipeline.errors import PipelineError


def test_wav_round_trip_native_rate(tmp_path):
    y = sine(0.5, 8000, 440.0)
    p = write_wav(tmp_path / "s.wav", y, 8000)
    out, sr = audio.load(p, sr=None)
    assert sr == 8000 and out.dtype == np.float32 and out.shape == y.shape
    np.testing.assert_array_equal(out, y)


def test_stereo_mono_is_mean_and_channels_first(tmp_path):
    left, right = sine(0.3, 16000, 300.0), sine(0.3, 16000, 1234.0, amp=0.25)
    p = write_wav(tmp_path / "st.wav", np.stack([left, right], axis=1), 16000)
    mono, _ = audio.load(p, sr=None)
    np.testing.assert_allclose(mono, (left + right) / 2, rtol=0, atol=1e-7)
    both, _ = audio.load(p, sr=None, mono=False)
    assert both.shape == (2, len(left))
    np.testing.assert_array_equal(both[0], left)
    np.testing.assert_array_equal(both[1], right)


def test_resample_44k_to_22k_matches_scipy_and_keeps_pitch(tmp_path):
    y = sine(1.0, 44100, 1000.0)
    p = write_wav(tmp_path / "hi.wav", y, 44100)
    out, sr = audio.load(p, sr=22050)
    assert sr == 22050 and len(out) == 22050
    np.testing.assert_allclose(out, resample_poly(y, 1, 2, window=resample.resample_filter(1, 2)), atol=1e-6)
    spec = np.abs(np.fft.rfft(out * np.hanning(len(out))))
    assert abs(np.argmax(spec) * 22050 / len(out) - 1000.0) <= 1.0


def test_resample_rates_reduced_by_gcd():
    y = sine(0.5, 22050)
    out = resample.resample(y, 22050, 8000)  # up/down = 160/441
    assert len(out) == math.ceil(len(y) * 160 / 441)
    np.testing.assert_allclose(out, resample_poly(y, 160, 441, window=resample.resample_filter(160, 441)),
                               atol=1e-6)
    with pytest.raises(PipelineError, match="orig_sr"):
        resample.resample(y, 0, 8000)


@pytest.mark.parametrize("n", [1, 2, 5, 130, 44101])
@pytest.mark.parametrize("down", [2, 3, 4])
def test_decimation_kernel_equals_resample_poly_reference(n, down):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    ref = resample_poly(x.astype(np.float64), 1, down, window=resample.resample_filter(1, down))
    out = resample.resample(x, 44100, 44100 // down)
    assert out.dtype == np.float32 and out.shape == ref.shape == (math.ceil(n / down),)
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-6)
    stacked = resample.resample(np.stack([x, -x]), 44100, 44100 // down)  # (channels, n) rows
    np.testing.assert_array_equal(stacked, np.stack([out, -out]))


def test_filter_taps_and_zeros():
    h = resample.resample_filter(1, 2)
    assert len(h) == 4 * resample.RESAMPLE_HALF_TAPS + 1 and abs(h.sum() - 1.0) < 1e-12
    centre = len(h) // 2
    assert np.all(h[centre + 2::2] == 0) and np.all(h[centre - 2::-2] == 0) and np.all(h[1::2] != 0)
    np.testing.assert_array_equal(h, h[::-1])  # linear phase


def test_stereo_mean_fused_into_decimation_is_bit_identical(tmp_path):
    rng = np.random.default_rng(3)
    st = rng.uniform(-0.5, 0.5, (44100 + 7, 2)).astype(np.float32)
    p = write_wav(tmp_path / "st.wav", st, 44100)
    fused, sr = audio.load(p, sr=22050)
    dec, _ = audio.load(p, sr=None)  # the mean, not resampled
    assert sr == 22050
    np.testing.assert_array_equal(fused, resample.resample(dec, 44100, 22050))


def test_resampler_distance_from_soxr_hq():
    """The bounds the module docstring states (librosa.load's default resampler)."""
    soxr = pytest.importorskip("soxr")
    from scipy.signal import fftconvolve, firwin

    sr, n = 44100, 5 * 44100
    rng = np.random.default_rng(0)
    white = 0.1 * rng.standard_normal(n)
    t = np.arange(n) / sr
    sines = sum(np.sin(2 * np.pi * f * t + f) for f in (110, 440, 1000, 3000, 5000, 7000, 9000)) / 7

    def band(fc):
        return fftconvolve(white, firwin(2001, fc / (sr / 2)), mode="same")

    def snr_db(sig):
        sig = sig.astype(np.float32)
        ref = soxr.resample(sig, sr, 22050, "HQ").astype(np.float64)[2000:-2000]
        ours = resample.resample(sig, sr, 22050).astype(np.float64)[2000:-2000]
        return 10 * np.log10(np.sum(ref ** 2) / np.sum((ours - ref) ** 2))

    assert snr_db(band(8000.0)) >= 85.0
    assert snr_db(sines) >= 85.0
    assert snr_db(band(10000.0)) >= 40.0
    assert snr_db(white) < 30.0  # the bound is on band-limited signals: soxr's passband is wider


def test_load_never_returns_the_kept_decode_buffer(tmp_path):
    rng = np.random.default_rng(5)
    a, b = (rng.uniform(-0.5, 0.5, n).astype(np.float32) for n in (8000, 9000))
    pa, pb = write_wav(tmp_path / "a.wav", a, 8000), write_wav(tmp_path / "b.wav", b, 8000)
    ya, _ = audio.load(pa, sr=None)            # mono file at its own rate: no mean, no resampling
    both_a, _ = audio.load(pa, sr=None, mono=False)
    audio.load(pb, sr=None)                    # decodes into the same kept buffer
    audio.load(pb, sr=16000)
    np.testing.assert_array_equal(ya, a)
    np.testing.assert_array_equal(both_a[0], a)
    assert not np.may_share_memory(ya, audio._decode_local.buf)


def test_offset_and_duration_read_only_the_window(tmp_path):
    y = np.random.default_rng(0).uniform(-0.5, 0.5, 3 * 8000).astype(np.float32)
    p = write_wav(tmp_path / "n.wav", y, 8000)
    seg, _ = audio.load(p, sr=None, offset=1.25, duration=0.5)
    np.testing.assert_array_equal(seg, y[10000:14000])
    tail, _ = audio.load(p, sr=None, offset=2.9, duration=5.0)  # runs past the end: shorter
    np.testing.assert_array_equal(tail, y[23200:])
    past, _ = audio.load(p, sr=None, offset=10.0)
    assert past.shape == (0,)


def test_mp3_seek_equals_full_decode(tmp_path):
    y = sine(4.0, 22050, 523.0) + sine(4.0, 22050, 97.0, amp=0.2)
    p = write_mp3(tmp_path / "s.mp3", y, 22050)
    full, sr = audio.load(p, sr=None)
    assert sr == 22050 and abs(len(full) - len(y)) < 2048
    seg, _ = audio.load(p, sr=None, offset=1.5, duration=1.0)
    start = int(round(1.5 * 22050))
    np.testing.assert_allclose(seg, full[start:start + 22050], atol=1e-6)


def test_length_comes_from_data_not_header(tmp_path):
    p = truncated_mp3(tmp_path / "t.mp3", seconds=3.0, sr=22050, keep=0.4)
    assert sf.info(p).frames == 3 * 22050  # the header still claims 3 s
    y, _ = audio.load(p, sr=None)
    assert 0 < len(y) < 0.6 * 3 * 22050


@pytest.mark.parametrize("maker,pattern", [
    (zero_byte, "empty"),
    (text_as_mp3, "soundfile.*audioread"),
    (tags_only_mp3, "soundfile.*audioread"),
])
def test_bad_files_raise_naming_the_file(tmp_path, maker, pattern):
    p = maker(tmp_path / "bad.mp3")
    with pytest.raises(PipelineError, match=pattern) as info:
        audio.load(p)
    assert "bad.mp3" in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(PipelineError, match="not found.*nope.wav"):
        audio.load(tmp_path / "nope.wav")


@pytest.mark.parametrize("kwargs,name", [({"offset": -1.0}, "offset"), ({"duration": 0.0}, "duration"),
                                         ({"sr": 0}, "sr"), ({"offset": float("nan")}, "offset")])
def test_bad_arguments(tmp_path, kwargs, name):
    p = write_wav(tmp_path / "s.wav", sine(0.1, 8000), 8000)
    with pytest.raises(PipelineError, match=name):
        audio.load(p, **kwargs)


def test_audioread_fallback_when_soundfile_fails(tmp_path, monkeypatch):
    y = sine(0.5, 8000, 440.0)
    p = write_wav(tmp_path / "pcm.wav", y, 8000, subtype="PCM_16")
    ref, _ = audio.load(p, sr=None)

    def broken(*a, **k):
        raise RuntimeError("simulated libsndfile failure")

    monkeypatch.setattr(audio, "_read_soundfile", broken)
    out, sr = audio.load(p, sr=None, offset=0.1, duration=0.2)  # audioread's stdlib wave backend
    assert sr == 8000
    np.testing.assert_allclose(out, ref[800:2400], atol=1e-6)


def test_error_quotes_both_backends(tmp_path, monkeypatch):
    p = text_as_mp3(tmp_path / "x.mp3")
    with pytest.raises(PipelineError) as info:
        audio.load(p)
    msg = str(info.value)
    assert "soundfile:" in msg and "audioread:" in msg and "x.mp3" in msg


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_no_file_descriptor_leak(tmp_path):
    good = write_mp3(tmp_path / "g.mp3", sine(0.5, 22050), 22050)
    bad = text_as_mp3(tmp_path / "b.mp3")
    trunc = truncated_mp3(tmp_path / "t.mp3", seconds=1.0)
    audio.load(good)  # warm up lazy imports
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(100):
        audio.load(good, offset=0.1, duration=0.2)
        audio.load(trunc)
        with pytest.raises(PipelineError):
            audio.load(bad)
    assert len(os.listdir("/proc/self/fd")) == before


def test_probe_reports_header(tmp_path):
    p = write_wav(tmp_path / "st.wav", np.zeros((4410, 2), np.float32), 44100)
    info = audio.probe(p)
    assert info == audio.AudioInfo(44100, 4410, 2)


# ---- decoder messages on fd 2 (libmpg123 writes straight to stderr) are captured, not printed

_MPG123_LINE = "[src/libmpg123/layer3.c:INT123_do_layer3():1774] error: part2_3_length (992) too large"


def _noisy_reader(fail=False, other=None):
    """A stand-in for _read_soundfile that writes to fd 2 from 'C code' (os.write), then decodes or fails."""
    real = audio._read_soundfile

    def reader(path, offset, duration):
        os.write(2, (_MPG123_LINE + "\nWarning: Xing stream size off by more than 1%\n").encode())
        if other:
            os.write(2, (other + "\n").encode())
        if fail:
            raise RuntimeError("simulated decoder failure")
        return real(path, offset, duration)
    return reader


def test_decoder_stderr_is_captured_not_printed(tmp_path, monkeypatch, capfd):
    p = write_wav(tmp_path / "s.wav", sine(0.2, 8000), 8000)
    monkeypatch.setattr(audio, "_read_soundfile", _noisy_reader(other="a real message from elsewhere"))
    before = os.fstat(2)
    with decoder_messages.collect_decoder_messages() as msgs:
        y, sr = audio.load(p, sr=None)
    assert sr == 8000 and y.shape == (1600,)
    err = capfd.readouterr().err
    assert "part2_3_length" not in err and "Xing" not in err
    assert "a real message from elsewhere" in err  # anything that is not a decoder line is written back
    assert msgs == [_MPG123_LINE, "Warning: Xing stream size off by more than 1%"]
    after = os.fstat(2)  # fd 2 restored to the same file
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)


def test_decoder_messages_join_the_error_when_decoding_fails(tmp_path, monkeypatch, capfd):
    p = write_wav(tmp_path / "s.wav", sine(0.2, 8000), 8000)
    monkeypatch.setattr(audio, "_read_soundfile", _noisy_reader(fail=True))
    monkeypatch.setattr(audio, "_read_audioread", _noisy_reader(fail=True))
    with pytest.raises(PipelineError) as info:
        audio.load(p)
    msg = str(info.value)
    assert "simulated decoder failure" in msg and "s.wav" in msg
    # both backends printed the same two lines: each quoted once, with its count
    assert f"decoder messages: {_MPG123_LINE} (x2) | Warning: Xing stream size off by more than 1% (x2)" in msg
    assert "part2_3_length" not in capfd.readouterr().err


def test_real_mpg123_notes_of_a_text_file_are_captured(tmp_path, capfd):
    p = text_as_mp3(tmp_path / "x.mp3")
    with pytest.raises(PipelineError) as info:
        audio.load(p)
    assert "Illegal Audio-MPEG-Header" not in capfd.readouterr().err
    assert "decoder messages: Note: Illegal Audio-MPEG-Header" in str(info.value)


def test_decoder_messages_env_turns_capture_off(tmp_path, monkeypatch, capfd):
    p = write_wav(tmp_path / "s.wav", sine(0.2, 8000), 8000)
    monkeypatch.setattr(audio, "_read_soundfile", _noisy_reader())
    monkeypatch.setenv("HITCNN_DECODER_MESSAGES", "1")
    audio.load(p)
    assert "part2_3_length" in capfd.readouterr().err


def test_mp3_seek_prints_nothing(tmp_path, capfd):
    """soundfile-written mp3s (as the synthetic demo's) read with seeks: no mpg123 line reaches fd 2."""
    y = sine(6.0, 22050, 523.0) + sine(6.0, 22050, 97.0, amp=0.2)
    p = write_mp3(tmp_path / "s.mp3", y, 22050)
    capfd.readouterr()
    for off in (0.5, 1.7, 3.3, 4.9):
        audio.probe(p)
        audio.load(p, offset=off, duration=1.0)
    assert capfd.readouterr().err == ""


def test_format_decoder_messages_counts_and_truncates():
    assert decoder_messages.format_decoder_messages([]) == ""
    lines = ["a", "b", "a", "c", "d", "e", "f"]
    assert decoder_messages.format_decoder_messages(lines) == "decoder messages: a (x2) | b | c | d (+2 more)"


# ---- libsndfile's misleading "does not exist" for an existing non-audio file

def test_text_file_error_says_not_audio_not_missing(tmp_path):
    p = text_as_mp3(tmp_path / "notes.mp3")
    with pytest.raises(PipelineError) as info:
        audio.load(p)
    msg = str(info.value)
    assert "soundfile: not a recognised audio format or a damaged file (libsndfile: 'File does not exist" in msg
    assert "although the file exists" in msg and "audioread:" in msg and "notes.mp3" in msg
    with pytest.raises(PipelineError, match="header of.*notes.mp3.*not a recognised audio format"):
        audio.probe(p)
