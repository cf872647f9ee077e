"""The model card of `heart export`: model_card.json and MODEL_CARD.md.

Classes, the input spec (187 samples at 120 Hz, min-max normalised, the lead), the
preprocessing recipe, the training data and split (with ``[data] classes``), the
evaluation figures of ``eval.json`` with their CI and the AAMI EC57 figures, the parity
check, the SHA-256 of every file, each int8 file's score (its section is
:mod:`heartcli.export.int8`'s) and the costs (:mod:`heartcli.export.costs`'s).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from heartcli import __version__
from heartcli.errors import DataError
from heartcli.export.formats import INPUT_NAME, OUTPUT_NAME, RHYTHM_INPUT
from heartcli.export.guard import CARD_FORMAT
from heartcli.io import read_json
from heartcli.metrics.aami import ROWS as AAMI_ROWS

if TYPE_CHECKING:
    from heartcli.model.runs import LoadedRun

RECIPE = [
    "one ECG lead in raw ADC units, no filtering (MLII: channel 0 of the MIT-BIH records, "
    "heart predict picks the lead named MLII)",
    "at 360 Hz (records at other rates are resampled with an anti-aliasing polyphase filter)",
    "boundaries: the record's annotations (heart predict: R-peaks detected by XQRS when "
    "there is no .atr)",
    "a beat starts at its R-peak r0 and ends 20% of the next RR interval past the next "
    "R-peak r1: x[r0 : r1 + (r2 - r1) // 5 : 3], every third sample (120 Hz)",
    "min-max normalised over the whole segment to [0, 1] (float64), the first 187 values "
    "kept, cast to float32 and zero-padded to 187",
]
AAMI_DESCRIPTIONS = {
    "N": "normal, left/right bundle branch block, atrial/nodal escape (N L R e j)",
    "S": "supraventricular ectopic (A a J S)",
    "V": "ventricular ectopic (V E)",
    "F": "fusion of ventricular and normal (F)",
    "Q": "paced, fusion of paced and normal, unclassifiable (/ f Q)",
}


def evaluation_summary(run: LoadedRun) -> dict[str, Any]:
    from heartcli.model.runs import EVAL, WEIGHTS

    path = Path(run.path) / EVAL
    if not path.is_file():
        return {"status": "not evaluated", "note": f"run `heart evaluate {run.path}`, then export"}
    try:
        figures = read_json(path, "evaluate again")
    except DataError:
        return {"status": "not evaluated", "note": f"{path} is unreadable; evaluate again"}
    keep = (
        "data",
        "split",
        "n",
        "accuracy",
        "balanced_accuracy",
        "macro_f1",
        "macro_f1_ci95",
        "aami",
    )
    result: dict[str, Any] = {"status": "evaluated", **{k: figures.get(k) for k in keep}}
    result["per_class"] = {
        name: {k: c.get(k) for k in ("precision", "recall", "f1", "support")}
        for name, c in (figures.get("per_class") or {}).items()
    }
    weights = Path(run.path) / WEIGHTS
    if weights.exists() and path.stat().st_mtime < weights.stat().st_mtime:
        result["status"] = "stale"
        result["note"] = "eval.json is older than the weights; run `heart evaluate` again"
    return result


def build_card(
    run: LoadedRun,
    files: list[dict[str, Any]],
    parity: dict[str, Any],
    int8: list[dict[str, Any]],
    notes: list[str],
) -> dict[str, Any]:
    """The card's JSON; ``int8`` holds an :class:`heartcli.export.int8.Int8Score` per int8
    file (the costs are added by the caller once the files are timed)."""
    from heartcli.data.dataset import training_lead

    data = run.manifest.get("data") or {}
    k = len(run.classes)
    return {
        "format": CARD_FORMAT,
        "name": Path(run.path).name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "heart_version": __version__,
        "task": "single-beat ECG classification into AAMI EC57 classes (MIT-BIH Arrhythmia)",
        "classes": list(run.classes),
        "class_map": dict(run.config.data.classes),
        "class_descriptions": {c: AAMI_DESCRIPTIONS.get(c, "") for c in run.classes},
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", run.input_length],
            "dtype": "float32",
            "length": run.input_length,
            "sampling_rate_hz": run.manifest.get("sampling_rate_hz") or 120.0,
            "normalisation": "min-max over the beat's whole segment to [0, 1], zero-padded",
            "lead": training_lead(run.manifest, run.config.data.lead),
        },
        "rhythm_input": rhythm_input(run),
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch", k],
            "dtype": "float32",
            "meaning": "softmax probabilities, one column per class in `classes` order",
        },
        "preprocessing": RECIPE,
        "training": {
            "run": str(run.path),
            "data_dir": data.get("dir"),
            "split": data.get("split"),
            "data_manifest_sha256": data.get("manifest_sha256"),
            "train_counts": data.get("train_counts"),
            "resampled_counts": data.get("resampled_counts"),
            "validation_counts": data.get("val_counts"),
            "resample": run.config.resample.model_dump(mode="json"),
            "epochs_run": run.manifest.get("epochs_run"),
            "best_epoch": run.manifest.get("best_epoch"),
            "validation_metrics": run.manifest.get("metrics"),
            "model": run.config.model.model_dump(mode="json"),
            "parameters": (run.manifest.get("model") or {}).get("parameters"),
        },
        "ensemble": run.manifest.get("ensemble"),  # members and checksums; None for one model
        "evaluation": evaluation_summary(run),
        "files": files,
        "parity": parity,
        "int8": int8,
        "notes": notes,
    }


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~>])")


def md(value: Any) -> str:
    """``value`` as literal Markdown text: HTML and Markdown syntax in a name (a run folder,
    a class, a path) are shown, never rendered."""
    text = " ".join(str(value).split())  # one line: a newline would end a table row
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", text)


def code(value: Any) -> str:
    """``value`` as a Markdown code span, whatever backticks it holds."""
    text = " ".join(str(value).split())
    fence = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _fmt(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def aami_markdown(figures: dict[str, Any] | None) -> list[str]:
    """The AAMI EC57 block of the card: per class, SVEB / VEB, kappa, j-index, jκ."""
    if not figures:
        return []
    rows = {name: row for row, name in AAMI_ROWS.items()}
    lines = [
        f"AAMI EC57 figures on {figures['scored_beats']} scored beats ({figures['note']}):",
        "",
        "| class | Se | +P | FPR | F1 | support |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in figures["per_class"].items():
        label = f"{rows[name]} ({name})" if name in rows else name
        lines.append(
            f"| {label} | {_fmt(c['se'])} | {_fmt(c['ppv'])} | {_fmt(c['fpr'])} | "
            f"{_fmt(c['f1'])} | {c['support']} |"
        )
    lines += [
        "",
        f"jκ {_fmt(figures['jk_index'])} = κ/2 + j/8 (κ {_fmt(figures['kappa'])}, "
        f"j {_fmt(figures['j_index'])}); per-record figures in model_card.json.",
        "",
    ]
    return lines


def _ensemble_lines(ensemble: dict[str, Any] | None) -> list[str]:
    """The card's ensemble section: what it averages and its members, by checksum."""
    if not ensemble:
        return []
    members = ensemble["members"]
    weighted = any("weight" in m for m in members)
    decision = ensemble.get("decision_weights")
    decide = (
        [
            f"Decision weights (the graph's last layer, {ensemble.get('decide')}): "
            + ", ".join(f"{md(str(c))} {float(w):.3g}" for c, w in decision.items())
            + ".",
            "",
        ]
        if decision
        else []
    )
    return [
        "## Ensemble",
        "",
        f"One graph holding {len(members)} models ({ensemble.get('source')}); "
        f"output: the {ensemble.get('combine')}.",
        "",
        *decide,
        "| member | folder | " + ("weight | " if weighted else "") + "weights SHA-256 |",
        "|---|---|" + ("---|" if weighted else "") + "---|",
        *[
            f"| {m['name']} | `{m['path']}` | "
            + (f"{float(m.get('weight', 0.0)):.4f} | " if weighted else "")
            + f"`{m['weights_sha256']}` |"
            for m in members
        ],
        "",
    ]


