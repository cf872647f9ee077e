"""heartcli.data.records, the one reader of WFDB records, on the real MIT-BIH records: what
it reads, and the one line it says for every way a record can be wrong."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import wfdb
from conftest import copy_record

from heartcli.data.records import (
    NoLead,
    check_record,
    choose_channel,
    is_record,
    read_annotations,
    read_header,
    read_signal,
    record_files,
    record_path,
)
from heartcli.errors import DataError, UsageError


def error(exc: pytest.ExceptionInfo[BaseException]) -> str:
    """The error's text, checked to be one line."""
    text = str(exc.value)
    assert "\n" not in text, text
    return text


def edit_header(record: Path, old: str, new: str) -> None:
    header = Path(f"{record}.hea")
    header.write_text(header.read_text().replace(old, new))


# ------------------------------------------------------------------- what it reads


def test_record_100_header_signal_and_annotations(mitdb_dir: Path):
    header = read_header(mitdb_dir / "100")
    assert (header.fs, header.length, header.leads) == (360.0, 650_000, ["MLII", "V5"])
    signal = read_signal(mitdb_dir / "100")
    want = wfdb.rdrecord(str(mitdb_dir / "100"), physical=False, channels=[0]).d_signal[:, 0]
    assert signal.samples.dtype == np.int64
    np.testing.assert_array_equal(signal.samples, want)
    assert (signal.fs, signal.channel, signal.lead, signal.notes) == (360.0, 0, "MLII", [])
    assert (signal.gain, signal.baseline) == (200.0, 1024.0)
    samples, symbols = read_annotations(mitdb_dir / "100")
    ann = wfdb.rdann(str(mitdb_dir / "100"), "atr")
    np.testing.assert_array_equal(samples, ann.sample)
    assert symbols == list(ann.symbol) and symbols[0] == "+" and len(samples) == 2274


def test_the_lead_asked_for(mitdb_dir: Path):
    # 114 has MLII as its second channel, 102 has none.
    assert read_signal(mitdb_dir / "114", "MLII").channel == 1
    assert read_signal(mitdb_dir / "114", "channel0").lead == "V5"
    auto = read_signal(mitdb_dir / "102", "auto")
    assert auto.channel == 0 and auto.notes == [
        "102 has no MLII lead (leads: V5, V2); used channel 0 (V5), as the Kaggle recipe does"
    ]
    with pytest.raises(NoLead) as exc:
        read_signal(mitdb_dir / "102", "MLII")
    assert error(exc) == (
        f"{mitdb_dir / '102'}: record has no MLII lead (leads: V5, V2); "
        "pass --lead channel0 to use another lead"
    )
    assert isinstance(exc.value, DataError)
    with pytest.raises(NoLead, match=r"no V9 lead \(leads: none\); pass --lead auto"):
        choose_channel([], "V9", Path("x"))


def test_record_paths_and_files(mitdb_dir: Path, tmp_path: Path):
    assert [record_path(f"a/100{s}") for s in ("", ".hea", ".dat", ".atr")] == [Path("a/100")] * 4
    assert record_path("a/100.csv") == Path("a/100.csv")
    assert is_record(mitdb_dir / "100") and not is_record(mitdb_dir / "100.hea")
    assert check_record(mitdb_dir / "100") == mitdb_dir / "100"
    with pytest.raises(UsageError) as exc:
        check_record(tmp_path / "nope", "--records: ")
    assert error(exc) == (
        f"--records: {tmp_path / 'nope'}: no WFDB record here (nope.hea missing); give record "
        "paths without extension, e.g. ../shared/data/mitdb/100"
    )
    names = {p.name for p in record_files(mitdb_dir / "100")}
    assert names == {"100.hea", "100.dat", "100.atr"}
    record = copy_record(mitdb_dir, tmp_path / "other")
    edit_header(record, "100.dat", "signal.dat")
    assert "signal.dat" in {p.name for p in record_files(record)}


# ------------------------------------------------------------------- what it refuses


