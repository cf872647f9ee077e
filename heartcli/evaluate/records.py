"""`heart evaluate MODEL --records`: whole recordings scored beat by beat as EC57 prescribes,
and `heart predict --format wfdb`: a record's beats as a WFDB annotation file.

For each record the model labels every beat heart finds (detected R-peaks, or the .atr's
own beats with ``--peaks annotations``, cut and classified exactly as `heart predict`
does), and :mod:`heartcli.evaluate.ec57` compares those beats with the record's reference ``.atr``
in the record's own samples and sampling rate. The paced records 102, 104, 107 and 217
are left out by default (EC57's reporting rules), and named in the result.

With ``adapt`` each record is classified by a copy of the model adapted to that record on
its learning period (:mod:`heartcli.predict.adapt`; the document and the CSV name the
protocol); with ``plot`` each record's worst stretches are drawn
(:mod:`heartcli.evaluate.strips`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from heartcli.data.records import (
    Header,
    check_record,
    has_annotations,
    read_annotations,
    read_header,
    record_path,
)
from heartcli.errors import DataError, UsageError
from heartcli.evaluate import ec57
from heartcli.evaluate.strips import check_plot_dir, plot_record
from heartcli.predict.wfdb import test_labels
from heartcli.progress import Progress

PEAKS = ("detect", "annotations")


# --------------------------------------------------------------------------- records


def list_records(spec: str | Path) -> list[Path]:
    """A folder of WFDB records (every ``*.hea`` in it) or comma-separated record paths,
    each once (:func:`listed_records`)."""
    return listed_records(spec)[0]


def listed_records(spec: str | Path) -> tuple[list[Path], list[str]]:
    """The records of ``--records`` (a folder, or record paths ``a,b,c`` with or without
    extension), resolved, each once in the order given, and a note per record listed more
    than once (twice, or spelled two ways: ``100``, ``./100.hea``, a link)."""
    text = str(spec).strip()
    folder = Path(text)
    if folder.is_dir():
        found = sorted(p.with_suffix("") for p in folder.glob("*.hea"))
        if not found:
            raise UsageError(f"--records {folder}: no WFDB records (*.hea) in this folder")
        return found, []
    paths = [Path(p.strip()) for p in text.split(",") if p.strip()]
    if not paths:
        raise UsageError("--records: give a folder of WFDB records or record paths a,b,c")
    records: list[Path] = []
    seen: dict[Path, Path] = {}  # resolved header -> the record as first given
    notes: list[str] = []
    for given in paths:
        path = check_record(record_path(given), "--records: ")
        key = Path(f"{path}.hea").resolve()
        if key in seen:
            notes.append(f"{given} is {seen[key]} again: scored once")
            continue
        seen[key] = path
        records.append(path)
    return records, notes


def record_labels(records: list[Path]) -> dict[Path, str]:
    """The name each record's row gets: its own name, or where two different records share
    one (``a/100``, ``b/100``) enough of its path to tell them apart."""
    labels: dict[Path, str] = {}
    for path in records:
        label = path.name
        clash = [p for p in records if p.name == path.name and p != path]
        depth = 1
        while clash and depth <= len(path.parts):
            depth += 1
            label = "/".join(path.parts[-depth:])
            clash = [p for p in clash if "/".join(p.parts[-depth:]) == label]
        labels[path] = label if not clash else str(path.resolve())
    return labels


@dataclass
class Selection:
    records: list[Path]
    paced: list[str]  # left out: paced records (EC57)
    missing: list[str]  # left out: no .atr (--skip-missing)


def select_records(
    paths: list[Path], *, include_paced: bool = False, skip_missing: bool = False
) -> Selection:
    """The records to score: without .atr refused by name (or skipped), paced left out."""
    missing = [p for p in paths if not has_annotations(p)]
    if missing and not skip_missing:
        names = ", ".join(str(p) for p in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DataError(
            f"no reference annotations (.atr) for {len(missing)} record(s): {names}; "
            "EC57 scoring needs them (pass --skip-missing to leave those records out)"
        )
    paced = [] if include_paced else [p for p in paths if p.name in ec57.PACED_RECORDS]
    keep = [p for p in paths if p not in missing and p not in paced]
    if not keep:
        raise UsageError("--records: no record left to score (all paced or without .atr)")
    return Selection(keep, [p.name for p in paced], [p.name for p in missing])


def read_beats(path: Path, extension: str, header: Header) -> ec57.BeatAnnotations:
    """The beats of ``PATH.<extension>`` (read by :func:`heartcli.data.records.read_annotations`);
    an empty file, or beats past the signal's end, is one DataError naming the file."""
    file = Path(f"{path}.{extension}")
    beats = ec57.beats_from(*read_annotations(path, extension))
    if len(beats) == 0:
        raise DataError(f"{file}: no beat annotations in the file; is it the right annotator?")
    last = int(beats.sample.max())
    if header.length and last >= header.length:
        raise DataError(
            f"{file}: beat annotations up to sample {last:,}, past the signal's end "
            f"({header.length:,} samples); the annotations are not of this record"
        )
    return beats


