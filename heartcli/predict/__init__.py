"""`heart predict`: a trained or exported model applied to beats or to a raw WFDB record.

MODEL is a run folder (PyTorch, `heart train`) or an exported ``.onnx`` with the
``model_card.json`` that `heart export` writes beside it; the card is checked against the
model (SHA-256, input length, number of classes) before anything is predicted, and an ONNX
model is run by ONNX Runtime without importing torch.

INPUT is a beat file in the layout `heart fetch --import` reads (Kaggle CSV, MADS or
dataset parquet, read by :mod:`heartcli.data.importer`; its labels are the reference), or
a WFDB record path without extension, cut by :mod:`heartcli.predict.segment` with the recipe of
`heart fetch`. When a reference exists (the file's labels, the record's .atr) the result
carries per-class agreement: sensitivity and PPV of the predictions against it.

A rhythm model (``[model] rhythm``) also takes the RR features of every beat: computed
from the record's beat annotations, or from the detected R-peaks (:mod:`heartcli.predict.segment`,
with the code of `heart fetch`), or read from the rhythm columns of a beat file; a file
without them is refused (exit 2) with the columns it lacks.

With ``adapt`` (``--adapt signal|labels``, :mod:`heartcli.predict.adapt`) a record's first
``learning_period_s`` seconds adapt a copy of a run's model to that record; their beats are
left out of the result (the summary's ``adaptation`` says how many), and every row and the
summary name the protocol.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from heartcli.errors import UsageError
from heartcli.io import atomic_path, write_json
from heartcli.predict.adapt import LEARNING_PERIOD_S, adapt_to_record, check_adapt
from heartcli.predict.inputs import Beats, check_range, read_input
from heartcli.predict.load import Model, load_model
from heartcli.threads import ThreadPolicy

OUTPUT_SUFFIXES = (".csv", ".parquet", ".json")


@dataclass
class Prediction:
    model: Model
    beats: Beats
    proba: np.ndarray
    seconds: dict[str, float]
    adaptation: dict[str, Any] | None = None  # --adapt: how the model was adapted

    @property
    def predicted(self) -> np.ndarray:
        return self.proba.argmax(axis=1)

    def agreement(self) -> dict[str, Any] | None:
        """Per-class sensitivity / PPV of the predictions against the reference labels."""
        from heartcli.metrics import metrics

        ref = self.beats.reference
        if ref is None:
            return None
        known = ref >= 0
        if not known.any():
            return None
        m = metrics(ref[known], self.predicted[known], self.model.classes)
        return {
            "beats": int(known.sum()),
            "accuracy": m["accuracy"],
            "macro_f1": m["macro_f1"],
            "per_class": {
                name: {k: c[k] for k in ("support", "predicted", "sensitivity", "ppv")}
                for name, c in m["per_class"].items()
            },
        }

    def summary(self) -> dict[str, Any]:
        counts = np.bincount(self.predicted, minlength=len(self.model.classes))
        return {
            "model": str(self.model.path),
            "model_kind": self.model.kind,
            "input": self.beats.source,
            "beats": len(self.proba),
            "segmentation": self.beats.method,
            "lead": self.beats.lead,
            "classes": list(self.model.classes),
            "counts": {c: int(counts[i]) for i, c in enumerate(self.model.classes)},
            "agreement": self.agreement(),
            "detection": self.beats.detection,
            "notes": list(self.beats.notes),
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "protocol": "plain" if self.adaptation is None else self.adaptation["protocol"],
            "adaptation": self.adaptation,
        }

    def rows(self) -> dict[str, Any]:
        """Column name -> values: record, sample, predicted, [reference], p_<class>..."""
        classes = self.model.classes
        columns: dict[str, Any] = {
            "record": [str(r) for r in self.beats.record],
            "sample": self.beats.sample.astype(np.int64),
            "predicted": [classes[i] for i in self.predicted],
        }
        if self.beats.reference is not None:
            columns["reference"] = [classes[i] if i >= 0 else "" for i in self.beats.reference]
        for i, name in enumerate(classes):
            columns[f"p_{name}"] = self.proba[:, i]
        if self.adaptation is not None:  # an adapted model's rows say so in every row
            columns["protocol"] = [self.adaptation["protocol"]] * len(self.proba)
        return columns


def check_output(out: str | Path | None) -> None:
    if out is not None and Path(out).suffix.lower() not in OUTPUT_SUFFIXES:
        raise UsageError(f"--out {out}: unknown output type; name a .csv, .parquet or .json file")


def own_files(*paths: str | Path) -> list[Path]:
    """The files a command reads, which it must never write onto: a beat file or a model
    file as given, a WFDB record's .hea, signal files and .atr, a model's card. (The files
    of a run folder are guarded as a folder heart keeps: :func:`heartcli.io.check_output`.)"""
    from heartcli.data.records import is_record, record_files
    from heartcli.export.guard import CARD_JSON

    files: list[Path] = []
    for given in paths:
        path = Path(given)
        if is_record(path):
            files += record_files(path)
        else:
            files.append(path)
            if path.suffix.lower() in (".onnx", ".pte"):
                files.append(path.parent / CARD_JSON)
    return files


def check_out_target(out: str | Path | None, *inputs: str | Path) -> None:
    """``--out`` is a new or regular file that is none of the command's input files (a beat
    file, a record's own files, the model) nor a file of a folder heart keeps."""
    from heartcli.io import check_output as guard

    if out is not None:
        guard(out, inputs=own_files(*inputs))