USE = [
    "",
    "## Use",
    "",
    "```",
    "heart predict model.onnx path/to/record   # a WFDB record without extension",
    "heart predict model.onnx beats.parquet --out predictions.csv",
    "heart evaluate model.onnx   # its figures on the card's test part (also a .pte)",
    "```",
    "",
]


def card_markdown(card: dict[str, Any]) -> str:
    """MODEL_CARD.md: the card's JSON as a page, section by section."""
    from heartcli.export.costs import costs_markdown
    from heartcli.export.int8 import int8_markdown

    lines = [
        *_model_lines(card),
        *_training_lines(card),
        *_ensemble_lines(card.get("ensemble")),
        *_evaluation_lines(card["evaluation"]),
        *_files_lines(card),
        *int8_markdown(card.get("int8") or []),
        *costs_markdown(card),
    ]
    if card["notes"]:
        lines += ["", "## Notes", "", *[f"- {md(n)}" for n in card["notes"]]]
    return "\n".join(lines + USE)


def _model_lines(card: dict[str, Any]) -> list[str]:
    """The title, the classes, the input and output, the preprocessing."""
    inp, out = card["input"], card["output"]
    return [
        f"# Model card: {md(card['name'])}",
        "",
        f"{card['task']}. Exported by heart {card['heart_version']} on {card['created']}.",
        "",
        "## Classes",
        "",
        "| index | class | beats (MIT-BIH symbols) |",
        "|---|---|---|",
        *[
            f"| {i} | {md(c)} | {md(card['class_descriptions'].get(c, ''))} |"
            for i, c in enumerate(card["classes"])
        ],
        "",
        "## Input and output",
        "",
        f"- input `{inp['name']}`: float32 `[batch, {inp['length']}]`, one beat per row: "
        f"{inp['length']} samples at {inp['sampling_rate_hz']:g} Hz, {inp['normalisation']}; "
        f"lead {md(inp['lead'])}",
        *_rhythm_lines(card.get("rhythm_input")),
        f"- output `{out['name']}`: float32 `[batch, {len(card['classes'])}]`, {out['meaning']}",
        "",
        "## Preprocessing (the recipe of `heart fetch`; `heart predict` applies it to records)",
        "",
        *[f"{i}. {step}" for i, step in enumerate(card["preprocessing"], start=1)],
        "",
    ]


