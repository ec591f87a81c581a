"""Helpers for the fault tests: a tiny labelled folder, small tmpfs mounts, stray-process checks."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
#: the spectrogram flags of the tiny folder (1 s crops of 0.5 s clips at 8 kHz, 32 x 48 images)
SPEC = ["--sr", "8000", "--crop-seconds", "1", "--n-fft", "256", "--hop-length", "32", "--height", "32",
        "--width", "48", "-q"]


def make_folder(root: Path, n_per=5, seconds=0.5, sr=8000) -> Path:
    """30 short wavs ``{digit}_spk{k}_{i}.wav`` (3 digits x 2 speakers x n_per): tones per digit plus noise."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sr)) / sr
    for d in range(3):
        for k in range(2):
            for i in range(n_per):
                y = 0.3 * np.sin(2 * np.pi * (300 + 200 * d + 5 * i) * t) + 0.01 * rng.standard_normal(len(t))
                sf.write(root / f"{d}_spk{k}_{i}.wav", y.astype(np.float32), sr)
    return root


def prep_args(folder, out, *extra, spec=SPEC, workers="0"):
    return ["preprocess", "--audio-dir", str(folder), "--label-regex", r"^(\d)_", *spec, "--out", str(out),
            "--workers", workers, *extra]


def cli_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("NUMBA_CACHE_DIR", str(REPO / ".numba_cache"))
    return env


def cli_cmd(args) -> list:
    return [sys.executable, str(REPO / "cli.py")] + [str(a) for a in args]


def _unshare_prefix():
    if shutil.which("unshare") is None or not sys.platform.startswith("linux"):
        return None
    return ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--mount"]


def run_on_tmpfs(mnt: Path, size: str, argv, options="", timeout=180):
    """Run ``argv`` in a private mount namespace with a ``size`` tmpfs on ``mnt`` (skip where not permitted).

    Returns the CompletedProcess (text). The mount vanishes with the namespace.
    """
    prefix = _unshare_prefix()
    if prefix is None:
        pytest.skip("needs Linux unshare to mount a tmpfs")
    mnt.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (f",{options}" if options else "")
    script = 'mount -t tmpfs -o "$1" tmpfs "$2" 2>/dev/null || exit 97; shift 2; exec "$@"'
    r = subprocess.run(prefix + ["sh", "-c", script, "sh", opts, str(mnt)] + list(argv), capture_output=True,
                       text=True, timeout=timeout, env=cli_env(), cwd=REPO)
    if r.returncode == 97 or (r.returncode != 0 and "unshare" in r.stderr and "Operation not permitted" in r.stderr):
        pytest.skip("mounting a tmpfs is not permitted here")
    return r


def processes_mentioning(text: str) -> list:
    """Live (not zombie) processes whose command line contains ``text``: [(pid, state)]."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmd and state not in ("Z", "X"):
            out.append((int(d.name), state))
    return out


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")