# --------------------------------------------------------------------------- scoring


def score_records(
    model_path: str | Path,
    records: str | Path,
    *,
    peaks: str = "detect",
    lead: str = "auto",
    learning_period_s: float = ec57.LEARNING_PERIOD_S,
    window_s: float = ec57.MATCH_WINDOW_S,
    include_paced: bool = False,
    skip_missing: bool = False,
    progress: Progress | None = None,
    detector: str | None = None,
    adapt: str | None = None,
    plot: str | Path | None = None,
) -> dict[str, Any]:
    """The EC57 document of a model over records: per record, gross and average.

    Every record's header and .atr are read and checked before the model runs on any;
    ``progress`` gets a task of as many units as records to score, then ``done(record,
    entry)`` and ``advance()`` after each record is scored. With ``adapt`` each
    record is classified by a copy of the model adapted to it on its learning period
    (:mod:`heartcli.predict.adapt`); with ``plot`` its worst stretches are drawn there
    (:mod:`heartcli.evaluate.strips`)."""
    from heartcli.predict.adapt import check_adapt, protocol
    from heartcli.predict.load import load_model

    if peaks not in PEAKS:
        raise UsageError(f"--peaks {peaks}: use detect or annotations")
    if learning_period_s < 0:
        raise UsageError(f"--learning-period {learning_period_s:g}: must be 0 or more seconds")
    check_adapt(adapt, learning_period_s, model_path)
    selection = select_records(
        list_records(records), include_paced=include_paced, skip_missing=skip_missing
    )
    run = Scoring(
        peaks=peaks,
        lead=lead,
        learning_period_s=learning_period_s,
        window_s=window_s,
        detector=_detector(detector),
        adapt=adapt,
        skip_missing=skip_missing,
        plot=None if plot is None else check_plot_dir(plot),
    )
    references = run.references(selection)
    if not references:
        raise UsageError("--records: no record left to score; " + "; ".join(run.notes))
    model = load_model(model_path)
    progress = progress or Progress()
    progress.task("records", total=len(references))
    entries: list[dict[str, Any]] = []
    for path, header, reference in references:
        entry = run.score(model, path, header, reference)
        if entry is not None:
            entries.append(entry)
            progress.done(entry["record"], entry)
        progress.advance()
    if not entries:
        raise UsageError("--records: no record left to score; " + "; ".join(run.notes))
    gross, average = ec57.totals(entries)
    excluded: dict[str, list[str]] = {"paced": selection.paced, "no_atr": selection.missing}
    if adapt is not None:
        excluded.update(run.skipped)
    return {
        "model": str(model_path),
        "model_kind": model.kind,
        "protocol": protocol(adapt),
        "peaks": peaks,
        "detector": run.detector if peaks == "detect" else None,
        "learning_period_s": learning_period_s,
        "match_window_s": window_s,
        "excluded": excluded,
        "gross": gross,
        "average": average,
        "records": entries,
        "notes": run.notes,
        "seconds": {k: round(v, 3) for k, v in run.seconds.items()},
        **({"plots": str(run.plot)} if run.plot is not None else {}),
    }


def _detector(detector: str | None) -> str:
    from heartcli.predict.segment import DETECTOR, DETECTORS

    detector = detector or DETECTOR
    if detector not in DETECTORS:
        raise UsageError(f"--detector {detector}: use {' or '.join(DETECTORS)}")
    return detector