def test_missing_or_damaged_signal_files(mitdb_dir: Path, tmp_path: Path):
    record = copy_record(mitdb_dir, tmp_path / "nodat")
    Path(f"{record}.dat").unlink()
    with pytest.raises(DataError) as exc:
        read_signal(record)
    assert error(exc) == (
        f"{record}: cannot read the signal ([Errno 2] No such file or directory: "
        f"'{record}.dat'); check the .dat file"
    )
    # A header naming a signal file that is not there: the same line, naming that file.
    record = copy_record(mitdb_dir, tmp_path / "named")
    edit_header(record, "100.dat", "elsewhere.dat")
    with pytest.raises(DataError) as exc:
        read_signal(record)
    assert error(exc).startswith(f"{record}: cannot read the signal ([Errno 2]")
    assert f"'{record.parent / 'elsewhere.dat'}'); check the .dat file" in error(exc)
    # A truncated .dat, and a signal format wfdb does not know.
    record = copy_record(mitdb_dir, tmp_path / "short")
    Path(f"{record}.dat").write_bytes(Path(f"{mitdb_dir / '100'}.dat").read_bytes()[:1001])
    with pytest.raises(DataError, match=r"cannot read the signal \(.*\); check the .dat file"):
        read_signal(record)
    record = copy_record(mitdb_dir, tmp_path / "format")
    edit_header(record, " 212 ", " 999 ")
    with pytest.raises(DataError, match=r"cannot read the signal \('999'\); check the .dat"):
        read_signal(record)


def test_missing_or_unreadable_headers(mitdb_dir: Path, tmp_path: Path):
    with pytest.raises(DataError) as exc:
        read_header(tmp_path / "999")
    assert error(exc).startswith(
        f"{tmp_path / '999'}.hea: cannot read the record header ([Errno 2]"
    )
    record = copy_record(mitdb_dir, tmp_path / "garbage")
    for text in ("hello world\n", ""):
        Path(f"{record}.hea").write_text(text)
        with pytest.raises(DataError) as exc:
            read_header(record)
        assert error(exc).startswith(f"{record}.hea: cannot read the record header (")
    Path(f"{record}.hea").write_text("100 0 360 650000\n")
    with pytest.raises(DataError) as exc:
        read_signal(record)
    assert error(exc) == f"{record}.hea: the record has no signals"


@pytest.mark.parametrize(("rate", "shown"), [("0", "0"), ("10", "10"), ("1000000000", "1e+09")])
def test_sampling_rates_outside_an_ecg_records(mitdb_dir, tmp_path, rate, shown):
    record = copy_record(mitdb_dir, tmp_path / "rate")
    edit_header(record, " 360 ", f" {rate} ")
    with pytest.raises(DataError) as exc:
        read_signal(record)
    assert error(exc) == (
        f"{record}.hea: sampling frequency {shown} Hz is outside 50 to 20,000 Hz "
        "(an ECG record's); fix the header"
    )


def test_names_that_are_not_ascii(mitdb_dir: Path, tmp_path: Path):
    folder = tmp_path / "rec"
    folder.mkdir()
    for ext in ("hea", "dat", "atr"):
        shutil.copy(mitdb_dir / f"100.{ext}", folder / f"é100.{ext}")
    edit_header(folder / "é100", "100", "é100")
    with pytest.raises(DataError) as exc:
        read_header(folder / "é100")
    assert error(exc) == (
        f"{folder / 'é100'}: the record's name or a file its header names ('é100') is not "
        "ASCII; WFDB reads only ASCII names: rename the record's files (and the names in its .hea)"
    )
    record = copy_record(mitdb_dir, tmp_path / "named")
    edit_header(record, "100.dat", "sïgnal.dat")
    with pytest.raises(DataError, match=r"\('sïgnal.dat'\) is not ASCII"):
        read_signal(record)


def test_missing_or_damaged_annotations(mitdb_dir: Path, tmp_path: Path):
    record = copy_record(mitdb_dir, tmp_path / "rec", atr=False)
    with pytest.raises(DataError) as exc:
        read_annotations(record)
    assert error(exc) == (
        f"{record}.atr: cannot read the annotations ([Errno 2] No such file or directory: "
        f"'{record}.atr')"
    )
    with pytest.raises(DataError, match=r"/100\.heart: cannot read the annotations \("):
        read_annotations(record, "heart")
    atr = (mitdb_dir / "100.atr").read_bytes()
    for damaged in (atr[:101], bytes(range(256)) * 3):
        Path(f"{record}.atr").write_bytes(damaged)
        with pytest.raises(DataError) as exc:
            read_annotations(record)
        assert error(exc).startswith(f"{record}.atr: cannot read the annotations (")
    Path(f"{record}.atr").unlink()
    Path(f"{record}.atr").mkdir()
    with pytest.raises(DataError, match=r"\.atr: cannot read the annotations \(\[Errno 21\]"):
        read_annotations(record)
