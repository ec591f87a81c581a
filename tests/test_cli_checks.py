"""Issue 10, items 9-17, 20, 21: flags checked before any work (one line, exit 2, nothing made), the data a
user really has (Excel CSVs, broken links, unmatched names), quoted follow-up commands, sub-epoch runs."""
import json
import shlex

import pytest

import cli
from faults import SPEC, cli_cmd, make_folder, prep_args, run_on_tmpfs

REGEX = ["--label-regex", r"^(\d)_"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("checks") / "S")


def _bad_cases(folder, tmp_path):
    f = tmp_path / "a_file"
    f.write_text("x")
    data = ["--audio-dir", str(folder)] + REGEX + SPEC
    return [
        # 9. the image size against the model's pools, before preprocessing
        (["train", "--height", "1"] + data[:-5] + ["-q"],
         "--height / --width 1 x 159: cnn6_rgb has 6 2x2 max-pools and needs images of at least 64 x 64"),
        (["grid", "--model", "cnn2_mono,cnn6_rgb", "--width", "40"] + data[:-3] + ["-q"],
         "--height / --width 32 x 40: cnn6_rgb has 6 2x2 max-pools"),
        # 10. unwritable --out / --cache-dir
        (["train", "--out", str(f / "run")] + data, f"--out {f / 'run'}: {f} is a file, not a folder"),
        (["train", "--cache-dir", str(f / "c")] + data, f"--cache-dir {f / 'c'}: {f} is a file, not a folder"),
        (["preprocess", "--out", str(f)] + data, f"--out {f}: {f} is a file, not a folder"),
        # 11. seeds
        (["train", "--seed", "-1"] + data, "--seed -1: expected an integer >= 0"),
        (["train", "--split-seed", "-1"] + data, "--split-seed -1: expected an integer >= 0"),
        (["preprocess", "--split-seed", "-2"] + data, "--split-seed -2: expected an integer >= 0"),
        # 12. STFT settings against sample rate and crop, before decoding
        (["preprocess"] + data + ["--n-fft", "1"], "--n-fft 1: expected an integer >= 2"),
        (["train"] + data + ["--crop-seconds", "0.01"],
         "--crop-seconds 0.01 at --sr 8000 is 80 samples, shorter than half an --n-fft 256 frame"),
        # 13. one data source
        (["train", "--data", str(tmp_path / "ds")] + data[:4],
         f"--data {tmp_path / 'ds'} is a finished dataset cache and cannot be combined with --audio-dir, "
         f"--label-regex"),
        # 14. bounds of the other commands
        (["train", "--demo-tracks", "12"], "--demo-tracks 12: expected an integer >= 30"),
        (["gradcheck", "--batch", "0"], "--batch 0: expected an integer >= 1"),
        (["gradcheck", "--model", "cnn4_mono", "--height", "3"],
         "--height / --width 3 x 24: cnn4_mono has 4 2x2 max-pools and needs images of at least 16 x 16"),
        (["models", "--height", "0"], "--height 0: expected an integer >= 1"),
        (["models", "--n-classes", "0"], "--n-classes 0: expected an integer >= 2"),
        (["models", "--height", "40"], "--height / --width 40 x 159: cnn6_rgb has 6 2x2 max-pools"),
        (["inspect", str(tmp_path / "run"), "--batch-size", "0"], "--batch-size 0: expected an integer >= 1"),
    ]


N_CASES = 18


@pytest.mark.parametrize("k", range(N_CASES))
def test_bad_flags_are_one_line_exit_2_before_any_work(folder, tmp_path, capsys, k):
    work = tmp_path / "w"
    work.mkdir()
    cases = _bad_cases(folder, work)
    assert len(cases) == N_CASES
    argv, msg = cases[k]
    if argv[0] in ("train", "grid", "preprocess") and "--out" not in argv:
        argv = argv + ["--out", str(work / "out")]
    if argv[0] in ("train", "grid", "preprocess") and "--cache-dir" not in argv:
        argv = argv + ["--cache-dir", str(work / "cache")]
    before = sorted(work.rglob("*"))
    rc = cli.main(argv)
    cap = capsys.readouterr()
    assert rc == 2, (argv, cap.err)
    assert cap.err.startswith("error: ") and msg in cap.err and cap.err.count("\n") == 1, cap.err
    assert "Traceback" not in cap.err and "| Parameter" not in cap.out
    assert sorted(work.rglob("*")) == before  # no cache, no run folder, nothing decoded


def test_read_only_out_is_refused_before_preprocessing(folder, tmp_path):
    mnt = tmp_path / "ro"
    r = run_on_tmpfs(mnt, "1m", cli_cmd(prep_args(folder, mnt)), options="ro")
    assert r.returncode == 2 and r.stderr.startswith(f"error: --out {mnt}: cannot write in {mnt} (Read-only file "
                                                     f"system)") and r.stderr.count("\n") == 1, r.stderr