def predict(
    model_path: str | Path,
    input_path: str | Path,
    *,
    lead: str = "auto",
    peaks: str = "auto",
    out: str | Path | None = None,
    detector: str | None = None,
    adapt: str | None = None,
    learning_period_s: float = LEARNING_PERIOD_S,
) -> Prediction:
    """Classify every beat of ``input_path`` with the model at ``model_path``; with
    ``adapt`` (:mod:`heartcli.predict.adapt`) the beats of the first ``learning_period_s``
    seconds adapt a copy of the model and are left out: the rest is classified by it."""
    check_output(out)
    check_out_target(out, input_path, model_path)
    if peaks not in ("auto", "annotations", "detect"):
        raise UsageError(f"--peaks {peaks}: use auto, annotations or detect")
    check_adapt(adapt, learning_period_s, model_path)
    t0 = time.perf_counter()
    threads = ThreadPolicy("auto")  # measures the CPU others use while the model and data load
    model = load_model(model_path)
    t1 = time.perf_counter()
    beats = read_input(input_path, model, lead=lead, peaks=peaks, detector=detector)
    check_range(model, beats.x, input_path)
    if model.kind == "run":
        threads.start(wait=False)
    t2 = time.perf_counter()
    seconds = {"load_model": t1 - t0, "read_input": t2 - t1}
    adaptation = None
    if adapt is not None:
        adapted = adapt_to_record(model, beats, adapt, learning_period_s)
        model, adaptation = adapted.model, adapted.info
        beats = beats.subset(~adapted.learning)
        beats.notes.append(
            f"{adaptation['protocol']}: the first {learning_period_s:g} s "
            f"({adaptation['learning_beats']:,} beats) adapted the model to this recording and "
            "are not classified: the output holds the beats after them"
        )
        seconds["adapt"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    proba = model.proba(beats.inputs(model))
    seconds["predict"] = time.perf_counter() - t3
    result = Prediction(model, beats, proba, seconds, adaptation)
    if out is not None:
        write_prediction(result, out)
    return result


def write_prediction(result: Prediction, out: str | Path) -> None:
    """One row per beat, as CSV, parquet or JSON by the suffix of ``out``."""
    out = Path(out)
    suffix = out.suffix.lower()
    check_output(out)
    if suffix == ".json":
        rows = result.rows()
        names = list(rows)
        beats = [
            {k: (v.item() if hasattr(v, "item") else v) for k, v in zip(names, values, strict=True)}
            for values in zip(*(rows[k] for k in names), strict=True)
        ]
        write_json(out, {"summary": result.summary(), "beats": beats})
        return
    import pyarrow as pa

    table = pa.table(result.rows())
    with atomic_path(out) as tmp:
        if suffix == ".csv":
            import pyarrow.csv as pacsv

            pacsv.write_csv(table, tmp)
        else:
            import pyarrow.parquet as pq

            pq.write_table(table, tmp)


def check_wfdb_out(
    model_path: str | Path,
    input_path: str | Path,
    out_dir: str | Path | None,
    annotator: str,
    force: bool,
) -> Path:
    """`heart predict --format wfdb`, checked before anything is predicted: a record as
    INPUT, a folder as OUT, and ``OUT/<record>.<annotator>`` a file it may write (never the
    record's own .hea, .dat or .atr, nor a file of a folder heart keeps)."""
    from heartcli.data.records import is_record
    from heartcli.predict.wfdb import check_wfdb_target

    if out_dir is None:
        raise UsageError("--format wfdb writes OUT/<record>.<annotator>: pass --out DIR")
    if not is_record(Path(input_path)):
        raise UsageError(
            f"{input_path}: --format wfdb writes the beats of a WFDB record; give a record "
            "path without extension as INPUT"
        )
    return check_wfdb_target(
        out_dir, Path(input_path).name, annotator, force, own_files(input_path, model_path)
    )


def write_wfdb(
    result: Prediction, out_dir: str | Path, *, annotator: str = "heart", force: bool = False
) -> Path:
    """The beats of a record as ``OUT_DIR/<record>.<annotator>`` (``wfdb.wrann``): one
    annotation per beat at its R-peak sample in the record's own rate, the predicted class
    as its symbol (N, S, V, F or Q) and ``p=<probability>`` of that class as its aux note."""
    from heartcli.data.records import read_header
    from heartcli.predict.wfdb import SYMBOLS, test_labels, write_annotations

    beats = result.beats
    if beats.method not in ("annotations", "detected"):
        raise UsageError(
            f"{beats.source}: --format wfdb writes the beats of a WFDB record; give a record "
            "path without extension as INPUT"
        )
    source = Path(beats.source)
    to_ec57 = test_labels(result.model.classes)
    predicted = result.predicted
    p = result.proba[np.arange(len(predicted)), predicted]
    return write_annotations(
        source.name,
        beats.sample,
        [SYMBOLS[i] for i in to_ec57[predicted]],
        [f"p={v:.4f}" for v in p],
        read_header(source).fs,
        out_dir,
        annotator=annotator,
        force=force,
        inputs=own_files(source, result.model.path),
    )