@dataclass
class Scoring:
    """How the records of one `heart evaluate --records` call are scored, and what it has
    left out and noted so far."""

    peaks: str
    lead: str
    learning_period_s: float
    window_s: float
    detector: str
    adapt: str | None
    skip_missing: bool
    plot: Path | None
    notes: list[str] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(
        default_factory=lambda: {"too_short": [], "no_learning_beats": []}
    )
    seconds: dict[str, float] = field(default_factory=lambda: {"predict": 0.0, "score": 0.0})

    def references(self, selection: Selection) -> list[tuple[Path, Header, ec57.BeatAnnotations]]:
        """Every record's header and reference beats; with --adapt, a record too short for
        the learning period or without a beat in it refused (or skipped, --skip-missing)."""
        from heartcli.predict.adapt import learning_start, no_learning_beat, too_short

        kept = []
        for path in selection.records:
            header = read_header(path)
            reference = read_beats(path, "atr", header)
            if self.adapt is not None:
                period = self.learning_period_s
                start = learning_start(header.fs, period)
                if short := too_short(path.name, (header.length or 0) / header.fs, period):
                    self.refuse(path, "too_short", short)
                    continue
                if not (reference.sample < start).any():
                    self.refuse(path, "no_learning_beats", no_learning_beat(path.name, period))
                    continue
            kept.append((path, header, reference))
        return kept

    def refuse(self, path: Path, why: str, line: str) -> None:
        """A record --adapt cannot use: exit 2, or with --skip-missing left out and said so."""
        if not self.skip_missing:
            raise UsageError(line)
        self.skipped[why].append(path.name)
        self.notes.append(f"left out (--skip-missing): {line}")

    def score(
        self, model: Any, path: Path, header: Header, reference: ec57.BeatAnnotations
    ) -> dict[str, Any] | None:
        """One record's EC57 entry, or None when --adapt had to leave it out."""
        from heartcli.predict.adapt import NoLearningBeat

        t0 = time.perf_counter()
        try:
            sample, predicted, _, info = classify_record(
                model, path, peaks=self.peaks, lead=self.lead, detector=self.detector,
                adapt=self.adapt, learning_period_s=self.learning_period_s,
            )  # fmt: skip
        except NoLearningBeat as exc:
            self.refuse(path, "no_learning_beats", str(exc))
            return None
        t1 = time.perf_counter()
        pairs: list[tuple[int, int, int, int]] | None = [] if self.plot is not None else None
        test = ec57.BeatAnnotations(sample, test_labels(model.classes)[predicted])
        entry, note = score_record(
            path, header, reference, test, self.learning_period_s, self.window_s, pairs
        )
        if info is not None:
            entry["adaptation"] = info
        if pairs is not None and self.plot is not None:
            entry["plot"] = plot_record(
                path, pairs, header.fs, header.length or int(sample.max(initial=0)) + 1,
                self.plot, lead=self.lead,
            )  # fmt: skip
        self.notes.extend([note] if note else [])
        self.seconds["predict"] += t1 - t0
        self.seconds["score"] += time.perf_counter() - t1
        return entry


def score_record(
    path: Path,
    header: Header,
    reference: ec57.BeatAnnotations,
    test: ec57.BeatAnnotations,
    learning_period_s: float,
    window_s: float,
    pairs: list[tuple[int, int, int, int]] | None = None,
) -> tuple[dict[str, Any], str | None]:
    """One record's EC57 entry (bxb's matching of ``test`` against ``reference``), and a
    note when nothing of it was scored; ``pairs`` receives bxb's pairs (:func:`ec57.compare`)."""
    comparison = ec57.compare(
        reference,
        test,
        fs=header.fs,
        start_s=learning_period_s,
        end=header.length or None,
        window_s=window_s,
        pairs=pairs,
    )
    entry = ec57.record_entry(path.name, comparison, header.fs)
    entry["fs"] = header.fs
    if entry["qrs_tp"] + entry["qrs_fn"] == 0:
        return entry, (
            f"{path.name}: no reference beat after the learning period "
            f"({learning_period_s:g} s; the record is {header.length / header.fs:.0f} s): "
            "nothing scored; lower -f/--learning-period"
        )
    return entry, None


