"""Which activation calibration keeps static int8 ONNX closest to float, on *validation*.

`heart export --quantize static` calibrates the int8 activations of the ONNX copy with
ONNX Runtime's ``quantize_static``; ``[export] calibration`` names the method. This
benchmark quantises a trained run with each method on the same calibration beats (drawn
from the training part as `heart export` draws them) and scores the float and int8 models
on the run's own validation beats (``split_validation``: the carve-out training never fit).
The test part is not read: the default method is chosen here.

    python benchmarks/bench_int8_calibration.py runs/tiny [--data data/mitbih]

Prints one line per method: validation macro-F1 of float and int8, the loss, the share of
validation beats with the same class, and the file size.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--beats", type=int, default=2000, help="calibration beats")
    args = parser.parse_args()

    import onnxruntime as ort
    import torch

    from heartcli.data.dataset import load_split
    from heartcli.export.formats import export_onnx, probability_module
    from heartcli.export.int8 import CALIBRATIONS, calibration_beats, quantize_onnx_static
    from heartcli.metrics import confusion_matrix, macro_f1_from_confusion
    from heartcli.model.inference import batched, model_inputs, onnx_runner, uses_rhythm
    from heartcli.model.load import load_run
    from heartcli.training.folds import split_validation

    run = load_run(args.run)
    data = args.data or Path(run.config.data.dir)
    cal, _ = calibration_beats(run, args.beats, args.data)
    train = load_split(data, run.config.data.split, "train", classes=dict(run.config.data.classes))
    _, val = split_validation(run.config, train)
    rhythm = None if train.rhythm is None else train.rhythm[val]
    inputs = model_inputs(train.x[val], rhythm, uses_rhythm(run.model), "validation")
    y, k = train.y[val], len(run.classes)

    def score(path: Path) -> tuple[float, np.ndarray]:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        pred = batched(onnx_runner(session), inputs).argmax(axis=1)
        return macro_f1_from_confusion(confusion_matrix(y, pred, k)), pred

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        module = probability_module(run.model)
        example = tuple(torch.from_numpy(a[:2]) for a in cal)
        export_onnx(module, example, folder / "model.onnx", 18)
        f1_float, pred_float = score(folder / "model.onnx")
        print(f"{args.run}: {len(y)} validation beats, float macro-F1 {f1_float:.4f}")
        for method in CALIBRATIONS:
            path = folder / f"{method}.onnx"
            quantize_onnx_static(folder / "model.onnx", path, cal, method)
            f1, pred = score(path)
            print(
                json.dumps(
                    {
                        "calibration": method,
                        "macro_f1_float": round(f1_float, 4),
                        "macro_f1_int8": round(f1, 4),
                        "loss": round(f1_float - f1, 4),
                        "agreement": round(float((pred == pred_float).mean()), 4),
                        "bytes": path.stat().st_size,
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
