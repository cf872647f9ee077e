"""`heart fetch --import`: Kaggle CSVs and MADS parquet files written from real beats.

The files are made in tmp_path from the bundled sample (real MIT-BIH beats) in the exact
formats users have: Kaggle's headerless ``%.18e`` CSV, the pandas ``to_csv`` variant with
a header and an index column, and the MADS parquet layout with a float ``target``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from heartcli.data.dataset import BeatSet, load_split, read_manifest


@pytest.fixture(scope="module")
def real(sample_dir: Path) -> dict[str, BeatSet]:
    return {part: load_split(sample_dir, "random", part) for part in ("train", "test")}


def rows(beats: BeatSet) -> np.ndarray:
    return np.hstack([beats.x.astype(np.float64), beats.y[:, None].astype(np.float64)])


def kaggle_csv(path: Path, data: np.ndarray) -> Path:
    np.savetxt(path, data, delimiter=",", fmt="%.18e")  # how the Kaggle files are written
    return path


def edit_csv(path: Path, line: int, column: int, text: str) -> None:
    """Replace field ``column`` (1-based) of ``line`` (1-based) with ``text``."""
    lines = path.read_text().splitlines()
    fields = lines[line - 1].split(",")
    fields[column - 1] = text
    lines[line - 1] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")


def mads_parquet(path: Path, beats: BeatSet) -> Path:
    frame = pd.DataFrame(beats.x, columns=[str(i) for i in range(187)])
    frame["target"] = beats.y.astype(np.float64)
    frame.to_parquet(path)
    return path


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def test_kaggle_mitbih_csvs(heart, real, tmp_path):
    train = kaggle_csv(tmp_path / "mitbih_train.csv", rows(real["train"]))
    test = kaggle_csv(tmp_path / "mitbih_test.csv", rows(real["test"]))
    result = heart.json("fetch", "--import", train, test, "--out", tmp_path / "ds")
    assert result["status"] == "imported"
    assert result["classes"] == ["N", "S", "V", "F", "Q"]
    assert result["splits"] == {
        "mitbih": {
            "train": {"total": 2450, "N": 1000, "S": 350, "V": 450, "F": 300, "Q": 350},
            "test": {"total": 615, "N": 250, "S": 90, "V": 110, "F": 75, "Q": 90},
        }
    }
    for part in ("train", "test"):
        got = load_split(tmp_path / "ds", "mitbih", part)
        np.testing.assert_array_equal(got.x, real[part].x)  # float32 round trip, exact
        np.testing.assert_array_equal(got.y, real[part].y)
    manifest = read_manifest(tmp_path / "ds")
    assert manifest["sampling_rate_hz"] == 120.0
    assert manifest["imported"]["mitbih"]["train"][0]["file"] == "mitbih_train.csv"
    assert manifest["imported"]["mitbih"]["split_by"] == "the files' own train/test"
    # CSV beats carry no timing: no rhythm columns, and the manifest says so.
    assert manifest["rhythm"] is None
    assert "no rhythm columns" in manifest["rhythm_note"]
    assert load_split(tmp_path / "ds", "mitbih", "train").rhythm is None


def test_pandas_csv_variant_with_header_and_index(heart, real, tmp_path):
    paths = []
    for part in ("train", "test"):
        path = tmp_path / f"mitbih_{part}.csv"
        pd.DataFrame(rows(real[part])).to_csv(path)  # header ",0,...,187" + index column
        paths.append(path)
    assert paths[0].read_text().startswith(",0,1,2,")
    result = heart("fetch", "--import", *paths, "--out", tmp_path / "ds")
    assert "mitbih" in result.stdout and "2,450" in result.stdout
    got = load_split(tmp_path / "ds", "mitbih", "test")
    np.testing.assert_array_equal(got.x, real["test"].x)


def test_ptbdb_normal_and_abnormal_become_one_split(heart, real, tmp_path):
    beats = real["train"]
    normal = rows(beats.subset(np.flatnonzero(beats.y == 0)))
    normal[:, -1] = 0.0
    abnormal = rows(beats.subset(np.flatnonzero(beats.y != 0)))
    abnormal[:, -1] = 1.0
    files = [
        kaggle_csv(tmp_path / "ptbdb_normal.csv", normal),
        kaggle_csv(tmp_path / "ptbdb_abnormal.csv", abnormal),
    ]
    result = heart.json("fetch", "--import", *files, "--out", tmp_path / "ptb")
    assert result["classes"] == ["0", "1"]
    split = result["splits"]["ptbdb"]
    assert split["train"] == {"total": 1960, "0": 800, "1": 1160}
    assert split["test"] == {"total": 490, "0": 200, "1": 290}
    manifest = read_manifest(tmp_path / "ptb")
    assert manifest["imported"]["ptbdb"]["split_by"] == (
        "stratified random, test_fraction 0.2, seed 42"
    )
    assert manifest["sampling_rate_hz"] is None


def test_mads_parquet_files(heart, real, tmp_path):
    files = [mads_parquet(tmp_path / f"heart_big_{p}.parq", real[p]) for p in ("train", "test")]
    result = heart.json("fetch", "--import", *files, "--out", tmp_path / "ds")
    assert result["classes"] == ["N", "S", "V", "F", "Q"]
    assert result["splits"]["heart_big"]["test"]["total"] == 615
    got = load_split(tmp_path / "ds", "heart_big", "train")
    np.testing.assert_array_equal(got.x, real["train"].x)
    np.testing.assert_array_equal(got.y, real["train"].y)
    assert got.rhythm is None
    assert read_manifest(tmp_path / "ds")["rhythm"] is None


def test_a_later_import_keeps_the_earlier_splits(heart, real, tmp_path):
    out = tmp_path / "ds"
    small = {p: real[p].subset(np.arange(40)) for p in ("train", "test")}
    heart(
        "fetch",
        "--import",
        *[mads_parquet(tmp_path / f"heart_big_{p}.parq", small[p]) for p in ("train", "test")],
        "--out",
        out,
    )
    result = heart.json(
        "fetch",
        "--import",
        *[kaggle_csv(tmp_path / f"mitbih_{p}.csv", rows(small[p])) for p in ("train", "test")],
        "--out",
        out,
    )
    assert sorted(result["splits"]) == ["heart_big", "mitbih"]
    assert sorted(read_manifest(out)["imported"]) == ["heart_big", "mitbih"]


# ------------------------------------------------------------------ malformed files


@pytest.fixture
def small(real, tmp_path) -> Path:
    """A valid 10-row Kaggle-format mitbih_train.csv (and its test partner)."""
    kaggle_csv(tmp_path / "mitbih_test.csv", rows(real["test"].subset(np.arange(10))))
    return kaggle_csv(tmp_path / "mitbih_train.csv", rows(real["train"].subset(np.arange(10))))


def check_error(heart, tmp_path, path: Path, message: str, code: int = 1) -> None:
    out = tmp_path / "ds"
    result = heart(
        "fetch", "--import", path, path.with_name("mitbih_test.csv"), "--out", out, expect=code
    )
    assert last_line(result.stderr) == f"error: {path}: {message}"
    assert not (out / "manifest.json").exists()
    assert not out.exists() or not any(out.iterdir())


CSV_CASES = [
    # (line, column, new text, message)
    (3, 188, None, "line 3 has 187 columns, expected 188 (187 values and the label)"),
    (2, 188, "0.0,1.0", "line 2 has 189 columns, expected 188 (187 values and the label)"),
    (4, 10, "abc", "line 4, column 10: 'abc' is not a number"),
    (5, 7, "", "line 5, column 7: '' is not a number"),
    (2, 5, "nan", "line 2, column 5: nan is not a finite number; drop or repair the row"),
    (6, 187, "-inf", "line 6, column 187: -inf is not a finite number; drop or repair the row"),
    (5, 188, "7.0", "line 5: label 7 is out of range (MIT-BIH labels are 0..4)"),
    (2, 188, "-1", "line 2: label -1 is out of range (MIT-BIH labels are 0..4)"),
    (8, 188, "1.5", "line 8: label 1.5 is not a whole class index (MIT-BIH labels are 0..4)"),
]


@pytest.mark.parametrize(("line", "column", "text", "message"), CSV_CASES)
def test_malformed_kaggle_csv(heart, small, tmp_path, line, column, text, message):
    if text is None:  # drop the column
        lines = small.read_text().splitlines()
        lines[line - 1] = ",".join(lines[line - 1].split(",")[:-1])
        small.write_text("\n".join(lines) + "\n")
    else:
        edit_csv(small, line, column, text)
    check_error(heart, tmp_path, small, message)


def test_malformed_pandas_csv_names_the_file_line(heart, real, tmp_path):
    path = tmp_path / "mitbih_train.csv"
    pd.DataFrame(rows(real["train"].subset(np.arange(10)))).to_csv(path)
    kaggle_csv(tmp_path / "mitbih_test.csv", rows(real["test"].subset(np.arange(10))))
    edit_csv(path, 4, 12, "x1")  # line 4 = data row 2 after the header; column 1 is the index
    check_error(heart, tmp_path, path, "line 4, column 12: 'x1' is not a number")


def parquet_case(real, tmp_path, change) -> Path:
    frame = pd.DataFrame(real["train"].x[:10], columns=[str(i) for i in range(187)])
    frame["target"] = real["train"].y[:10].astype(np.float64)
    frame = change(frame)
    path = tmp_path / "heart_big_train.parq"
    frame.to_parquet(path)
    mads_parquet(tmp_path / "heart_big_test.parq", real["test"].subset(np.arange(10)))
    return path


def with_value(column: str, row: int, value):
    def change(frame):
        if isinstance(value, str):  # a text column, as a CSV read without dtypes gives
            frame[column] = frame[column].astype(str)
        frame.loc[row, column] = value
        return frame

    return change


PARQUET_CASES = [
    (
        lambda f: f.drop(columns=["186"]),
        'expected 187 beat columns "0".."186" and "target", got 186 beat columns',
    ),
    (
        lambda f: f.drop(columns=["target"]),
        'expected 187 beat columns "0".."186" and "target", got 187 beat columns and no target',
    ),
    (with_value("3", 2, "x"), "row 2, column \"3\": 'x' is not a number"),
    (
        with_value("7", 1, float("nan")),
        'row 1, column "7": nan is not a finite number; drop or repair the row',
    ),
    (
        with_value("0", 4, float("inf")),
        'row 4, column "0": inf is not a finite number; drop or repair the row',
    ),
    (with_value("target", 9, 9.0), "row 9: label 9 is out of range (MIT-BIH labels are 0..4)"),
    (
        with_value("target", 0, 0.5),
        "row 0: label 0.5 is not a whole class index (MIT-BIH labels are 0..4)",
    ),
]


@pytest.mark.parametrize(("change", "message"), PARQUET_CASES)
def test_malformed_mads_parquet(heart, real, tmp_path, change, message):
    path = parquet_case(real, tmp_path, change)
    out = tmp_path / "ds"
    result = heart(
        "fetch", "--import", path, path.with_name("heart_big_test.parq"), "--out", out, expect=1
    )
    assert last_line(result.stderr) == f"error: {path}: {message}"
    assert not (out / "manifest.json").exists()


def test_missing_partner_file(heart, small, tmp_path):
    result = heart("fetch", "--import", small, "--out", tmp_path / "ds", expect=2)
    assert last_line(result.stderr) == (
        f"error: {small}: the test part of split 'mitbih' is missing (expected a file named "
        "mitbih_test.csv); pass both, or a file without a _train/_test suffix to have it split"
    )


def test_unknown_file_type(heart, tmp_path):
    path = tmp_path / "beats.txt"
    path.write_text("1,2,3\n")
    result = heart("fetch", "--import", path, expect=2)
    assert last_line(result.stderr) == (
        f"error: {path}: cannot import a .txt file; give Kaggle .csv files or MADS "
        ".parq/.parquet files"
    )


def test_refuses_the_folder_of_a_records_build(heart, small, sample_dir, tmp_path):
    out = tmp_path / "built"
    import shutil

    shutil.copytree(sample_dir, out)
    before = (out / "manifest.json").read_bytes()
    result = heart(
        "fetch", "--import", small, small.with_name("mitbih_test.csv"), "--out", out, expect=2
    )
    assert last_line(result.stderr) == (
        f"error: {out}: holds the dataset built from the records by `heart fetch`; import "
        "into another folder with --out DIR"
    )
    assert (out / "manifest.json").read_bytes() == before


def test_a_failed_import_leaves_the_earlier_one_intact(heart, small, tmp_path):
    out = tmp_path / "ds"
    test = small.with_name("mitbih_test.csv")
    heart("fetch", "--import", small, test, "--out", out)
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    edit_csv(small, 2, 3, "oops")
    heart("fetch", "--import", small, test, "--out", out, expect=1)
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_output_folder_not_writable(heart, small, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = heart(
        "fetch",
        "--import",
        small,
        small.with_name("mitbih_test.csv"),
        "--out",
        blocker / "ds",
        expect=1,
    )
    assert last_line(result.stderr) == (
        f"error: cannot write to {blocker}/ds: Not a directory; choose a writable folder with --out"
    )
