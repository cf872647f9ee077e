"""Ensembles as one model: K trained runs that answer together, averaging their probabilities.

An ensemble is a run folder like any other (``config.toml``, ``manifest.json``) whose
manifest has an ``ensemble`` section instead of a ``model.safetensors``: the members (run
folders, relative to the ensemble's folder) with the SHA-256 of their weights and config.
`heart train --folds K` with ``[train] final = "ensemble"`` makes one of its fold models
(``RUN/folds/fold-<i>``); `heart tune` with ``[search] ensemble = k`` makes one of its top
k trials (``SEARCH/ensemble``).

:func:`heartcli.model.load.load_ensemble` (through ``load_run``) checks every member against
its checksums, so a member missing or changed on disk is one DataError line naming it, and
returns :class:`Ensemble`: an ``nn.Module`` whose output is the log of the members' mean
probability. Every consumer applies a softmax to a model's output; the softmax of
``log(mean p)`` is ``mean p`` exactly (its entries sum to 1), so `heart evaluate`,
`heart predict` and the exported graphs (ONNX, .pt2, TorchScript: one graph holding every
member) all give the mean of the members' probabilities.
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
FLOOR = 1e-30  # the mean probability is floored here before its log (no -inf in a graph)


def _module_class() -> type[nn.Module]:
    import torch
    from torch import nn

    from heartcli.model.inference import uses_rhythm

    class Ensemble(nn.Module):
        """The members' mean probability, as log-probabilities (a softmax undoes the log).

        ``forward(beats)`` or ``forward(beats, rhythm)`` when any member takes the rhythm
        features; a member without them gets the beats alone.
        """

        def __init__(self, members: list[nn.Module]):
            super().__init__()
            self.members = nn.ModuleList(members)
            self.takes = [uses_rhythm(m) for m in members]
            self.uses_rhythm = any(self.takes)

        def forward(self, beats: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
            probs = [
                torch.softmax((member(beats, *rest) if rhythm else member(beats)).float(), dim=1)
                for member, rhythm in zip(self.members, self.takes, strict=True)
            ]
            return torch.log(torch.stack(probs).mean(dim=0).clamp_min(FLOOR))

    return Ensemble


def ensemble_module(members: list[nn.Module]) -> nn.Module:
    """One module averaging ``members``' probabilities (eval mode); see the module docstring."""
    return _module_class()(members).eval()


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
) -> dict[str, Any]:
    """Write the manifest (and config.toml) of an ensemble of ``member_dirs`` (label, folder)
    into ``ensemble_dir``; the manifest is written last. Returns it."""
    from datetime import UTC, datetime

    from heartcli import __version__
    from heartcli.io import read_json, write_text
    from heartcli.model import runs

    ensemble_dir = Path(ensemble_dir)
    ensemble_dir.mkdir(parents=True, exist_ok=True)
    entries = [member_entry(ensemble_dir, path, label) for label, path in member_dirs]
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
        "ensemble": {"source": source, "combine": COMBINE, "members": entries, **scores},
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
