"""pipeline.fma, pipeline.labels, pipeline.splits."""
import numpy as np
import pandas as pd
import pytest

from pipeline import fma, labels, splits
from pipeline.errors import PipelineError

# ------------------------------------------------------------------ FMA metadata

def test_load_real_tracks_csv(fma_mini):
    t = fma.load_tracks(fma_mini / "fma_metadata" / "tracks.csv")
    assert len(t) == 682 and t.index.dtype == np.int64 and t.index.name == "track_id"
    sub = t[("set", "subset")]
    assert sub.cat.ordered and list(sub.cat.categories) == ["small", "medium", "large"]
    assert (sub <= "small").sum() == 58 and (sub <= "medium").sum() == 58 + 136
    assert set(t[("set", "split")].unique()) == {"training", "validation", "test"}


def test_audio_path_layout():
    assert fma.audio_path("/a/fma_small", 2).as_posix() == "/a/fma_small/000/000002.mp3"
    assert fma.audio_path("x", 123456).as_posix() == "x/123/123456.mp3"


def test_select_reports_tracks_absent_on_disk(fma_mini):
    t = fma.load_tracks(fma_mini / "fma_metadata" / "tracks.csv")
    small, rep = fma.select(t, fma_mini / "fma_small", subset="small")
    assert len(small) == 58 and rep["missing_audio"] == []
    every, rep = fma.select(t, fma_mini / "fma_small", subset=None)
    assert len(every) == 58 and len(rep["missing_audio"]) == 682 - 58


def _write_tracks(tmp_path, drop=None, nan_listens=()):
    """A small FMA-format tracks.csv (3 header rows) written by pandas."""
    ids = np.arange(1, 13)
    cols = pd.MultiIndex.from_tuples([("track", "listens"), ("track", "genre_top"), ("set", "subset"),
                                      ("set", "split"), ("artist", "id")])
    data = [[10 * i, "Rock" if i % 2 else "Folk", "small", "training", i % 4] for i in ids]
    df = pd.DataFrame(data, index=pd.Index(ids, name="track_id"), columns=cols)
    df[("track", "listens")] = df[("track", "listens")].astype(float)
    for i in nan_listens:
        df.loc[i, ("track", "listens")] = np.nan
    if drop is not None:
        df = df.drop(columns=[drop])
    path = tmp_path / "tracks.csv"
    df.to_csv(path)
    return path


def test_missing_column_is_named(tmp_path):
    path = _write_tracks(tmp_path, drop=("track", "listens"))
    with pytest.raises(PipelineError, match=r"\('track', 'listens'\)"):
        fma.load_tracks(path, needed=[fma.COLUMNS["listens"]])


def test_nan_listens_reported_and_dropped(tmp_path):
    path = _write_tracks(tmp_path, nan_listens=(3, 7))
    t = fma.load_tracks(path)
    assert t.index.tolist() == list(range(1, 13))
    sel, rep = fma.select(t, None, subset="small", needed=[fma.COLUMNS["listens"]])
    assert rep["missing_values"] == {str(fma.COLUMNS["listens"]): [3, 7]}
    assert 3 not in sel.index and len(sel) == 10


def _write_text_listens(tmp_path, texts):
    """tracks.csv with ('track', 'listens') as text: ``texts`` maps track id -> value (others 10 * id)."""
    ids = np.arange(1, 13)
    cols = pd.MultiIndex.from_tuples([("track", "listens"), ("set", "subset")])
    df = pd.DataFrame([[str(texts.get(i, 10 * i)), "small"] for i in ids],
                      index=pd.Index(ids, name="track_id"), columns=cols)
    path = tmp_path / "tracks.csv"
    df.to_csv(path)
    return path


def test_non_numeric_listens_reported_and_dropped_like_nan(tmp_path):
    path = _write_text_listens(tmp_path, {4: "lots", 9: "many"})
    t = fma.load_tracks(path, needed=[fma.COLUMNS["listens"]])
    assert t[fma.COLUMNS["listens"]].dtype == np.float64 and t.loc[5, fma.COLUMNS["listens"]] == 50.0
    sel, rep = fma.select(t, None, subset="small", needed=[fma.COLUMNS["listens"]])
    col = str(fma.COLUMNS["listens"])
    assert rep["missing_values"] == {col: [4, 9]} and rep["non_numeric"] == {col: [[4, "lots"], [9, "many"]]}
    assert sel.index.tolist() == [1, 2, 3, 5, 6, 7, 8, 10, 11, 12]
    assert "2 tracks dropped for a missing ('track', 'listens') value (2 non-numeric), e.g. 4 ('lots'), " \
           "9 ('many')" in fma.summarize_report(rep)


