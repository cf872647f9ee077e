"""The one way a long service tells its caller how it goes: fetch, import, train, tune, export.

A service takes a :class:`Progress` and calls its methods as it works; every method does
nothing here, so a Python caller (a notebook, a tune trial nobody watches) passes
``Progress()`` or nothing at all. The CLI subclasses it to draw rich progress bars and
tables; services never print.

The shape is the same for every service:

- ``start(summary)``: the job begins; ``summary`` says what it will do (run folder, device,
  beats, trials), as plain JSON-able values.
- ``stage(text)``: a new step begins (verifying, downloading, building, a fold).
- ``note(text)``: something worth a line that is not an error.
- ``task(name, total)``: a countable piece of work begins: a file of ``total`` bytes, an
  epoch of ``total`` steps, a trial; ``total`` is None when unknown.
- ``advance(n)``: ``n`` more units of the current task are done.
- ``done(name, result)``: a task ended; ``result`` is what it produced (an epoch's figures,
  a trial's record, None for a file).
"""

from __future__ import annotations

from typing import Any


class Progress:
    """Progress hooks of a long service; the CLI draws them, any other caller may ignore
    them (every method is a no-op)."""

    def start(self, summary: dict[str, Any]) -> None:
        """The job begins; ``summary`` says what it will do."""

    def stage(self, text: str) -> None:
        """A new step begins."""

    def note(self, text: str) -> None:
        """Something worth telling the user that is not an error."""

    def task(self, name: str, total: int | None = None) -> None:
        """A countable piece of work begins (``total`` units, None when unknown)."""

    def advance(self, n: int = 1) -> None:
        """``n`` more units of the current task are done."""

    def done(self, name: str, result: Any = None) -> None:
        """The task ``name`` ended with ``result``."""
