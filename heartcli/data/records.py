"""WFDB records on disk: the one module that reads them (``wfdb.rdheader``, ``rdrecord``,
``rdann``) for `heart fetch` (:mod:`heartcli.data.beats`), `heart predict`
(:mod:`heartcli.predict.segment`, :mod:`heartcli.predict.wfdb`) and `heart evaluate
--records` (:mod:`heartcli.evaluate.records`), and says in one line what is wrong with a
record: no ``.hea``, a header wfdb cannot parse, a name that is not ASCII, no signals, a
sampling rate outside 50 Hz to 20 kHz, no lead of the name asked for, a signal or an
annotation file that is missing or damaged.

A record is named by its path without extension (``data/mitdb/100``: ``100.hea``, the
signal files its header names, ``100.atr``). Signals are read as raw integer ADC units
(``physical=False``), one lead at a time. wfdb is imported inside the functions only, so
that `heart --help` never loads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from heartcli.errors import DataError, UsageError
from heartcli.io import read_bounded

SUFFIXES = (".hea", ".dat", ".atr")  # a record path given with one of these: the record
MAX_HEADER_BYTES = 1 << 20
FS_MIN_HZ = 50.0  # the rates heart reads: an ECG record's, 50 Hz to 20 kHz
FS_MAX_HZ = 20_000
# What wfdb raises on a file it cannot read: missing or a folder (OSError), truncated or
# not a WFDB file (ValueError, IndexError, EOFError), an unknown signal format (KeyError).
READ_ERRORS = (OSError, ValueError, IndexError, KeyError, EOFError)


@dataclass
class Header:
    """What heart uses of a record's ``.hea``."""

    fs: float
    length: int  # samples in the record (0: not stated)
    leads: list[str] = field(default_factory=list)  # the signals' names, in channel order


@dataclass
class Signal:
    """One lead of a record, raw integer ADC units at the record's own rate."""

    samples: np.ndarray  # int64
    fs: float
    channel: int
    lead: str
    leads: list[str]
    gain: float  # ADC units per mV
    baseline: float  # the ADC value of 0 mV
    notes: list[str] = field(default_factory=list)  # how the lead was chosen, when not asked


class NoLead(DataError):
    """The record has no lead of the name asked for (a build skips such records)."""


# ------------------------------------------------------------------- names and files


def record_path(given: str | Path) -> Path:
    """A record as given, ``100``, ``100.hea``, ``100.dat`` or ``100.atr``: ``100``."""
    path = Path(given)
    return path.with_suffix("") if path.suffix in SUFFIXES else path


def is_record(path: str | Path) -> bool:
    """A WFDB record is named without extension: PATH.hea exists."""
    return Path(f"{path}.hea").is_file()


def check_record(path: str | Path, where: str = "") -> Path:
    """``path`` once PATH.hea is there; a UsageError naming the missing header otherwise
    (``where``: the option it came from, e.g. ``"--records: "``)."""
    path = Path(path)
    if not is_record(path):
        raise UsageError(
            f"{where}{path}: no WFDB record here ({path.name}.hea missing); give record "
            "paths without extension, e.g. ../shared/data/mitdb/100"
        )
    return path


def has_annotations(path: str | Path, extension: str = "atr") -> bool:
    return Path(f"{path}.{extension}").is_file()


def record_files(path: str | Path) -> list[Path]:
    """A WFDB record's own files: its header, the signal files the header names (a .dat
    by default) and its reference annotations (.atr). No command writes onto them."""
    import wfdb

    path = Path(path)
    files = [Path(f"{path}.hea"), Path(f"{path}.atr"), Path(f"{path}.dat")]
    try:
        names = wfdb.rdheader(str(path)).file_name or []
    except Exception:  # an unreadable header: its default file names are what is known
        names = []
    files += [path.parent / str(name) for name in names if name]
    return files