def test_all_listens_non_numeric_is_an_error_naming_file_column_and_examples(tmp_path):
    path = _write_text_listens(tmp_path, {i: "lots" for i in range(1, 13)})
    t = fma.load_tracks(path, needed=[fma.COLUMNS["listens"]])
    with pytest.raises(PipelineError) as info:
        fma.select(t, None, subset="small", needed=[fma.COLUMNS["listens"]])
    msg = str(info.value)
    assert msg.startswith(f"{path}: column ('track', 'listens') has no usable value for the 12 selected")
    assert "12 non-numeric (e.g. track 1: 'lots', track 2: 'lots'" in msg and "and 7 more" in msg


def _fake_fma_dir(root, ids):
    """FMA layout with empty stand-in mp3s (select only checks that the files exist)."""
    for i in ids:
        p = fma.audio_path(root, i)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    return root


def test_wrong_audio_dir_message_is_short_and_suggests_the_subfolder(tmp_path):
    path = _write_tracks(tmp_path)
    t = fma.load_tracks(path)
    _fake_fma_dir(tmp_path / "fma_mini" / "fma_small", range(1, 13))
    with pytest.raises(PipelineError) as info:
        fma.select(t, tmp_path / "fma_mini", subset="small")
    msg = str(info.value)
    first = tmp_path / "fma_mini" / "000" / "000001.mp3"
    assert f"none of the 12 tracks of subset <= 'small' has its mp3 under '{tmp_path / 'fma_mini'}'" in msg
    assert f"e.g. 1 ({first})" in msg and "and 7 more" in msg and "12 (" not in msg
    assert "--audio-dir must be the folder holding 000/000001.mp3 (e.g. .../fma_small)" in msg
    assert f"did you mean --audio-dir {tmp_path / 'fma_mini' / 'fma_small'}?" in msg
    # one level too deep: the parent is suggested
    with pytest.raises(PipelineError, match=r"did you mean --audio-dir .*fma_small\?"):
        fma.select(t, tmp_path / "fma_mini" / "fma_small" / "000", subset="small")
    # nothing that looks right: the hint without a suggestion
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError) as info:
        fma.select(t, tmp_path / "empty", subset="small")
    assert "--audio-dir must be" in str(info.value) and "did you mean" not in str(info.value)


def test_many_missing_tracks_summarised_not_listed(tmp_path):
    ids = np.arange(1, 2001)
    cols = pd.MultiIndex.from_tuples([("track", "listens"), ("set", "subset")])
    df = pd.DataFrame([[1.0, "small"]] * len(ids), index=pd.Index(ids, name="track_id"), columns=cols)
    df.to_csv(tmp_path / "tracks.csv")
    t = fma.load_tracks(tmp_path / "tracks.csv")
    with pytest.raises(PipelineError) as info:
        fma.select(t, tmp_path, subset="small")
    assert "and 1995 more" in str(info.value) and len(str(info.value)) < 1000
    _fake_fma_dir(tmp_path, [3, 7])
    sel, rep = fma.select(t, tmp_path, subset="small")
    assert sel.index.tolist() == [3, 7] and len(rep["missing_audio"]) == 1998  # full list kept for the manifest
    text = fma.summarize_report(rep, tmp_path)
    assert text.startswith("1998 tracks listed in the metadata have no audio file, e.g. 1 (") \
        and text.endswith("and 1993 more") and len(text) < 600


def test_missing_metadata_file(tmp_path):
    with pytest.raises(PipelineError, match="not found"):
        fma.load_tracks(tmp_path / "tracks.csv")


# ------------------------------------------------------------------ popularity labels

def test_default_edges_reproduce_paper_shares():
    x = np.arange(1, 1001)
    codes, edges = labels.popularity_buckets(x)
    shares = np.bincount(codes) / len(x)
    np.testing.assert_allclose(shares, labels.PAPER_SHARES, atol=1e-3)
    assert edges == (169.0, 636.0)
    assert codes[x == 168][0] == 0 and codes[x == 169][0] == 1 and codes[x == 636][0] == 2


def test_ties_are_deterministic_and_classes_non_empty():
    x = np.array([5] * 50 + [7] * 30 + [9] * 15 + [100] * 5, dtype=float)
    codes, edges = labels.popularity_buckets(x)
    for v in np.unique(x):  # equal counts share a class
        assert len(set(codes[x == v])) == 1
    assert np.all(np.bincount(codes, minlength=3) > 0)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(x))
    codes2, edges2 = labels.popularity_buckets(x[perm])
    assert edges2 == edges and np.array_equal(codes2, codes[perm])


def test_too_few_distinct_listens():
    with pytest.raises(PipelineError, match="3 distinct"):
        labels.popularity_buckets([4, 4, 9, 9])


def test_explicit_edges_and_empty_class_named():
    codes, edges = labels.popularity_buckets([10, 600, 2500, 500, 2000], edges=(500, 2000))
    assert codes.tolist() == [0, 1, 2, 1, 2] and edges == (500.0, 2000.0)
    with pytest.raises(PipelineError, match="'high' is empty"):
        labels.popularity_buckets([10, 600, 700], edges=(500, 2000))
    with pytest.raises(PipelineError, match="increasing"):
        labels.popularity_buckets([1, 2, 3], edges=(5, 1))