def _training_lines(card: dict[str, Any]) -> list[str]:
    tr = card["training"]
    return [
        "## Training data",
        "",
        f"- dataset: {code(tr['data_dir'])}, split {code(tr['split'])} "
        f"(manifest SHA-256 `{tr['data_manifest_sha256']}`)",
        f"- classes dropped or merged (data.classes): {md(card.get('class_map') or 'none')}",
        f"- training fold per class: {md(tr['train_counts'])}; after resampling "
        f"({md(tr['resample'].get('strategy'))}): {md(tr['resampled_counts'])}",
        f"- validation per class: {md(tr['validation_counts'])}",
        f"- {tr['epochs_run']} epochs, best at epoch {tr['best_epoch']}; "
        f"{tr['parameters']} parameters",
        "",
    ]


def _evaluation_lines(ev: dict[str, Any]) -> list[str]:
    """The figures of eval.json, or why there are none."""
    lines = ["## Evaluation", ""]
    if ev["status"] == "not evaluated":
        return [*lines, f"Not evaluated: {md(ev['note'])}.", ""]
    lo, hi = ev.get("macro_f1_ci95") or [float("nan"), float("nan")]
    if ev["status"] == "stale":
        lines += [f"**Stale**: {md(ev['note'])}.", ""]
    return [
        *lines,
        f"On {md(ev['data'])}, {ev['n']} beats: accuracy {_fmt(ev['accuracy'])}, balanced "
        f"accuracy {_fmt(ev['balanced_accuracy'])}, macro-F1 {_fmt(ev['macro_f1'])} "
        f"(95% bootstrap CI {_fmt(lo)}-{_fmt(hi)}).",
        "",
        "| class | precision (+P) | recall (Se) | F1 | support |",
        "|---|---|---|---|---|",
        *[
            f"| {md(c)} | {_fmt(v['precision'])} | {_fmt(v['recall'])} | {_fmt(v['f1'])} | "
            f"{v['support']} |"
            for c, v in ev["per_class"].items()
        ],
        "",
        *aami_markdown(ev.get("aami")),
    ]


