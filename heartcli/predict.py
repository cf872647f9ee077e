"""`heart predict`: a trained or exported model applied to beats or to a raw WFDB record.

MODEL is a run folder (PyTorch, `heart train`) or an exported ``.onnx`` with the
``model_card.json`` that `heart export` writes beside it; the card is checked against the
model (SHA-256, input length, number of classes) before anything is predicted, and an ONNX
model is run by ONNX Runtime without importing torch.

INPUT is a beat file in the layout `heart fetch --import` reads (Kaggle CSV, MADS or
dataset parquet, read by :mod:`heartcli.data.importer`; its labels are the reference), or
a WFDB record path without extension, cut by :mod:`heartcli.segment` with the recipe of
`heart fetch`. When a reference exists (the file's labels, the record's .atr) the result
carries per-class agreement: sensitivity and PPV of the predictions against it.

A rhythm model (``[model] rhythm``) also takes the RR features of every beat: computed
from the record's beat annotations, or from the detected R-peaks (:mod:`heartcli.segment`,
with the code of `heart fetch`), or read from the rhythm columns of a beat file; a file
without them is refused (exit 2) with the columns it lacks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from heartcli.config import RHYTHM_FEATURES
from heartcli.errors import DataError, UsageError
from heartcli.inference import Runner, batched, model_inputs, onnx_runner, onnx_session
from heartcli.io import atomic_path, read_json, sha256_file, write_json
from heartcli.threads import ThreadPolicy

CARD_NAME = "model_card.json"
OUTPUT_SUFFIXES = (".csv", ".parquet", ".json")
BEAT_SUFFIXES = (".csv", ".parquet", ".parq")


# --------------------------------------------------------------------------- models


@dataclass
class Model:
    """A model ready to predict: beats float32 [n, input_length] -> probabilities [n, k]."""

    path: Path
    kind: str  # "run", "onnx" or "pte"
    classes: list[str]
    input_length: int
    lead: str  # lead of the training data: "channel0" or "MLII"
    proba_fn: Runner = field(repr=False)  # one batch of beats -> probabilities
    class_map: dict[str, str] = field(default_factory=dict)  # [data] classes of the training

    def reference_index(self, labels: np.ndarray, source: list[str]) -> np.ndarray:
        """Reference labels (indices into ``source`` classes) as indices into the model's
        classes, through its ``[data] classes`` map; -1 where the model has no such class."""
        lookup = []
        for name in source:
            name = self.class_map.get(name, name)
            lookup.append(self.classes.index(name) if name in self.classes else -1)
        table = np.asarray(lookup, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64)
        return np.where(labels >= 0, table[np.clip(labels, 0, len(table) - 1)], -1)

    # [min, max] of the training beats: the run's manifest records it; an exported model's
    # card says "min-max normalised to [0, 1]".
    input_range: tuple[float, float] = (0.0, 1.0)

    rhythm: bool = False  # takes the rhythm features as a second input

    def proba(self, inputs: list[np.ndarray]) -> np.ndarray:
        """Probabilities for the model's inputs (beats, and rhythm for a rhythm model)."""
        if len(inputs[0]) == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return batched(self.proba_fn, inputs).astype(np.float32, copy=False)


def load_model(path: str | Path) -> Model:
    """A run folder or an exported .onnx or .pte (validated against its model card)."""
    path = Path(path)
    if path.is_dir():
        return _load_run_model(path)
    if path.suffix.lower() == ".onnx":
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
        return load_onnx(path)
    if path.suffix.lower() == ".pte":
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
        from heartcli.predict_pte import load_pte

        return load_pte(path)
    if not path.exists():
        raise UsageError(f"{path}: no such run folder, .onnx or .pte file")
    raise UsageError(
        f"{path}: MODEL must be a run folder (heart train) or an exported .onnx or .pte "
        "(heart export)"
    )


def training_lead(manifest: dict[str, Any], fallback: str) -> str:
    """The lead the run's dataset was built from, as its data manifest records it."""
    from heartcli.dataset import read_manifest

    data_dir = (manifest.get("data") or {}).get("dir")
    if data_dir:
        try:
            lead = (read_manifest(data_dir).get("parameters") or {}).get("lead")
        except DataError:
            lead = None
        if lead in ("channel0", "MLII"):
            return str(lead)
    return fallback


