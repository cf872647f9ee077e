"""What `heart fetch` tells its caller: the names of its progress tasks, and the result.

Progress goes through the shared :class:`heartcli.progress.Progress`: ``stage`` and
``note`` lines; ``task(DOWNLOADS, n)`` before ``n`` files are downloaded, then for each
file ``task(name)`` when it starts, ``task(name, total)`` once its size is known (the same
name: only the total changes), ``advance(bytes)`` as data arrives and ``done(name)`` once
it is verified and in place; ``task(CUTTING, 48)`` before the build, then ``advance(1)``
per record cut into beats. ``heart fetch --import`` says ``stage(f"reading {path}")`` per
file.

Kept apart from the build (numpy, pyarrow, wfdb) so that the CLI can name these without
loading what the build needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DOWNLOADS = "downloading"  # the task of the files to download; each file is a task of its own
CUTTING = "cutting beats"  # the task of the records cut into beats


@dataclass
class FetchResult:
    status: str  # "built" or "up to date"
    out_dir: Path
    records_dir: Path
    manifest: dict[str, Any]
    downloaded: list[str] = field(default_factory=list)
    sample_dir: Path | None = None
    sample: dict[str, Any] | None = None