def _files_lines(card: dict[str, Any]) -> list[str]:
    """The files with their size, SHA-256 and agreement with PyTorch."""
    par = card["parity"]
    lines = [
        "## Files",
        "",
        f"Each file was reloaded and checked against the PyTorch model on {par['beats']:,} real "
        f"beats ({md(par['source'])}): max |p - p_torch| <= {par['atol']:g} and the same class for "
        "every beat.",
        "",
        "| file | format | bytes | SHA-256 | max abs diff | same class |",
        "|---|---|---|---|---|---|",
    ]
    for f in card["files"]:
        p = f.get("parity") or f.get("agreement") or {}
        lines.append(
            f"| {md(f['file'])} | {md(f['format'])} | {f['bytes']:,} | `{f['sha256']}` | "
            f"{p.get('max_abs_diff', float('nan')):.2e} | {p.get('argmax_agreement', 0):.2%} |"
        )
    return lines


def rhythm_input(run: LoadedRun) -> dict[str, Any] | None:
    """The second input of a rhythm model: its columns, formulas and normalisation."""
    from heartcli.config import RHYTHM_DERIVED, RHYTHM_FEATURES
    from heartcli.data.rhythm import DEFINITIONS

    stats = run.manifest.get("rhythm")
    if not run.config.model.rhythm:
        return None
    stats = stats or {}
    return {
        "name": RHYTHM_INPUT,
        "shape": ["batch", len(RHYTHM_FEATURES)],
        "dtype": "float32",
        "columns": list(RHYTHM_FEATURES),
        "definitions": dict(DEFINITIONS),
        "used": list(run.config.model.rhythm_columns),
        "derived": {name: f"{num} / {den}" for name, (num, den) in RHYTHM_DERIVED.items()},
        "normalisation": normalisation(run.config.model.rhythm_scale),
        "center": stats.get("center"),
        "scale": stats.get("scale"),
        "source": "the beat annotations of the record (`heart fetch`; `heart predict` on a "
        "record with a .atr), or the detected R-peaks (`heart predict` without one)",
    }


def normalisation(kind: str) -> str:
    """How a rhythm model turns the raw columns into what its head sees, in words."""
    step = (
        "takes the log of each used feature, subtracts the training fold's median and divides "
        "by its interquartile range / 1.349 (`center`, `scale` below)"
        if kind == "log"
        else "subtracts the training fold's mean of each used feature and divides by its "
        "standard deviation (`center`, `scale` below)"
    )
    return f"raw values (seconds and ratios) in; the model {step}, then clips to +-8"


def _rhythm_lines(rhythm: dict[str, Any] | None) -> list[str]:
    if not rhythm:
        return []
    return [
        f"- input `{rhythm['name']}`: float32 `[batch, {len(rhythm['columns'])}]`, the rhythm "
        f"features of each beat, columns {', '.join(rhythm['columns'])} "
        f"(the model uses {', '.join(rhythm['used'])}); {rhythm['normalisation']}",
        *[f"  - `{name}`: {text}" for name, text in rhythm["definitions"].items()],
    ]