def _load_run_model(path: Path) -> Model:
    from heartcli.inference import torch_runner, uses_rhythm
    from heartcli.runs import load_run

    run = load_run(path)
    run.model.eval()
    proba = torch_runner(run.model)
    lead = training_lead(run.manifest, run.config.data.lead)
    lo, hi = (run.manifest.get("data") or {}).get("input_range") or (0.0, 1.0)
    return Model(
        path,
        "run",
        list(run.classes),
        run.input_length,
        lead,
        proba,
        dict(run.config.data.classes),
        (float(lo), float(hi)),
        uses_rhythm(run.model),
    )


def read_card(model_path: Path) -> dict[str, Any]:
    card_path = model_path.parent / CARD_NAME
    if not card_path.is_file():
        raise DataError(
            f"{model_path}: no {CARD_NAME} beside it; use the folder `heart export` wrote"
        )
    card = read_json(card_path, "export the model again")
    if not isinstance(card, dict) or not isinstance(card.get("classes"), list):
        raise DataError(f"{card_path}: not a heart model card; export the model again")
    return card


def check_card_entry(path: Path, card: dict[str, Any]) -> None:
    """The exported file must be one the card lists, with the SHA-256 the card gives it."""
    card_path = path.parent / CARD_NAME
    entry = next((f for f in card.get("files", []) if f.get("file") == path.name), None)
    if entry is None:
        raise DataError(f"{card_path} does not list {path.name}; use the card exported with it")
    if entry.get("sha256") != sha256_file(path):
        raise DataError(
            f"{path.name} does not match {card_path} (SHA-256 differs); "
            "use the files of one export together, or export again"
        )


def load_onnx(path: Path) -> Model:
    """An exported ONNX model, after checking that its card describes exactly this file."""
    card = read_card(path)
    session = onnx_session(path)
    check_card_entry(path, card)
    card_path = path.parent / CARD_NAME
    classes = [str(c) for c in card["classes"]]
    length = int((card.get("input") or {}).get("length", -1))
    inputs, outputs = session.get_inputs(), session.get_outputs()
    rhythm = bool(card.get("rhythm_input"))
    if len(inputs) != (2 if rhythm else 1):
        raise DataError(
            f"{card_path} does not match {path.name}: the card says {2 if rhythm else 1} "
            f"input(s), the model takes {len(inputs)}; export again"
        )
    in_shape = list(inputs[0].shape)
    out_shape = list(outputs[0].shape) if outputs else []
    model_length = in_shape[1] if len(in_shape) == 2 else None
    model_classes = out_shape[1] if len(out_shape) == 2 else None
    if model_length != length or model_classes != len(classes):
        raise DataError(
            f"{card_path} does not match {path.name}: the card says {length} samples in, "
            f"{len(classes)} classes out; the model takes {model_length} and gives "
            f"{model_classes}; export again"
        )
    lead = str((card.get("input") or {}).get("lead", "channel0"))
    proba = onnx_runner(session)
    class_map = {str(k): str(v) for k, v in (card.get("class_map") or {}).items()}
    return Model(path, "onnx", classes, length, lead, proba, class_map, rhythm=rhythm)


# --------------------------------------------------------------------------- inputs


@dataclass
class Beats:
    """Beats to classify and where they come from."""

    source: str
    x: np.ndarray
    record: np.ndarray
    sample: np.ndarray
    reference: np.ndarray | None  # class index per beat, -1 where unknown
    method: str  # "file", "annotations" or "detected"
    lead: str | None = None
    notes: list[str] = field(default_factory=list)
    detection: dict[str, Any] | None = None
    rhythm: np.ndarray | None = None  # float32 [n, 9], when the input has beat timing

    def inputs(self, model: Model) -> list[np.ndarray]:
        """What ``model`` takes: the beats, and their rhythm features for a rhythm model."""
        return model_inputs(self.x, self.rhythm, model.rhythm, self.source)


