"""Ensembles as one model: K trained runs that answer together, averaging their probabilities.

An ensemble is a run folder like any other (``config.toml``, ``manifest.json``) whose
manifest has an ``ensemble`` section instead of a ``model.safetensors``: the members (run
folders, relative to the ensemble's folder) with the SHA-256 of their weights and config,
and, where the members do not count alike, each one's ``weight`` (positive, summing to 1).
`heart train --folds K` with ``[train] final = "ensemble"`` makes one of its fold models
(``RUN/folds/fold-<i>``); `heart tune` with ``[search] ensemble = k`` makes one of its top
k trials (``SEARCH/ensemble``), and with ``[search] refit`` its recommended model
(``SEARCH/final``: the fold models of the trials it chose, weighted).

:func:`heartcli.model.load.load_ensemble` (through ``load_run``) checks every member against
its checksums, so a member missing or changed on disk is one DataError line naming it, and
returns :class:`Ensemble`: an ``nn.Module`` whose output is the log of the members'
(weighted) mean probability. Every consumer applies a softmax to a model's output; the
softmax of ``log(mean p)`` is ``mean p`` exactly (its entries sum to 1), so `heart evaluate`,
`heart predict` and the exported graphs (ONNX, .pt2, TorchScript, .pte: one graph holding
every member) all give the weighted mean of the members' probabilities.

Per-class **decision weights** (the manifest's ``decision_weights``, one positive number a
class, fitted out of fold by `heart tune`) are the graph's last layer: ``log w_c`` is added
to the output, so every consumer's softmax gives ``w_c p_c / sum_j w_j p_j`` and its argmax
is the argmax of ``w_c p_c``. Every runtime applies them identically, because they are in
the graph.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from heartcli.errors import DataError, UsageError
from heartcli.io import sha256_file

if TYPE_CHECKING:
    import torch
    from torch import nn


COMBINE = "mean of the members' softmax probabilities"
COMBINE_WEIGHTED = "weighted mean of the members' softmax probabilities"
DECIDE = "then each class's probability times its decision weight, renormalised"
FLOOR = 1e-30  # the mean probability is floored here before its log (no -inf in a graph)
WEIGHT_SUM_TOLERANCE = 1e-6


def _module_class() -> type[nn.Module]:
    import torch
    from torch import nn

    from heartcli.model.inference import uses_rhythm

    class Ensemble(nn.Module):
        """The members' weighted mean probability, as log-probabilities (a softmax undoes
        the log), plus the log of the decision weights when there are any.

        ``forward(beats)`` or ``forward(beats, rhythm)`` when any member takes the rhythm
        features; a member without them gets the beats alone.
        """

        def __init__(
            self,
            members: list[nn.Module],
            weights: list[float] | None = None,
            decision: list[float] | None = None,
        ):
            super().__init__()
            self.members = nn.ModuleList(members)
            self.takes = [uses_rhythm(m) for m in members]
            self.uses_rhythm = any(self.takes)
            share = weights if weights is not None else [1.0 / len(members)] * len(members)
            self.register_buffer("weights", torch.tensor(share, dtype=torch.float32).view(-1, 1, 1))
            self.decides = decision is not None
            log_w = torch.log(torch.tensor(decision, dtype=torch.float32)) if decision else None
            self.register_buffer("log_decision", log_w if log_w is not None else torch.zeros(1))

        def forward(self, beats: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
            probs = [
                torch.softmax((member(beats, *rest) if rhythm else member(beats)).float(), dim=1)
                for member, rhythm in zip(self.members, self.takes, strict=True)
            ]
            shares: torch.Tensor = self.get_buffer("weights")
            out = torch.log((torch.stack(probs) * shares).sum(dim=0).clamp_min(FLOOR))
            return out + self.get_buffer("log_decision") if self.decides else out

    return Ensemble


def ensemble_module(
    members: list[nn.Module],
    weights: list[float] | None = None,
    decision: list[float] | None = None,
) -> nn.Module:
    """One module averaging ``members``' probabilities (``weights``: each member's share,
    None = equal), then ``decision`` weights per class (None = none); eval mode. See the
    module docstring."""
    return _module_class()(members, weights, decision).eval()


def ensemble_weights(
    ensemble_dir: Path, section: dict[str, Any], classes: list[str]
) -> tuple[list[float] | None, list[float] | None]:
    """(the members' weights, the decision weights in class order) of a manifest's
    ``ensemble`` section, each None when absent; any that cannot be right (not positive, not
    summing to 1, not one per member or class) is one DataError line."""
    import math

    how = "make the ensemble again"
    members = section.get("members") or []
    given = [m.get("weight") for m in members]
    weights: list[float] | None = None
    if any(w is not None for w in given):
        ok = all(isinstance(w, int | float) and math.isfinite(w) and w > 0 for w in given)
        if not ok or abs(sum(given) - 1.0) > WEIGHT_SUM_TOLERANCE:
            raise DataError(
                f"{ensemble_dir}: the ensemble's member weights must be positive and sum to 1 "
                f"(got {given}); {how}"
            )
        weights = [float(w) for w in given]
    table = section.get("decision_weights")
    if table is None:
        return weights, None
    values = [table.get(c) for c in classes] if isinstance(table, dict) else []
    if len(values) != len(classes) or not all(
        isinstance(v, int | float) and math.isfinite(v) and v > 0 for v in values
    ):
        raise DataError(
            f"{ensemble_dir}: decision_weights need one positive number for each class "
            f"({', '.join(classes)}); {how}"
        )
    return weights, [float(v) for v in values]  # type: ignore[arg-type]


def member_entry(ensemble_dir: Path, member_dir: Path, label: str) -> dict[str, Any]:
    """What the ensemble's manifest keeps of one member: where it is and its checksums."""
    from heartcli.model import runs

    member_dir = Path(member_dir)
    weights = member_dir / runs.WEIGHTS
    if not weights.is_file():
        raise DataError(f"ensemble member {label}: {weights} missing (no epoch finished)")
    return {
        "name": label,
        "path": os.path.relpath(member_dir, ensemble_dir),
        "weights_sha256": sha256_file(weights),
        "config_sha256": sha256_file(member_dir / runs.CONFIG),
    }


def check_member(ensemble_dir: Path, entry: dict[str, Any]) -> Path:
    """The member's folder; a missing or changed member is one DataError line naming it."""
    from heartcli.model import runs

    name = str(entry.get("name") or entry.get("path"))
    member_dir = Path(ensemble_dir) / str(entry.get("path", ""))
    how = "restore it, or make the ensemble again"
    for file, key in ((runs.WEIGHTS, "weights_sha256"), (runs.CONFIG, "config_sha256")):
        path = member_dir / file
        if not path.is_file():
            raise DataError(f"{ensemble_dir}: ensemble member {name} is missing ({path}); {how}")
        if sha256_file(path) != entry.get(key):
            raise DataError(
                f"{ensemble_dir}: ensemble member {name} changed on disk ({path} does not "
                f"match its checksum in {runs.MANIFEST}); {how}"
            )
    return member_dir


def write_ensemble(
    ensemble_dir: Path,
    member_dirs: list[tuple[str, Path]],
    config_text: str,
    *,
    source: str,
    scores: dict[str, Any],
    weights: list[float] | None = None,
    decision: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Write the manifest (and config.toml) of an ensemble of ``member_dirs`` (label, folder)
    into ``ensemble_dir``; the manifest is written last. Returns it.

    ``weights``: each member's share (positive; normalised to sum to 1), None = equal;
    ``decision``: class -> decision weight, the graph's last layer (module docstring)."""
    from datetime import UTC, datetime

    from heartcli import __version__
    from heartcli.io import read_json, write_text
    from heartcli.model import runs

    ensemble_dir = Path(ensemble_dir)
    ensemble_dir.mkdir(parents=True, exist_ok=True)
    entries = [member_entry(ensemble_dir, path, label) for label, path in member_dirs]
    if weights is not None:
        if len(weights) != len(entries) or not all(w > 0 for w in weights):
            raise UsageError("ensemble weights: one positive number per member")
        total = float(sum(weights))
        for entry, w in zip(entries, weights, strict=True):
            entry["weight"] = float(w) / total
    first = read_json(Path(member_dirs[0][1]) / runs.MANIFEST, "retrain the member")
    lows, highs = [], []
    for _, path in member_dirs:
        data = read_json(Path(path) / runs.MANIFEST, "retrain the member").get("data") or {}
        lo, hi = data.get("input_range") or (0.0, 1.0)
        lows.append(float(lo))
        highs.append(float(hi))
    write_text(ensemble_dir / runs.CONFIG, config_text)
    data = dict(first.get("data") or {})
    data["input_range"] = [min(lows), max(highs)]
    manifest: dict[str, Any] = {
        "format": runs.FORMAT,
        "name": ensemble_dir.name,
        "status": "completed",
        "classes": first["classes"],
        "input_length": first["input_length"],
        "sampling_rate_hz": first.get("sampling_rate_hz"),
        "data": data,
        "rhythm": first.get("rhythm"),
        "model": {
            "parameters": sum(
                int(
                    (
                        read_json(Path(p) / runs.MANIFEST, "retrain the member").get("model") or {}
                    ).get("parameters")
                    or 0
                )
                for _, p in member_dirs
            )
        },
        "ensemble": {
            "source": source,
            "combine": COMBINE if weights is None else COMBINE_WEIGHTED,
            "members": entries,
            **({"decision_weights": decision, "decide": DECIDE} if decision else {}),
            **scores,
        },
        "metrics": {k: v for k, v in scores.items() if isinstance(v, float)},
        "versions": {"heartcli": __version__},
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "config_sha256": sha256_file(ensemble_dir / runs.CONFIG),
    }
    runs.write_manifest(ensemble_dir, manifest)
    return manifest


def check_ensemble_request(final: str, folds: int | None) -> None:
    """``[train] final = "ensemble"`` needs ``--folds K``: its members are the fold models."""
    if final == "ensemble" and not folds:
        raise UsageError(
            'train.final = "ensemble" keeps the K fold models of `heart train --folds K`; '
            'add --folds K (e.g. --folds 5), or set train.final = "retrain"'
        )
