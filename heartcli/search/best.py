"""The best trial's links at a search's end: ``best`` (its folder), ``best.toml`` (its
config, runnable by `heart train --config`) and ``runs/best`` (the latest search's best)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from heartcli.config import dumps
from heartcli.io import write_text
from heartcli.search.records import TrialRecord, best_of, trial_config, trial_name

if TYPE_CHECKING:  # spec.py builds on this module
    from heartcli.search.spec import Search

BEST = "best"
BEST_CONFIG = "best.toml"


def link(path: Path, target: str) -> bool:
    """Point ``path`` at ``target`` (relative) atomically; False when a real folder is there."""
    if path.exists() and not path.is_symlink():
        return False
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, path)
    return True


def _best_toml(search: Search, best: TrialRecord) -> str:
    search_dir = search.folder
    cfg = trial_config(search.config, best.params, best.number)
    text = dumps(cfg, search.document())
    params = "\n".join(f"#   {k} = {v}" for k, v in best.params.items())
    header = (
        f"# Best trial of search {search_dir.name}: {trial_name(best.number)}, {search.metric} "
        f"{best.metric:.4f}\n"
        f"# (epoch {best.best_epoch} of {best.epochs_run}). Train it again with\n"
        f"#   heart train --config {search_dir / BEST_CONFIG} --name {search_dir.name}-best\n"
        f"# Sampled values:\n{params}\n\n"
    )
    return header + text


def link_best(
    search: Search, records: list[TrialRecord]
) -> tuple[TrialRecord | None, Path | None, list[str]]:
    """Links to the best trial and its config: (best, best.toml, notes)."""
    search_dir = search.folder
    best = best_of(records, search.maximise)
    if best is None:
        return None, None, ["no trial finished with a score; nothing to link as best"]
    notes: list[str] = []
    best_config = search_dir / BEST_CONFIG
    write_text(best_config, _best_toml(search, best))
    trial = trial_name(best.number)
    link(search_dir / BEST, trial)
    runs_best = search_dir.parent / BEST
    if not link(runs_best, f"{search_dir.name}/{trial}"):
        notes.append(f"{runs_best} is a real folder, not a link; left as it is")
    return best, best_config, notes
