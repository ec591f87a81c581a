"""Per-track preprocessing speed: hitcnn's chain vs the librosa chain, side by side.

Run:  python bench/pipeline_vs_librosa.py [--data ../shared/data/fma_mini] [--reps 3]

Chains, timed per track on the fma_mini clips (30 s, 44.1 kHz stereo mp3), on
one core (BLAS/OpenMP/Numba threads pinned to 1, one process), interleaved file
by file with the order rotated each file (so machine noise and cache warmth hit
every chain alike); medians. Two comparisons of equal work:

10 s window (the image of one crop):

- ``hitcnn (seek 10 s)``: ``crop`` + ``to_image`` = header probe, seek + decode only the
  10 s window (soundfile), mono mean, resample 44.1 -> 22.05 kHz, own STFT
  (2048 / 512), power dB, resize to 102 x 159, min-max -> float32 image.
- ``hitcnn (whole decode, 10 s STFT)``: the same chain, but decoding the whole
  30 s first (the work the librosa chain does).
- ``librosa chain``: what a user writes today: ``librosa.load(path, sr=22050)``
  (the whole clip, soxr_hq resampling), a 10 s slice, ``librosa.stft``,
  ``librosa.amplitude_to_db(np.abs(D))`` (no image resize: librosa has none).

Whole clip (what a whole-clip cache computes, capped at 30 s):

- ``hitcnn whole clip``: ``audio.load(path, sr=22050, duration=30)`` (channel
  mean fused into the 2:1 decimation kernel), ``spectrogram_db`` of all of it.
- ``hitcnn cache row (track_clip)``: what ``preprocess`` computes per track
  since the cache holds whole clips: the above plus the resize to 102 x 477
  and the min-max scaling of the clip's image.
- ``librosa whole clip``: ``librosa.load(path, sr=22050, duration=30)``,
  ``librosa.stft``, ``librosa.amplitude_to_db(np.abs(D))`` of all of it.

``decode only`` is the whole-clip soundfile decode (float32, the same call
``hitcnn whole clip`` makes) and nothing else: the floor of every whole-decode
chain, printed against the librosa chain so that the best ratio this decoder
allows is visible.

Then the parallel build: ``prepare_fma`` of all of fma_mini with 1 and 2
worker processes (fresh cache directories), giving the speed-up and the time
to preprocess fma_mini. Reports medians, the machine and the versions.
"""
import os

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
for _v in _THREAD_VARS:
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

from machine import cpu_model  # noqa: E402  (bench/machine.py)
from pipeline import audio  # noqa: E402
from pipeline.clips import crop, track_clip  # noqa: E402
from pipeline.prepare import prepare_fma  # noqa: E402
from pipeline.resample import decimate_mean  # noqa: E402
from pipeline.spectrogram import SpectrogramConfig, spectrogram_db, to_image  # noqa: E402
from pipeline.stft import stft  # noqa: E402


def _versions():
    import numba
    import scipy
    import soundfile

    v = {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
         "numba": numba.__version__, "soundfile": soundfile.__version__,
         "libsndfile": soundfile.__libsndfile_version__}
    try:
        import librosa
        import soxr

        v["librosa"] = librosa.__version__
        v["soxr"] = soxr.__version__
    except ImportError:
        v["librosa"] = "absent"
    return v


def seek_chain(path, cfg, track_id):
    """hitcnn chain of one seeded 10 s window: probe, seek + decode only it, STFT, dB, image."""
    return to_image(spectrogram_db(crop(path, cfg, seed=0, track_id=track_id)[0], cfg), cfg)


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


def whole_clip_chain(path, cfg, cap_seconds=30.0):
    """hitcnn whole clip: decode up to ``cap_seconds``, resample, STFT and dB of all of it."""
    y, _ = audio.load(path, sr=cfg.sr, duration=cap_seconds)
    return spectrogram_db(y, cfg)


