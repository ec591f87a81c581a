"""pytest-benchmark: the per-track chain and its parts, hitcnn vs librosa.

Run:  python -m pytest bench/test_bench_pipeline.py --benchmark-only
Groups put the peers side by side (one group per stage and size). The clip is
a real fma_mini track (30 s, 44.1 kHz stereo mp3); the benchmark skips when
../shared/data is absent. librosa members skip when librosa is absent.
"""
import os
from pathlib import Path

import numpy as np
import pytest

from pipeline import audio
from pipeline.clips import crop, track_clip
from pipeline.spectrogram import SpectrogramConfig, spectrogram_db, to_image
from pipeline.stft import stft

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HITCNN_SHARED_DATA", REPO.parent / "shared" / "data"))
CLIP = DATA / "fma_mini" / "fma_small" / "000" / "000005.mp3"
CFG = SpectrogramConfig()


def _pedantic(benchmark, fn, *args):
    return benchmark.pedantic(fn, args=args, warmup_rounds=1, rounds=7, iterations=1)


@pytest.fixture(scope="module")
def clip():
    """Path of one fma_mini clip (skips when the shared data is absent)."""
    if not CLIP.is_file():
        pytest.skip(f"{CLIP} not found")
    return CLIP


@pytest.fixture(scope="module")
def y10():
    """10 s of seeded noise at 22,050 Hz (float32), standing in for a decoded crop."""
    rng = np.random.default_rng(0)
    return (0.3 * rng.standard_normal(220500)).astype(np.float32)


@pytest.mark.benchmark(group="chain: 30 s mp3 -> 10 s crop -> STFT -> dB (-> image)")
class TestChain:
    """The whole per-track chain: ours vs librosa's."""
    def test_hitcnn_seek(self, benchmark, clip):
        img = _pedantic(benchmark, lambda p: to_image(spectrogram_db(crop(p, CFG, 0, 5)[0], CFG), CFG), clip)
        assert img.shape == (1, 102, 159)

    def test_hitcnn_cache_row(self, benchmark, clip):
        img, _ = _pedantic(benchmark, track_clip, clip, CFG)
        assert img.shape[0] == 102 and 470 <= img.shape[1] <= 477

    def test_hitcnn_full_decode(self, benchmark, clip):
        def chain(p):
            y, _ = audio.load(p, sr=22050)
            return to_image(spectrogram_db(y[220500:441000], CFG), CFG)

        assert _pedantic(benchmark, chain, clip).shape == (1, 102, 159)

    def test_librosa(self, benchmark, clip):
        librosa = pytest.importorskip("librosa")

        def chain(p):
            y, sr = librosa.load(p, sr=22050)
            return librosa.amplitude_to_db(np.abs(librosa.stft(y[220500:441000])))

        assert _pedantic(benchmark, chain, clip).shape == (1025, 431)


@pytest.mark.benchmark(group="decode: 10 s window of a 30 s 44.1 kHz stereo mp3 at 22050 Hz")
class TestDecode:
    """Decoding alone: seek to the 10 s window vs a full decode."""
    def test_soundfile_seek(self, benchmark, clip):
        y, _ = _pedantic(benchmark, audio.load, clip, 22050, True, 10.0, 10.0)
        assert len(y) == 220500

    def test_librosa_load(self, benchmark, clip):
        librosa = pytest.importorskip("librosa")
        y, _ = _pedantic(benchmark, lambda p: librosa.load(p, sr=22050, offset=10.0, duration=10.0), clip)
        assert len(y) == 220500


@pytest.mark.benchmark(group="stft: 10 s at 22050 Hz, n_fft 2048, hop 512")
class TestSTFT:
    """The STFT alone: ours vs librosa.stft."""
    def test_hitcnn(self, benchmark, y10):
        assert _pedantic(benchmark, stft, y10).shape == (1025, 431)

    def test_librosa(self, benchmark, y10):
        librosa = pytest.importorskip("librosa")
        assert _pedantic(benchmark, librosa.stft, y10).shape == (1025, 431)
