"""The bundled sample: a small stratified draw of real beats from each split of a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from heartcli.data.build import write_dataset
from heartcli.data.dataset import BeatSet, load_split, read_manifest

# Beats per class kept in each part: enough of every class to train and evaluate a tiny
# model, small enough (about 3 MB) to commit.
TRAIN_PER_CLASS = {"N": 1000, "S": 350, "V": 450, "F": 300, "Q": 350}
TEST_PER_CLASS = {"N": 250, "S": 90, "V": 110, "F": 75, "Q": 90}


def draw(beats: BeatSet, per_class: dict[str, int], rng: np.random.Generator) -> BeatSet:
    """At most ``per_class[name]`` beats of each class, drawn without replacement."""
    chosen = []
    for index, name in enumerate(beats.classes):
        members = np.flatnonzero(beats.y == index)
        take = min(len(members), per_class.get(name, 0))
        chosen.append(rng.choice(members, size=take, replace=False))
    return beats.subset(np.sort(np.concatenate(chosen)))


def make_sample(
    dataset_dir: str | Path,
    out_dir: str | Path,
    *,
    seed: int = 0,
    train_per_class: dict[str, int] | None = None,
    test_per_class: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Write a stratified sample of every split of ``dataset_dir`` into ``out_dir``."""
    source = read_manifest(dataset_dir)
    rng = np.random.default_rng(seed)
    splits = {}
    for split in source["splits"]:
        splits[split] = (
            draw(load_split(dataset_dir, split, "train"), train_per_class or TRAIN_PER_CLASS, rng),
            draw(load_split(dataset_dir, split, "test"), test_per_class or TEST_PER_CLASS, rng),
        )
    manifest = {
        key: value
        for key, value in source.items()
        if key not in ("splits", "total", "build_seconds")
    }
    manifest["sample_of"] = {
        "seed": seed,
        "train_per_class": train_per_class or TRAIN_PER_CLASS,
        "test_per_class": test_per_class or TEST_PER_CLASS,
        "full_totals": source.get("splits", {}),
    }
    return write_dataset(out_dir, splits, manifest)
