"""`heart fetch --source`: the dataset built from the real 48 records, its splits and errors.

The whole build (about 8 s) runs once for this module and every check reads from it.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import wfdb
from conftest import quick_args

from heartcli.data.build import SPLITS
from heartcli.data.dataset import load_split, read_manifest
from heartcli.data.mads import HeartBeatsFactory, datastreamers, stack_batch
from heartcli.data.mitdb import DS1, DS2, RECORDS, pinned_sha256, record_files
from heartcli.io import sha256_file

TOTALS = {"N": 90_589, "S": 2_779, "V": 7_236, "F": 803, "Q": 8_039}
KAGGLE_RANDOM = {
    "train": {"N": 72_471, "S": 2_223, "V": 5_788, "F": 641, "Q": 6_431},
    "test": {"N": 18_118, "S": 556, "V": 1_448, "F": 162, "Q": 1_608},
}
CLASSES = ["N", "S", "V", "F", "Q"]


@pytest.fixture(scope="module")
def built(mitbih_build):
    """`heart fetch --source <mitdb> --out DIR --sample-out SAMPLE`: conftest's one build of
    the session (read-only)."""
    b = mitbih_build
    return b.dir, b.sample, b.summary, b.stderr


def counts(block: dict) -> dict:
    return {k: v for k, v in block.items() if k != "total"}


def test_totals_equal_the_kaggle_set(built, mitdb_dir):
    out, _, result, stderr = built
    assert result["status"] == "built"
    assert result["records_dir"] == str(mitdb_dir)
    assert counts(result["total"]) == TOTALS
    manifest = read_manifest(out)
    assert counts(manifest["total"]) == TOTALS
    assert manifest["sampling_rate_hz"] == 120.0
    assert manifest["input_length"] == 187
    assert manifest["source_sha256"] == pinned_sha256()
    assert f"verifying the records in {mitdb_dir}" in stderr
    # Built straight from the source: nothing was copied next to the dataset.
    assert not (out / "records").exists()
    for split in ("random", "inter-patient"):
        for part in ("train", "test"):
            assert (out / split / f"{part}.parquet").is_file()


def test_random_split_matches_kaggle_within_two_beats(built):
    _, _, result, _ = built
    for part, kaggle in KAGGLE_RANDOM.items():
        ours = counts(result["splits"]["random"][part])
        for name in CLASSES:
            assert abs(ours[name] - kaggle[name]) <= 2, (part, name, ours[name], kaggle[name])


def test_inter_patient_split_is_ds1_ds2(built):
    out, _, result, _ = built
    manifest = read_manifest(out)
    assert manifest["inter_patient"] == {"train": list(DS1), "test": list(DS2)}
    ip = manifest["splits"]["inter-patient"]
    assert ip["train"] == {"total": 50_999, "N": 45_845, "S": 943, "V": 3_788, "F": 415, "Q": 8}
    assert ip["test"] == {"total": 49_690, "N": 44_238, "S": 1_836, "V": 3_221, "F": 388, "Q": 7}
    assert result["splits"]["inter-patient"] == ip
    train = pq.read_table(out / "inter-patient" / "train.parquet", columns=["record"])
    test = pq.read_table(out / "inter-patient" / "test.parquet", columns=["record"])
    assert set(train.column("record").to_pylist()) == set(DS1)
    assert set(test.column("record").to_pylist()) == set(DS2)


@pytest.fixture(scope="module")
def random_split(built):
    out = built[0]
    return [load_split(out, "random", part) for part in ("train", "test")]


def by_hand(mitdb_dir: Path, record: str, index: int) -> np.ndarray:
    """The beat at annotation ``index`` of ``record``, by plain numpy slicing of the raw record."""
    signal = wfdb.rdrecord(str(mitdb_dir / record), physical=False).d_signal[:, 0]
    ann = wfdb.rdann(str(mitdb_dir / record), "atr")
    r0, r1 = ann.sample[index], ann.sample[index + 1]
    r2 = ann.sample[index + 2] if index + 2 < len(ann.sample) else len(signal)
    segment = signal[r0 : r1 + (r2 - r1) // 5 : 3].astype(np.float64)
    segment = (segment - segment.min()) / (segment.max() - segment.min())
    beat = np.zeros(187, dtype=np.float32)
    kept = segment[:187].astype(np.float32)
    beat[: len(kept)] = kept
    return beat


@pytest.mark.parametrize(
    ("record", "symbol", "nth"),
    [
        ("100", "N", 0),  # the first beat of the first record
        ("208", "V", 10),  # a ventricular beat
        ("208", "F", 3),  # a fusion beat
        ("107", "/", 5),  # a paced beat (Q)
        ("232", "A", 7),  # a supraventricular beat
        ("102", "/", 0),  # channel 0 of 102 is V5, not MLII: the Kaggle build still uses it
    ],
)
def test_rows_equal_values_computed_by_hand(random_split, mitdb_dir, record, symbol, nth):
    ann = wfdb.rdann(str(mitdb_dir / record), "atr")
    index = [i for i, s in enumerate(ann.symbol) if s == symbol][nth]
    expected = by_hand(mitdb_dir, record, index)
    label = {"N": 0, "V": 2, "F": 3, "/": 4, "A": 1}[symbol]
    found = []
    for beats in random_split:
        hit = np.flatnonzero((beats.record == record) & (beats.sample == ann.sample[index]))
        found += [(beats.x[i], beats.y[i]) for i in hit]
    assert len(found) == 1
    x, y = found[0]
    assert y == label
    np.testing.assert_array_equal(x, expected)


def test_last_annotation_of_a_record_is_not_a_row(built, mitdb_dir):
    out, _, _, _ = built
    ann = wfdb.rdann(str(mitdb_dir / "100"), "atr")
    beats = load_split(out, "inter-patient", "test")  # 100 is in DS2
    mine = beats.sample[beats.record == "100"]
    assert ann.sample[-1] not in mine
    beat_symbols = set("NLRejAaJSVEF/fQ")
    expected = [
        s for s, sym in zip(ann.sample[:-1], ann.symbol[:-1], strict=True) if sym in beat_symbols
    ]
    assert sorted(mine.tolist()) == sorted(int(s) for s in expected)


def test_sample_out_reproduces_the_bundled_sample(built, sample_dir):
    # "The same sample" is judged by its content, not its bytes: a parquet file names the
    # pyarrow release that wrote it (and its encoder may change), so the bytes, and the
    # manifest's SHA-256 of them, change with the writer. Everything else must be equal:
    # the manifest (counts, records, parameters), every table's columns, types and
    # metadata, every beat and label in the same order; and the rebuilt manifest's
    # checksums are those of its own files.
    _, sample, result, _ = built
    assert result["sample"]["dir"] == str(sample)
    rebuilt, bundled = read_manifest(sample), read_manifest(sample_dir)
    files = rebuilt.pop("files")
    bundled.pop("files")
    assert rebuilt == bundled
    parts = [f"{split}/{part}.parquet" for split in SPLITS for part in ("train", "test")]
    assert sorted(files) == sorted(parts)
    for name in parts:
        assert files[name] == sha256_file(sample / name), name
        mine, theirs = pq.read_table(sample / name), pq.read_table(sample_dir / name)
        assert mine.schema.equals(theirs.schema, check_metadata=True), name
        assert mine.equals(theirs), name


def test_second_run_is_a_no_op_with_a_table(heart, built, mitdb_dir):
    out, _, _, _ = built
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    result = heart("fetch", "--source", mitdb_dir, "--out", out)
    assert f"{out}: up to date" in result.stdout
    lines = result.stdout.splitlines()
    assert any(line.split("│")[1:3] == [" random        ", " train "] for line in lines)
    total = next(line for line in lines if "all beats" in line)
    assert [c.strip() for c in total.split("│")[3:-1]] == [
        "90,589",
        "2,779",
        "7,236",
        "803",
        "8,039",
        "109,446",
    ]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamp


def test_changed_parameters_rebuild_in_place(heart, built, mitdb_dir, tmp_path):
    """A manifest made with another seed is not current: fetch rebuilds, atomically."""
    out, _, _, _ = built
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    from heartcli.data.fetch import current_manifest

    assert current_manifest(copy, lead="channel0", test_fraction=0.2, seed=42) is not None
    assert current_manifest(copy, lead="channel0", test_fraction=0.2, seed=7) is None
    assert current_manifest(copy, lead="MLII", test_fraction=0.2, seed=42) is None
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["source_sha256"]["100.dat"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert current_manifest(copy, lead="channel0", test_fraction=0.2, seed=42) is None


def linked_copy(mitdb_dir: Path, target: Path, skip: str) -> Path:
    target.mkdir()
    for record in RECORDS:
        for name in record_files(record):
            if name != skip:
                (target / name).symlink_to(mitdb_dir / name)
    return target


def test_missing_record_in_source(heart, mitdb_dir, sample_dir, tmp_path):
    source = linked_copy(mitdb_dir, tmp_path / "src", skip="105.dat")
    out = tmp_path / "earlier"
    shutil.copytree(sample_dir, out)  # an earlier dataset there must survive the failure
    result = heart("fetch", "--source", source, "--out", out, expect=1)
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {source}: 1 record files missing (first: 105.dat); the folder must hold all 48 "
        "records (.hea .atr .dat) of mitdb 1.0.0, or run `heart fetch` without --source to "
        "download them"
    )
    assert filecmp.dircmp(out, sample_dir).diff_files == []
    assert (out / "manifest.json").read_bytes() == (sample_dir / "manifest.json").read_bytes()


def test_truncated_record_in_source(heart, mitdb_dir, tmp_path):
    source = linked_copy(mitdb_dir, tmp_path / "src", skip="100.dat")
    data = (mitdb_dir / "100.dat").read_bytes()[:1_000_000]
    (source / "100.dat").write_bytes(data)
    import hashlib

    got = hashlib.sha256(data).hexdigest()[:12]
    want = pinned_sha256()["100.dat"][:12]
    out = tmp_path / "out"
    result = heart("fetch", "--source", source, "--out", out, expect=1)
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {source}/100.dat: SHA-256 mismatch (expected {want}…, got {got}…): the file is "
        "truncated or corrupt; replace it with PhysioNet's copy, or run `heart fetch` without "
        "--source"
    )
    assert list(out.iterdir()) == []


def test_source_that_is_not_a_folder(heart, tmp_path):
    result = heart("fetch", "--source", tmp_path / "nope", "--out", tmp_path / "o", expect=1)
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path}/nope: no such folder; pass the folder holding the 48 mitdb records"
    )


def test_output_folder_not_writable(heart, mitdb_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = heart("fetch", "--source", mitdb_dir, "--out", blocker / "data", expect=1)
    assert result.stderr.strip() == (
        f"error: cannot write to {blocker}/data: Not a directory; "
        "choose a writable folder with --out"
    )


def test_bad_option_combinations(heart, tmp_path, mitdb_dir):
    result = heart("fetch", "--import", "--source", mitdb_dir, "x.csv", expect=2)
    assert (
        result.stderr.strip() == "error: --import cannot be combined with --source or --sample-out"
    )
    result = heart("fetch", "x.csv", expect=2)
    assert result.stderr.strip() == "error: x.csv: files are only taken with --import"
    result = heart("fetch", "--import", expect=2)
    assert result.stderr.strip() == (
        "error: --import needs the files to import, e.g. --import mitbih_train.csv ..."
    )


def test_mads_datastreamer_streams_the_sample(sample_dir):
    streamers = datastreamers(sample_dir, "random", batchsize=16)
    x, y = next(streamers["train"].stream())
    assert tuple(x.shape) == (16, 187, 1)
    assert tuple(y.shape) == (16,)
    assert str(x.dtype) == "torch.float32" and str(y.dtype) == "torch.int64"
    assert len(streamers["train"]) == 2450 // 16
    assert len(streamers["valid"]) == 615 // 16
    # Items are the real rows of the split.
    factory = HeartBeatsFactory(sample_dir, "inter-patient", channels_last=False)
    datasets = factory.create_dataset()
    test = load_split(sample_dir, "inter-patient", "test")
    xi, yi = datasets["valid"][3]
    assert tuple(xi.shape) == (1, 187)
    np.testing.assert_array_equal(xi.numpy()[0], test.x[3])
    assert int(yi) == int(test.y[3])
    xb, yb = stack_batch([datasets["train"][i] for i in range(4)])
    assert tuple(xb.shape) == (4, 1, 187) and tuple(yb.shape) == (4,)


# --------------------------------------------- moved here from tests/test_faults.py


def quick(data_dir: Path, *sets: str, tracking: bool = False) -> list[str]:
    """QUICK (conftest: the quick-start CNN, 200 beats a class) on ``data_dir``, 2 epochs."""
    return quick_args("train.epochs=2", *sets, data=data_dir, tracking=tracking)


def unwritable(folder: Path) -> None:
    """Make ``folder`` refuse changes for real: chmod for a normal user; for root, who
    ignores permission bits, the immutable attribute (chattr +i)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return
    if shutil.which("chattr") is None:
        pytest.skip("running as root without chattr: cannot make a folder unwritable")
    done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"chattr +i refused here: {done.stderr.decode().strip()}")