def read_input(
    path: str | Path,
    model: Model,
    *,
    lead: str = "auto",
    peaks: str = "auto",
    detector: str | None = None,
) -> Beats:
    """A beat file or a WFDB record, as beats the model can take."""
    from heartcli.dataset import AAMI_CLASSES
    from heartcli.segment import is_record, segment_record

    path = Path(path)
    if is_record(path):
        chosen = "MLII" if lead == "auto" and model.lead == "MLII" else lead
        seg = segment_record(
            path,
            lead=chosen,
            peaks=peaks,  # type: ignore[arg-type]
            detector=detector,
        )
        beats = Beats(
            str(path),
            seg.x,
            np.full(len(seg.x), seg.record, dtype=object),
            seg.sample,
            None if seg.reference is None else model.reference_index(seg.reference, AAMI_CLASSES),
            seg.method,
            seg.lead,
            seg.notes,
            seg.detection,
            seg.rhythm,
        )
    elif path.suffix.lower() in BEAT_SUFFIXES:
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
        beats = _read_beat_file(path, model)
    elif path.exists():
        raise UsageError(
            f"{path}: unknown input type {path.suffix or '(no suffix)'}; give beats as .csv or "
            ".parquet, or a WFDB record path without extension (e.g. data/mitdb/100)"
        )
    else:
        raise UsageError(f"{path}: no such file, and no WFDB record {path}.hea")
    if len(beats.x) == 0:
        raise DataError(f"{path}: no beats to classify")
    if beats.x.shape[1] != model.input_length:
        raise DataError(
            f"{path}: beats have {beats.x.shape[1]} samples but the model takes "
            f"{model.input_length}"
        )
    return beats


def _whole_in(labels: np.ndarray, k: int) -> bool:
    """Every label a whole class index in 0..k-1."""
    return bool(
        (labels == np.round(labels)).all()
        and labels.min(initial=0) >= 0
        and labels.max(initial=0) < k
    )


def _read_beat_file(path: Path, model: Model) -> Beats:
    """Beats in the `heart fetch --import` layouts (the importer's reader and checks)."""
    import pyarrow.parquet as pq

    from heartcli.data.importer import read_file
    from heartcli.dataset import AAMI_CLASSES

    x, labels, _ = read_file(path, labelled=False)
    n = len(x)
    record = np.full(n, "", dtype=object)
    sample = np.full(n, -1, dtype=np.int64)
    names: list[str] = []
    rhythm: np.ndarray | None = None
    if path.suffix.lower() != ".csv":
        names = pq.read_schema(path).names
        extra = [c for c in ("record", "sample") if c in names]
        if extra:
            table = pq.read_table(path, columns=extra)
            if "record" in extra:
                record = table.column("record").to_numpy(zero_copy_only=False).astype(object)
            if "sample" in extra:
                sample = table.column("sample").to_numpy().astype(np.int64)
    if model.rhythm:
        rhythm = _file_rhythm(path, names)
    notes: list[str] = []
    reference: np.ndarray | None = None
    if labels is None:
        notes.append("no labels in the file: predictions only")
    elif model.class_map and _whole_in(labels, len(AAMI_CLASSES)):
        # The model was trained with [data] classes: the file's labels are dataset classes.
        reference = model.reference_index(labels.astype(np.int64), AAMI_CLASSES)
    elif _whole_in(labels, len(model.classes)):
        reference = labels.astype(np.int64)
    else:
        notes.append("labels outside the model's classes: no agreement table")
    x = x.astype(np.float32)
    return Beats(str(path), x, record, sample, reference, "file", None, notes, rhythm=rhythm)


def _file_rhythm(path: Path, names: list[str]) -> np.ndarray:
    """The rhythm columns of a beat file, for a rhythm model: all nine, finite; else exit 2."""
    import pyarrow.parquet as pq

    missing = [c for c in RHYTHM_FEATURES if c not in names]
    if missing:
        raise UsageError(
            f"{path}: the model takes rhythm features, but the file has no columns "
            f"{', '.join(missing)}; use the dataset files `heart fetch` builds from the records "
            "(they have them), or give a WFDB record"
        )
    table = pq.read_table(path, columns=list(RHYTHM_FEATURES))
    rhythm = np.stack([table.column(c).to_numpy() for c in RHYTHM_FEATURES], axis=1)
    if not np.all(np.isfinite(rhythm)):
        row = int(np.argwhere(~np.isfinite(rhythm))[0][0])
        raise DataError(f"{path}: row {row} has a NaN or infinite rhythm value; rebuild it")
    return rhythm.astype(np.float32)


# --------------------------------------------------------------------------- predicting


