"""The parity check of `heart export`: every exported file against PyTorch on real beats.

Each file is reloaded in its own runtime (ONNX Runtime, ``torch.export.load``, ``torch.jit.load``,
ExecuTorch's ``executorch.runtime`` for a ``.pte``) and run on real beats of the run's dataset
(the test part, topped up from the training part when it holds fewer than ``[export]
parity_beats``; the bundled sample when the dataset is not there): the largest absolute
difference of the probabilities against the PyTorch model must be at most ``[export] atol`` and
the predicted class must be the same for every beat, one beat alone included (the batch axis is
dynamic). A rhythm model gets the beats' rhythm columns as its second input.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from heartcli.data.dataset import (
    MANIFEST,
    BeatSet,
    apply_classes,
    load_split,
    read_beats,
    split_path,
)
from heartcli.errors import DataError, HeartError
from heartcli.export.formats import quiet
from heartcli.model.inference import (
    Runner,
    batched,
    model_inputs,
    onnx_session,
    torch_runner,
    uses_rhythm,
)
from heartcli.model.inference import onnx_runner as inference_onnx_runner

if TYPE_CHECKING:
    from heartcli.model.runs import LoadedRun

REPO_SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"


class ParityError(HeartError):
    """An exported file disagrees with the PyTorch model."""


def _dataset_dir(run: LoadedRun) -> Path:
    data = run.manifest.get("data") or {}
    return Path(str(data.get("dir") or run.config.data.dir))


def test_inputs(run: LoadedRun, test: BeatSet, source: str) -> list[np.ndarray]:
    """The model's inputs for the test beats (beats, and rhythm for a rhythm model)."""
    return model_inputs(test.x, test.rhythm, uses_rhythm(run.model), source)


def parity_beats(
    run: LoadedRun, count: int, data: Path | None = None
) -> tuple[list[np.ndarray], str, BeatSet, str]:
    """At least ``count`` real beats (when there are that many) and the test beats.

    From ``data`` (a dataset folder or a parquet file) or else the run's dataset, falling
    back to the bundled sample of real beats; the test part first, then the training part.
    Returns (the model's inputs for the parity check: beats, and rhythm for a rhythm
    model; where they came from; the test beats; their source).
    """
    split = str((run.manifest.get("data") or {}).get("split") or run.config.data.split)
    mapping = dict(run.config.data.classes)  # the test beats score the model's own classes
    if data is not None and data.is_file():
        beats = apply_classes(read_beats(data), mapping)
        test = beats
        test_source = f"{data}"
        parts = [(beats, test_source)]
    else:
        folder = data if data is not None else _dataset_dir(run)
        if data is None and not (folder / MANIFEST).exists():
            if not (REPO_SAMPLE / MANIFEST).exists():
                raise DataError(
                    f"{folder}: the run's dataset is not here; pass --data DIR with real beats "
                    "for the parity check"
                )
            folder = REPO_SAMPLE
        if not split_path(folder, split, "test").exists() and (folder / MANIFEST).exists():
            from heartcli.data.dataset import read_manifest

            split = next(iter(read_manifest(folder).get("splits") or {split: 0}), split)
        test = load_split(folder, split, "test", classes=mapping)
        test_source = f"{folder} (split {split}, test part)"
        parts = [(test, test_source)]
        if len(test) < count:
            parts.append((load_split(folder, split, "train"), f"{folder} (split {split}, train)"))
    chosen: list[list[np.ndarray]] = []
    described: list[str] = []
    need = count
    for beats, where in parts:
        if need <= 0:
            break
        take = model_inputs(beats.x[:need], beats.rhythm, uses_rhythm(run.model), where)
        chosen.append([a[:need] for a in take])
        described.append(f"{len(take[0]):,} from {where}")
        need -= len(take[0])
    if not chosen:
        chosen = [[np.zeros((0, run.input_length), np.float32)]]
    inputs = [
        np.ascontiguousarray(np.concatenate(arrays), dtype=np.float32)
        for arrays in zip(*chosen, strict=True)
    ]
    x = inputs[0]
    if x.shape[1] != run.input_length:
        raise DataError(
            f"parity beats have {x.shape[1]} samples but the model takes {run.input_length}; "
            "pass --data with the run's kind of beats"
        )
    if len(x) == 0:
        raise DataError("no real beats for the parity check; pass --data DIR")
    return inputs, "; ".join(described), test, test_source


def onnx_runner(path: Path) -> Runner:
    """An exported ONNX file in ONNX Runtime, as a runner of the shared inference module."""
    try:
        return inference_onnx_runner(onnx_session(path))
    except DataError:
        raise ParityError(f"{path.name}: ONNX Runtime cannot load the export") from None


def exported_runner(module: Any) -> Runner:
    """A reloaded torch program that already ends in a softmax (no second softmax)."""
    return torch_runner(module, softmax=False)


def reload_runner(fmt: str, path: Path) -> Runner:
    """The exported file, loaded back from disk in its own runtime."""
    import torch

    if fmt in ("onnx", "onnx-int8"):
        return onnx_runner(path)
    if fmt in ("pte", "pte-int8"):
        from heartcli.export.pte import pte_runner

        return pte_runner(path)
    with quiet():
        if fmt == "pt2":
            return exported_runner(torch.export.load(str(path)).module())
        return exported_runner(torch.jit.load(str(path), map_location="cpu"))


def run_batches(run: Runner, inputs: list[np.ndarray]) -> np.ndarray:
    """``run`` over the model's ``inputs`` in the shared batch size."""
    return batched(run, inputs)


def compare(reference: np.ndarray, got: np.ndarray) -> dict[str, Any]:
    diff = np.abs(got.astype(np.float64) - reference.astype(np.float64))
    same = got.argmax(axis=1) == reference.argmax(axis=1)
    return {
        "beats": len(reference),
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "argmax_agreement": float(same.mean()) if len(same) else 1.0,
        "argmax_disagreements": int((~same).sum()),
    }


def check_parity(
    fmt: str, path: Path, inputs: list[np.ndarray], reference: np.ndarray, atol: float
) -> dict[str, Any]:
    """The reloaded export against the PyTorch probabilities; raises ParityError."""
    x = inputs[0]
    try:
        run = reload_runner(fmt, path)
        got = run_batches(run, inputs)
        single = run(*[a[:1] for a in inputs])  # the batch axis is dynamic: one beat works too
    except ParityError:
        raise
    except Exception as exc:  # a damaged file fails to load or run in many ways
        raise ParityError(
            f"{path.name}: the reloaded export does not run ({type(exc).__name__}); "
            "nothing was written"
        ) from None
    result = compare(reference, got)
    result["max_abs_diff"] = max(
        result["max_abs_diff"], float(np.abs(single - reference[:1]).max())
    )
    if got.shape != reference.shape or not result["max_abs_diff"] <= atol:  # NaN fails
        raise ParityError(
            f"{path.name}: parity check failed: max |p - p_torch| = {result['max_abs_diff']:.2e} "
            f"> export.atol {atol:g} on {len(x):,} beats; nothing was written"
        )
    if result["argmax_disagreements"]:
        raise ParityError(
            f"{path.name}: parity check failed: {result['argmax_disagreements']} of {len(x):,} "
            "beats get another class than from PyTorch; nothing was written"
        )
    return result