def writable(folder: Path) -> None:
    if os.geteuid() != 0:
        folder.chmod(0o755)
    else:
        subprocess.run(["chattr", "-i", str(folder)], check=False)


def digests(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".heart-build-" not in str(p)
    }


def test_a_rebuild_that_cannot_finish_leaves_the_old_dataset_whole(
    heart, mitdb_dir, mitbih, tmp_path
):
    out = Path(shutil.copytree(mitbih, tmp_path / "d"))  # the session's build, as fetch left it
    before = digests(out)
    unwritable(out / "inter-patient")
    try:
        probe = out / "inter-patient" / "probe"
        with pytest.raises(OSError):
            probe.write_text("x")
        result = heart(
            "-q", "fetch", "--source", mitdb_dir, "--out", out, "--set", "data.seed=7", expect=1
        )
        assert "Traceback" not in result.stderr
        assert result.stderr.strip().startswith("error: cannot replace the dataset in")
        assert len(result.stderr.strip().splitlines()) == 1
        # the old dataset, every byte of it, manifest and files together
        assert digests(out) == before
        assert not list(out.glob(".heart-build-*"))
        again = heart.json("fetch", "--source", mitdb_dir, "--out", out)
        assert again["status"] == "up to date"  # seed 42, and its files are the listed ones
    finally:
        writable(out / "inter-patient")
    rebuilt = heart.json("fetch", "--source", mitdb_dir, "--out", out, "--set", "data.seed=7")
    assert rebuilt["status"] == "built"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parameters"]["seed"] == 7
    assert digests(out)["random/train.parquet"] != before["random/train.parquet"]


def test_up_to_date_checks_the_files_against_the_manifest(
    heart, mitdb_dir, mitbih, sample_dir, tmp_path
):
    """A split file that is not the one the manifest lists (a half-swapped rebuild) is
    neither "up to date" for fetch nor trained on."""
    out = Path(shutil.copytree(mitbih, tmp_path / "d"))  # the session's build
    # put another dataset's file in place of one part: the manifest no longer describes it
    shutil.copy(sample_dir / "random" / "train.parquet", out / "random" / "train.parquet")
    result = heart("train", *quick(out), "--name", "mixed", expect=1)
    assert "is not the file manifest.json lists" in result.stderr
    assert not Path("runs/mixed").exists()
    assert heart.json("fetch", "--source", mitdb_dir, "--out", out)["status"] == "built"
    assert len(load_split(out, "random", "train")) == 87_556