def test_real_fma_listens_buckets(fma_mini):
    t = fma.load_tracks(fma_mini / "fma_metadata" / "tracks.csv")
    codes, edges = labels.popularity_buckets(t[("track", "listens")].to_numpy(float))
    shares = np.bincount(codes) / len(codes)
    np.testing.assert_allclose(shares, labels.PAPER_SHARES, atol=0.01)


# ------------------------------------------------------------------ other labels

def test_encode_natural_order():
    codes, classes = labels.encode(["10", "2", "1", "2"])
    assert classes == ["1", "2", "10"] and codes.tolist() == [2, 1, 0, 1]
    codes, classes = labels.encode(["rock", "folk"])
    assert classes == ["folk", "rock"] and codes.tolist() == [1, 0]


def test_regex_labels_and_groups_fsdd_names():
    names = ["7_jackson_32.wav", "0_george_1.wav", "readme.txt", "3_lucas_10.wav"]
    rows, skipped = labels.labels_from_regex(names, r"^(\d)_", r"^\d_([a-z]+)_")
    assert [(r["label"], r["group"]) for r in rows] == [("7", "jackson"), ("0", "george"), ("3", "lucas")]
    assert skipped == ["readme.txt"]
    rows, _ = labels.labels_from_regex(names, r"^(?P<label>\d)_(?P<group>[a-z]+)_")
    assert rows[0]["label"] == "7" and rows[0]["group"] == "jackson"
    with pytest.raises(PipelineError, match="capture group"):
        labels.labels_from_regex(names, r"^\d_")
    with pytest.raises(PipelineError, match="no file name matches"):
        labels.labels_from_regex(names, r"^(x)")


def test_labels_csv(tmp_path):
    (tmp_path / "l.csv").write_text("path,label\na.wav,dog\nsub/b.wav,cat\n")
    rows = labels.labels_from_csv(tmp_path / "l.csv")
    assert rows[1]["path"] == str(tmp_path / "sub" / "b.wav") and rows[1]["label"] == "cat"
    (tmp_path / "bad.csv").write_text("file,label\na.wav,dog\n")
    with pytest.raises(PipelineError, match="'path'"):
        labels.labels_from_csv(tmp_path / "bad.csv")
    (tmp_path / "dup.csv").write_text("path,label\na.wav,dog\nsub/b.wav,cat\n./a.wav,dog\n")
    with pytest.raises(PipelineError, match=r"dup.csv:4: path './a.wav' is already listed on line 2"):
        labels.labels_from_csv(tmp_path / "dup.csv")  # the same file could land in train and test


# ------------------------------------------------------------------ splits

def test_stratified_split_properties():
    y = np.repeat(np.arange(3), [100, 50, 30])
    s = splits.stratified_split(y, seed=0)
    assert set(np.unique(s)) == {"train", "val", "test"} and len(s) == len(y)
    for c, m in zip(range(3), (100, 50, 30)):
        counts = {k: int(np.sum((y == c) & (s == k))) for k in ("train", "val", "test")}
        assert counts["val"] == round(0.1 * m) and counts["test"] == round(0.1 * m)
        assert counts["train"] == m - 2 * round(0.1 * m)
    assert np.array_equal(s, splits.stratified_split(y, seed=0))
    assert not np.array_equal(s, splits.stratified_split(y, seed=1))


def test_stratified_tiny_class_named():
    y = np.array([0] * 10 + [1, 1])
    with pytest.raises(PipelineError, match="'jazz' has only 2"):
        splits.stratified_split(y, class_names=["rock", "jazz"])


def test_fma_split_mapping():
    assert splits.fma_split(["training", "validation", "test"]).tolist() == ["train", "val", "test"]
    with pytest.raises(PipelineError, match="'dev'"):
        splits.fma_split(["training", "dev"])


def test_group_split_disjoint_and_proportional():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 60, 1000)
    s = splits.group_split(groups, seed=0)
    for g in np.unique(groups):
        assert len(set(s[groups == g])) == 1  # a group never spans two splits
    shares = [np.mean(s == k) for k in ("train", "val", "test")]
    np.testing.assert_allclose(shares, (0.8, 0.1, 0.1), atol=0.05)
    assert np.array_equal(s, splits.group_split(groups, seed=0))


def test_group_split_five_speakers():
    groups = np.repeat(["george", "jackson", "lucas", "nicolas", "yweweler"], 20)
    s = splits.group_split(groups, seed=3)
    assert sorted(len(set(groups[s == k])) for k in ("train", "val", "test")) == [1, 1, 3]
    with pytest.raises(PipelineError, match=">= 3 groups"):
        splits.group_split(["a", "b", "a"])