@dataclass
class Prediction:
    model: Model
    beats: Beats
    proba: np.ndarray
    seconds: dict[str, float]

    @property
    def predicted(self) -> np.ndarray:
        return self.proba.argmax(axis=1)

    def agreement(self) -> dict[str, Any] | None:
        """Per-class sensitivity / PPV of the predictions against the reference labels."""
        from heartcli.evaluate import metrics

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
        return columns


def check_range(model: Model, x: np.ndarray, source: str | Path) -> None:
    """Refuse beats far outside the range the model was trained on (e.g. raw millivolts or
    ADC counts instead of min-max normalised beats): its answers there mean nothing.

    "Far" is more than the training range's own width beyond either end of it.
    """
    if not len(x):
        return
    lo, hi = model.input_range
    span = max(hi - lo, 1e-6)
    low, high = x.min(axis=1), x.max(axis=1)
    bad = np.flatnonzero((low < lo - span) | (high > hi + span))
    if len(bad):
        row = int(bad[0])
        raise DataError(
            f"{source}: {len(bad):,} of {len(x):,} beats are far outside the range the model "
            f"was trained on [{lo:g}, {hi:g}] (row {row}: {float(low[row]):.3g} to "
            f"{float(high[row]):.3g}); min-max normalise every beat to [0, 1] as `heart fetch` "
            "does"
        )


def check_output(out: str | Path | None) -> None:
    if out is not None and Path(out).suffix.lower() not in OUTPUT_SUFFIXES:
        raise UsageError(f"--out {out}: unknown output type; name a .csv, .parquet or .json file")


def check_out_target(out: str | Path | None, *inputs: str | Path) -> None:
    """``--out`` is a regular file that is none of the command's inputs (a beat file, a
    record, the model) nor a file of a run folder."""
    from heartcli.io import check_output_file

    if out is None:
        return
    out = Path(out)
    check_output_file(out)
    target = out.resolve()
    for given in inputs:
        p = Path(given)
        if target in {p.resolve(), *(Path(f"{p}{ext}").resolve() for ext in (".hea", ".atr"))}:
            raise UsageError(f"--out {out}: is the input {given}; write the predictions elsewhere")
    run_files = {"manifest.json", "config.toml", "model.safetensors", "checkpoint.pt", "eval.json"}
    if out.name in run_files and (out.parent / "manifest.json").is_file():
        raise UsageError(f"--out {out}: a file of the run folder {out.parent}; choose another path")


def predict(
    model_path: str | Path,
    input_path: str | Path,
    *,
    lead: str = "auto",
    peaks: str = "auto",
    out: str | Path | None = None,
    detector: str | None = None,
) -> Prediction:
    """Classify every beat of ``input_path`` with the model at ``model_path``."""
    check_output(out)
    check_out_target(out, input_path, model_path)
    if peaks not in ("auto", "annotations", "detect"):
        raise UsageError(f"--peaks {peaks}: use auto, annotations or detect")
    t0 = time.perf_counter()
    threads = ThreadPolicy("auto")  # measures the CPU others use while the model and data load
    model = load_model(model_path)
    t1 = time.perf_counter()
    beats = read_input(input_path, model, lead=lead, peaks=peaks, detector=detector)
    check_range(model, beats.x, input_path)
    if model.kind == "run":
        threads.start(wait=False)
    t2 = time.perf_counter()
    proba = model.proba(beats.inputs(model))
    t3 = time.perf_counter()
    result = Prediction(
        model, beats, proba, {"load_model": t1 - t0, "read_input": t2 - t1, "predict": t3 - t2}
    )
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


def write_wfdb(
    result: Prediction, out_dir: str | Path, *, annotator: str = "heart", force: bool = False
) -> Path:
    """The beats of a record as ``OUT_DIR/<record>.<annotator>`` (``wfdb.wrann``): one
    annotation per beat at its R-peak sample in the record's own rate, the predicted class
    as its symbol (N, S, V, F or Q) and ``p=<probability>`` of that class as its aux note."""
    from heartcli.ec57 import CLASSES
    from heartcli.ec57_records import read_header, test_labels, write_annotations

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
        [CLASSES[i] for i in to_ec57[predicted]],
        [f"p={v:.4f}" for v in p],
        read_header(source).fs,
        out_dir,
        annotator=annotator,
        force=force,
    )
