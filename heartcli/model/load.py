"""Loading a run folder's model: one run's weights into the network its config builds, or
an ensemble's members (each checked against the checksum its manifest keeps) as one
module averaging their probabilities. Any damage is one DataError line naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from heartcli.errors import DataError, HeartError
from heartcli.model.ensemble import check_member, ensemble_module, ensemble_weights
from heartcli.model.runs import (
    CONFIG,
    WEIGHTS,
    LoadedRun,
    read_run_config,
    read_run_manifest,
)


def load_run(path: str | Path) -> LoadedRun:
    """Load a run folder; any damage is one DataError line naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from heartcli.model.network import build_model

    run_dir = Path(path)
    manifest = read_run_manifest(run_dir)
    config = read_run_config(run_dir)
    classes = [str(c) for c in manifest["classes"]]
    input_length = int(manifest["input_length"])
    if manifest.get("ensemble"):  # K member runs as one model (heartcli/ensemble.py)
        shares, decision = ensemble_weights(run_dir, manifest["ensemble"], classes)
        members = [m.model for m in load_ensemble(run_dir, manifest)]
        module = ensemble_module(members, shares, decision)
        return LoadedRun(run_dir, config, module, manifest, classes, input_length)
    weights = run_dir / WEIGHTS
    if not weights.exists():
        raise DataError(
            f"{run_dir}: no {WEIGHTS} (no epoch finished); "
            f"continue it with `heart train --resume {run_dir}`"
        )
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(f"{weights}: truncated or unreadable ({exc}); retrain the run") from None
    try:
        model = build_model(config.model, input_length, len(classes))
    except HeartError as exc:
        raise DataError(f"{run_dir / CONFIG}: {exc}") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or shapes:
        detail = (
            f"shape of {shapes[0]} is {tuple(state[shapes[0]].shape)}, "
            f"config gives {tuple(expected[shapes[0]].shape)}"
            if shapes
            else f"{len(missing)} missing and {len(unexpected)} unexpected tensors"
        )
        raise DataError(
            f"{weights}: weights do not match the model section of {CONFIG} ({detail}); "
            "restore the run's config.toml or retrain"
        )
    model.load_state_dict(state)
    model.eval()
    vars(model)["heart_source"] = str(run_dir)  # named in inference's one-line errors
    return LoadedRun(run_dir, config, model, manifest, classes, input_length)


def load_ensemble(run_dir: Path, manifest: dict[str, Any]) -> list[LoadedRun]:
    """Every member of the ensemble in ``run_dir``, checked, loaded, with the same classes."""
    entries = (manifest.get("ensemble") or {}).get("members") or []
    if not entries:
        raise DataError(f"{run_dir}: the manifest's ensemble lists no members; retrain the run")
    members = []
    for entry in entries:
        member_dir = check_member(run_dir, entry)
        if read_run_manifest(member_dir).get("ensemble"):
            raise DataError(
                f"{run_dir}: ensemble member {entry.get('name') or entry.get('path')} is itself "
                "an ensemble; an ensemble lists trained runs: make it again"
            )
        member = load_run(member_dir)
        if member.classes != list(manifest["classes"]) or member.input_length != int(
            manifest["input_length"]
        ):
            raise DataError(
                f"{run_dir}: ensemble member {entry.get('name')} has other classes or beat "
                "length than the ensemble; make the ensemble again"
            )
        members.append(member)
    return members
