"""What `heart fetch` tells its caller: the progress hooks and the result.

Kept apart from the build (numpy, pyarrow, wfdb) so that the CLI can name these types
without loading what the build needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class FetchListener:
    """Progress hooks of `fetch`; the CLI draws them, Python callers may ignore them."""

    def stage(self, text: str) -> None:
        """A new step starts (verifying, downloading, building)."""

    def note(self, text: str) -> None:
        """Something worth telling the user that is not an error."""

    def downloads(self, names: list[str]) -> None:
        """These files are about to be downloaded."""

    def file_start(self, name: str) -> None:
        """Downloading ``name`` starts."""

    def file_bytes(self, n: int, total: int | None) -> None:
        """``n`` more bytes of the current file arrived (``total``: its size, if known)."""

    def file_done(self, name: str) -> None:
        """``name`` is downloaded, verified and in place."""

    def record_built(self, record: str) -> None:
        """A record has been cut into beats."""


@dataclass
class FetchResult:
    status: str  # "built" or "up to date"
    out_dir: Path
    records_dir: Path
    manifest: dict[str, Any]
    downloaded: list[str] = field(default_factory=list)
    sample_dir: Path | None = None
    sample: dict[str, Any] | None = None