def test_inspect_batch_size_zero_no_longer_means_the_run_default():
    args = cli.build_parser().parse_args(["inspect", "RUN", "--batch-size", "0"])
    import cli_checks

    assert cli_checks.problems(args, "inspect") == ["--batch-size 0: expected an integer >= 1"]


# ---------------------------------------------------------------- 15-17. data a user really has

def test_excel_csv_with_byte_order_mark(folder, tmp_path):
    from pipeline.labels import labels_from_csv

    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\n0_spk0_0.wav,zero\n1_spk0_0.wav,one\n", encoding="utf-8-sig")
    assert csv.read_bytes()[:3] == b"\xef\xbb\xbf"
    rows = labels_from_csv(csv, folder)
    assert [r["label"] for r in rows] == ["zero", "one"] and rows[0]["path"] == str(folder / "0_spk0_0.wav")


def test_broken_link_is_reported_skipped_and_unmatched_files_are_counted(folder, tmp_path, capsys):
    import shutil

    s = tmp_path / "S"
    shutil.copytree(folder, s)
    (s / "2_spk9_0.wav").symlink_to(tmp_path / "gone.wav")
    for name in ("notes.wav", "readme.wav", "x1.wav", "x2.wav", "x3.wav", "x4.wav"):
        (s / name).write_bytes(b"")
    assert cli.main(prep_args(s, tmp_path / "out")) == 0
    out = capsys.readouterr().out
    assert "1 track(s) skipped (not in the dataset):" in out
    assert f"skipped  {s / '2_spk9_0.wav'}  broken symbolic link: '{s / '2_spk9_0.wav'}' points to " \
           f"'{tmp_path / 'gone.wav'}', which does not exist" in out
    assert ("6 file(s) do not match the label / group regex and are not in the dataset: notes.wav, readme.wav, "
            "x1.wav, x2.wav, x3.wav ... and 1 more (all in manifest.json 'unmatched_files')") in out
    (d,) = list((tmp_path / "out").iterdir())
    man = json.loads((d / "manifest.json").read_text())
    rec = next(t for t in man["tracks"] if t["id"] == "2_spk9_0.wav")
    assert rec["status"] == "skipped" and "broken symbolic link" in rec["reason"]


# ---------------------------------------------------------------- 20, 21. messages

def test_follow_up_commands_are_shell_quoted(folder, tmp_path, capsys):
    from engine.errors import resume_command

    out = tmp_path / "with space"
    assert cli.main(prep_args(folder, out)) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("train on it with: "))
    (d,) = list(out.iterdir())
    assert shlex.split(line[len("train on it with: "):]) == ["python", "cli.py", "train", "--data", str(d)]
    assert resume_command("runs/a b") == "python cli.py train --resume --out 'runs/a b'"


def test_run_shorter_than_one_epoch_says_so(folder, tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli.main(["train", "--audio-dir", str(folder)] + REGEX + SPEC + ["--cache-dir", str(tmp_path / "c"),
                  "--out", str(out), "--model", "cnn2_mono", "--batch-size", "8", "--max-steps", "2"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "epoch -1" not in text and "-1.0000" not in text
    assert ("training stopped after 2 steps (reached --max-steps 2), before the first epoch ended: no validation "
            "yet, so no best checkpoint; the test report below is of last.npz") in text
    assert "test metrics of the last checkpoint (step 2, inside epoch 1: the run stopped before any epoch ended" \
        in text
    rep = json.loads((out / "report.json").read_text())
    assert rep["best_epoch"] is None and rep["checkpoint"].endswith("last.npz") and "checkpoint_note" in rep
    assert json.loads((out / "config.json").read_text())["command"].startswith("python cli.py train --audio-dir")


def test_model_too_big_for_a_data_cache_is_refused_before_training(folder, tmp_path, capsys):
    """Item 9 through --data: the cache's image size is read from its manifest."""
    assert cli.main(prep_args(folder, tmp_path / "c")) == 0
    (d,) = list((tmp_path / "c").iterdir())
    capsys.readouterr()
    rc = cli.main(["train", "--data", str(d), "--out", str(tmp_path / "run"), "--model", "cnn6_rgb", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and err == (f"error: --data {d}: images 32 x 48: cnn6_rgb has 6 2x2 max-pools and needs images "
                               f"of at least 64 x 64\n")
    assert not (tmp_path / "run").exists()


def test_spectrogram_config_refuses_n_fft_1_before_decoding():
    from pipeline.errors import PipelineError
    from pipeline.spectrogram import SpectrogramConfig

    with pytest.raises(PipelineError, match="n_fft must be an integer >= 2, got 1"):
        SpectrogramConfig(sr=8000, crop_seconds=1.0, n_fft=1, hop_length=32)