def classify_record(
    model: Any,
    path: Path,
    *,
    peaks: str,
    lead: str = "auto",
    detector: str | None = None,
    adapt: str | None = None,
    learning_period_s: float = ec57.LEARNING_PERIOD_S,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any] | None]:
    """A record's beats as `heart predict` finds and labels them: R-peak samples at the
    record's own rate, predicted class indices, probabilities, and with ``adapt`` how the
    model was adapted to the record (then a copy adapted on the learning period labels
    every beat; EC57's learning period leaves that period's beats unscored, but bxb lets
    the last test beat before it pair with the first reference beat after it)."""
    from heartcli.predict.adapt import adapt_to_record
    from heartcli.predict.inputs import check_range, read_input

    beats = read_input(path, model, lead=lead, peaks=peaks, detector=detector)
    check_range(model, beats.x, path)
    info = None
    if adapt is not None:
        adapted = adapt_to_record(model, beats, adapt, learning_period_s)
        model, info = adapted.model, adapted.info
    proba = model.proba(beats.inputs(model))
    return beats.sample.astype(np.int64), proba.argmax(axis=1), proba, info


# ------------------------------------------------------------------ bxb's -L lines


def check_csv_out(out: str | Path, model_path: str | Path, records: str | Path) -> Path:
    """``--out FILE.csv``, checked before any record is scored: a .csv that is a new or
    regular file, none of the records' own files nor the model's, and no file of a folder
    heart keeps (a run's history.csv...): :func:`heartcli.io.check_output`."""
    from heartcli.io import check_output
    from heartcli.predict import own_files

    out = Path(out)
    if out.suffix.lower() != ".csv":
        raise UsageError(f"--out {out}: name a .csv file")
    return check_output(out, inputs=own_files(model_path, *list_records(records)))


def write_csv(document: dict[str, Any], out: str | Path) -> Path:
    """One line per record in bxb's -L column order (then V FPR), then sumstats' totals:
    Gross (the pooled counts and their figures) and Average (the figures only), as CSV."""
    import csv
    import io

    from heartcli.io import write_text

    out = Path(out)
    if out.suffix.lower() != ".csv":
        raise UsageError(f"--out {out}: name a .csv file")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    # An adapted model's lines name its protocol in a last column: never mixed with plain ones.
    tail = [] if document.get("protocol", "plain") == "plain" else [document["protocol"]]
    writer.writerow([*ec57.BXB_COLUMNS, *(["Protocol"] if tail else [])])
    for entry in document["records"]:
        writer.writerow(ec57.bxb_line(entry) + tail)
    gross = ec57.bxb_line({**document["gross"], "rr_error_ms": None, "record": "Gross"})
    writer.writerow(gross + tail)
    average = {**document["average"], "record": "Average", "matrix": {}}
    line = ec57.bxb_line(average)
    writer.writerow(["Average"] + [""] * (len(ec57.BXB_COLUMNS) - 9) + line[-8:] + tail)
    write_text(out, buffer.getvalue())
    return out


# ------------------------------------------------------------------ before and after


# -f/--learning-period at most a week: longer than any record (Holter: 24-48 h), so every
# finite value that means something is accepted, and the matching never sees a start
# beyond its sample counter.
MAX_LEARNING_PERIOD_S = 7 * 86_400.0


def check_learning_period(seconds: float) -> float:
    """``-f/--learning-period``: a finite number of seconds, 0 to a week (one line, exit 2)."""
    if not (math.isfinite(seconds) and 0 <= seconds <= MAX_LEARNING_PERIOD_S):
        raise UsageError(
            f"-f/--learning-period {seconds:.6g}: use 0 to {MAX_LEARNING_PERIOD_S:,.0f} seconds "
            "(a week; EC57's is 300)"
        )
    return seconds


def name_records(document: dict[str, Any], records: str | Path) -> dict[str, Any]:
    """The document of :func:`score_records` with a note for each record listed more than
    once (it was scored once: :func:`list_records`), and distinct row names for different
    records of one name (``a/100``, ``b/100``: :func:`record_labels`)."""
    listed, notes = listed_records(records)
    paced = set((document.get("excluded") or {}).get("paced") or [])
    scored = [p for p in listed if has_annotations(p) and p.name not in paced]
    labels = record_labels(scored)
    groups: dict[str, list[Path]] = {}
    for path in scored:
        groups.setdefault(path.name, []).append(path)
    for name, paths in groups.items():
        rows = [e for e in document["records"] if e["record"] == name]
        if len(paths) < 2:
            continue
        if len(rows) == len(paths):  # in the order they were scored: the order given
            for row, path in zip(rows, paths, strict=True):
                row["record"] = labels[path]
        else:
            notes.append(f"{', '.join(map(str, paths))} share the row name {name}")
    document["notes"] = notes + list(document.get("notes") or [])
    return document