def check_ascii_names(path: Path) -> None:
    """WFDB names are ASCII: the wfdb package reads a signal file ``é100.dat`` as
    ``100.dat`` and then reports that file missing. One line that says so instead."""
    names = [path.name]
    header = Path(f"{path}.hea")
    if header.is_file():
        try:
            text = read_bounded(header, MAX_HEADER_BYTES, "WFDB header").decode("utf-8", "replace")
        except DataError:
            text = ""
        lines = [ln.split() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
        names += [ln[0] for ln in lines if ln]
    bad = next((n for n in names if not n.isascii()), None)
    if bad is not None:
        raise DataError(
            f"{path}: the record's name or a file its header names ({bad!r}) is not ASCII; "
            "WFDB reads only ASCII names: rename the record's files (and the names in its .hea)"
        )


# ------------------------------------------------------------------- reading


def read_header(path: str | Path) -> Header:
    """``PATH.hea``, checked: ASCII names, parsed by wfdb, at least one signal, a sampling
    rate of 50 Hz to 20 kHz."""
    import wfdb

    path = Path(path)
    check_ascii_names(path)
    try:
        header = wfdb.rdheader(str(path))
    except READ_ERRORS as exc:
        raise DataError(f"{path}.hea: cannot read the record header ({exc})") from None
    leads = [str(n) for n in (header.sig_name or [])]
    if not leads:
        raise DataError(f"{path}.hea: the record has no signals")
    fs = float(header.fs or 0)
    if not (FS_MIN_HZ <= fs <= FS_MAX_HZ):
        raise DataError(
            f"{path}.hea: sampling frequency {fs:g} Hz is outside {FS_MIN_HZ:g} to "
            f"{FS_MAX_HZ:,} Hz (an ECG record's); fix the header"
        )
    return Header(fs, int(header.sig_len or 0), leads)


def choose_channel(leads: list[str], lead: str, path: Path) -> tuple[int, list[str]]:
    """The channel to read: ``auto`` (MLII when the record has it, else channel 0, said in
    a note), ``channel0``, or a lead name the record must have (:class:`NoLead`)."""
    notes: list[str] = []
    if lead == "channel0":
        return 0, notes
    if lead == "auto":
        if "MLII" in leads:
            return leads.index("MLII"), notes
        notes.append(
            f"{path.name} has no MLII lead (leads: {', '.join(leads)}); "
            f"used channel 0 ({leads[0] if leads else '?'}), as the Kaggle recipe does"
        )
        return 0, notes
    if lead in leads:
        return leads.index(lead), notes
    hint = "--lead channel0" if lead == "MLII" else "--lead auto"
    raise NoLead(
        f"{path}: record has no {lead} lead (leads: {', '.join(leads) or 'none'}); "
        f"pass {hint} to use another lead"
    )


def read_signal(path: str | Path, lead: str = "channel0") -> Signal:
    """One lead of a record (:func:`choose_channel`) as raw integer ADC units, after its
    header's checks (:func:`read_header`)."""
    import wfdb

    path = Path(path)
    header = read_header(path)
    channel, notes = choose_channel(header.leads, lead, path)
    try:
        rec = wfdb.rdrecord(str(path), physical=False, channels=[channel])
    except READ_ERRORS as exc:
        raise DataError(f"{path}: cannot read the signal ({exc}); check the .dat file") from None
    if rec.d_signal is None or len(rec.d_signal) == 0:
        raise DataError(f"{path}: the record has no samples")
    gain = float((rec.adc_gain or [200.0])[0]) or 200.0
    baseline = float((rec.baseline or [0])[0])
    samples = np.asarray(rec.d_signal[:, 0], dtype=np.int64)
    lead_name = header.leads[channel]
    return Signal(samples, float(rec.fs), channel, lead_name, header.leads, gain, baseline, notes)


def read_annotations(path: str | Path, extension: str = "atr") -> tuple[np.ndarray, list[str]]:
    """Every annotation of ``PATH.<extension>``: sample positions (int64, at the record's
    own rate) and symbols."""
    import wfdb

    path = Path(path)
    try:
        ann = wfdb.rdann(str(path), extension)
    except READ_ERRORS as exc:
        raise DataError(f"{path}.{extension}: cannot read the annotations ({exc})") from None
    return np.asarray(ann.sample, dtype=np.int64), [str(s) for s in ann.symbol]
