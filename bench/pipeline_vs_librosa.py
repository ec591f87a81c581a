"""Per-track preprocessing speed: hitcnn's chain vs the librosa chain, side by side.

Run:  python bench/pipeline_vs_librosa.py [--data ../shared/data/fma_mini] [--reps 3]

Chains, timed per track on the fma_mini clips (30 s, 44.1 kHz stereo mp3), on
one core (BLAS/OpenMP threads pinned to 1, one process), interleaved file by
file so machine noise hits both alike:

- ``hitcnn``: ``track_image`` = header probe, seek + decode only the 10 s
  window (soundfile), mono mean, resample_poly 44.1 -> 22.05 kHz, own STFT
  (2048 / 512), power dB, resize to 102 x 159, min-max -> float32 image.
- ``hitcnn, full decode``: the same chain, but decoding the whole 30 s first
  (what the chain costs without seeking).
- ``librosa``: what a user writes today: ``librosa.load(path, sr=22050)`` (the
  whole clip, soxr_hq resampling), a 10 s slice, ``librosa.stft``,
  ``librosa.amplitude_to_db(np.abs(D))`` (no image resize: librosa has none).

Then the parallel build: ``prepare_fma`` of all of fma_mini with 1 and 2
worker processes (fresh cache directories), giving the speed-up and the time
to preprocess fma_mini. Reports medians, the machine and the versions.
"""
import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline import audio  # noqa: E402
from machine import cpu_model  # noqa: E402  (bench/machine.py)
from pipeline.dataset import prepare_fma  # noqa: E402
from pipeline.spectrogram import SpectrogramConfig, spectrogram_db, to_image, track_image  # noqa: E402


def _versions():
    import scipy
    import soundfile

    v = {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
         "soundfile": soundfile.__version__, "libsndfile": soundfile.__libsndfile_version__}
    try:
        import librosa
        import soxr

        v["librosa"] = librosa.__version__
        v["soxr"] = soxr.__version__
    except ImportError:
        v["librosa"] = "absent"
    return v


def full_decode_chain(path, cfg, track_id):
    """hitcnn chain without seeking: decode 30 s, then crop the same window."""
    y, _ = audio.load(path, sr=cfg.sr)
    u = float(np.random.default_rng([0, track_id]).random())
    start = int(u * (len(y) - cfg.n_crop + 1)) if len(y) > cfg.n_crop else 0
    return to_image(spectrogram_db(y[start:start + cfg.n_crop], cfg), cfg)


def librosa_chain(path, crop_seconds=10.0):
    """The chain a user writes with librosa."""
    import librosa

    y, sr = librosa.load(path, sr=22050)
    start = (len(y) - int(crop_seconds * sr)) // 2
    y = y[start:start + int(crop_seconds * sr)]
    D = librosa.stft(y, n_fft=2048, hop_length=512)
    return librosa.amplitude_to_db(np.abs(D))


def main():
    """Time the per-track chain, ours vs librosa's, side by side on fma_mini; print tracks/s, ratio and build times."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "fma_mini"),
                    help="fma_mini folder (default ../shared/data/fma_mini)")
    ap.add_argument("--reps", type=int, default=3, help="passes over the clips (default 3)")
    ap.add_argument("--no-parallel", action="store_true", help="skip the 1- vs 2-worker build")
    args = ap.parse_args()
    data = Path(args.data)
    files = sorted((data / "fma_small").glob("*/*.mp3"))
    cfg = SpectrogramConfig()
    good = []
    for p in files:  # the 30 s clips (the faulty ones are timed by the build below)
        try:
            info = audio.probe(p)
            y, _ = audio.load(p, sr=None, offset=20.0, duration=1.0)
            if info.frames >= 29 * info.samplerate and len(y) > 0:
                good.append(p)
        except Exception:
            pass
    try:
        import librosa  # noqa: F401
        have_librosa = True
    except ImportError:
        have_librosa = False
    chains = {"hitcnn (seek 10 s)": lambda p: track_image(p, cfg, seed=0, track_id=int(p.stem)),
              "hitcnn (full decode)": lambda p: full_decode_chain(p, cfg, int(p.stem))}
    if have_librosa:
        chains["librosa chain"] = librosa_chain
    for f in chains.values():  # warm-up: imports, caches, soxr init
        f(good[0])
    times = {k: [] for k in chains}
    for _ in range(args.reps):
        for p in good:
            for name, f in chains.items():
                t0 = time.perf_counter()
                f(p)
                times[name].append(time.perf_counter() - t0)

    print("# hitcnn pipeline vs librosa (per track, one core)")
    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} (shared machine)")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in _versions().items()))
    print(f"clips: {len(good)} fma_mini 30 s 44.1 kHz stereo mp3, {args.reps} passes, medians\n")
    ref = np.median(times["librosa chain"]) if have_librosa else None
    print("| chain | median ms/track | tracks/s | speed vs librosa |")
    print("| --- | ---: | ---: | ---: |")
    for name, ts in times.items():
        med = float(np.median(ts))
        ratio = f"{ref / med:.2f}x" if ref else "n/a"
        print(f"| {name} | {med * 1e3:.1f} | {1 / med:.1f} | {ratio} |")

    if not args.no_parallel:
        print("\n| fma_mini build (prepare_fma, all 58 tracks) | seconds | tracks/s | speed-up |")
        print("| --- | ---: | ---: | ---: |")
        base = None
        for workers in (1, 2):
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                prepare_fma(data / "fma_small", data / "fma_metadata" / "tracks.csv", tmp, cfg,
                            workers=workers, progress=False)
                dt = time.perf_counter() - t0
            base = base or dt
            print(f"| {workers} worker{'s' if workers > 1 else ''} | {dt:.2f} | {len(files) / dt:.1f} | "
                  f"{base / dt:.2f}x |")


if __name__ == "__main__":
    main()