def librosa_whole_clip(path, cap_seconds=30.0):
    """librosa doing the same whole-clip work."""
    import librosa

    y, sr = librosa.load(path, sr=22050, duration=cap_seconds)
    D = librosa.stft(y, n_fft=2048, hop_length=512)
    return librosa.amplitude_to_db(np.abs(D))


def decode_only(path, cap_seconds=30.0):
    """The whole-clip decode of ``hitcnn whole clip`` alone (soundfile into the kept buffer)."""
    return audio._read_soundfile(str(path), 0.0, cap_seconds)


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
    chains = {"hitcnn (seek 10 s)": lambda p: seek_chain(p, cfg, int(p.stem)),
              "hitcnn (whole decode, 10 s STFT)": lambda p: full_decode_chain(p, cfg, int(p.stem)),
              "hitcnn whole clip": lambda p: whole_clip_chain(p, cfg),
              "hitcnn cache row (track_clip)": lambda p: track_clip(p, cfg),
              "decode only (soundfile, 30 s)": decode_only}
    if have_librosa:
        chains["librosa chain"] = librosa_chain
        chains["librosa whole clip"] = librosa_whole_clip
    names = list(chains)
    for f in chains.values():  # warm-up: imports, Numba kernels, caches, soxr init
        f(good[0])
    times = {k: [] for k in chains}
    k = 0
    for _ in range(args.reps):
        for p in good:
            order = names[k % len(names):] + names[:k % len(names)]  # rotate: alternate who goes first
            k += 1
            for name in order:
                t0 = time.perf_counter()
                chains[name](p)
                times[name].append(time.perf_counter() - t0)

    print("# hitcnn pipeline vs librosa (per track, one core)")
    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} (shared machine)")
    print("threads: " + ", ".join(f"{v}={os.environ.get(v)}" for v in _THREAD_VARS))
    print("versions: " + ", ".join(f"{k} {v}" for k, v in _versions().items()))
    print(f"clips: {len(good)} fma_mini 30 s 44.1 kHz stereo mp3, {args.reps} passes, chains alternated "
          "file by file, medians\n")
    med = {name: float(np.median(ts)) for name, ts in times.items()}
    blocks = (("10 s window", ["hitcnn (seek 10 s)", "hitcnn (whole decode, 10 s STFT)",
                               "decode only (soundfile, 30 s)"], "librosa chain"),
              ("whole clip (30 s)", ["hitcnn whole clip", "hitcnn cache row (track_clip)",
                                     "decode only (soundfile, 30 s)"], "librosa whole clip"))
    print("| work | chain | median ms/track | tracks/s | speed vs librosa, same work |")
    print("| --- | --- | ---: | ---: | ---: |")
    for work, ours, peer in blocks:
        ref = med.get(peer)
        for name in ours + ([peer] if ref else []):
            ratio = f"{ref / med[name]:.2f}x" if ref else "n/a"
            print(f"| {work} | {name} | {med[name] * 1e3:.1f} | {1 / med[name]:.1f} | {ratio} |")

    # where hitcnn's whole-clip time goes (one more pass, stage by stage, same clips)
    stages = {"decode (soundfile, 30 s)": [], "mean + resample 44.1 -> 22.05 kHz": [],
              "stft (2048 / 512)": [], "stft + power dB (spectrogram_db)": []}
    for p in good:
        t0 = time.perf_counter()
        frames, native = audio._read_soundfile(str(p), 0.0, 30.0)
        t1 = time.perf_counter()
        y = decimate_mean(frames, native // cfg.sr) if native == 2 * cfg.sr else audio.load(p, sr=cfg.sr)[0]
        t2 = time.perf_counter()
        stft(y, n_fft=cfg.n_fft, hop_length=cfg.hop_length)
        t3 = time.perf_counter()
        spectrogram_db(y, cfg)
        t4 = time.perf_counter()
        for name, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            stages[name].append(dt)
    print("\n| hitcnn whole clip, stage | median ms/track |")
    print("| --- | ---: |")
    for name, ts in stages.items():
        print(f"| {name} | {np.median(ts) * 1e3:.1f} |")

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
