"""The one exception family services raise; the CLI turns it into a red line and an exit code."""

from __future__ import annotations


class HeartError(Exception):
    """A failure the user can act on. ``str(err)`` is the one-line message shown to them.

    ``result``, when set, is what the command did before it failed (`heart export --strict`:
    the export's summary, its files written and flagged); with --json the error document
    carries it."""

    exit_code = 1
    result: object = None


class UsageError(HeartError):
    """Bad input on the command line or in a config file (exit 2)."""

    exit_code = 2


class ConfigError(UsageError):
    """One or more problems in a config; each problem is one line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class DataError(HeartError):
    """A data file, record or dataset that cannot be used as it is."""


class NonFiniteOutput(HeartError):
    """A model gave NaN or inf: nothing computed from it (a score, a prediction) is kept."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM that stopped a run which keeps what it finished: ``str(err)`` says
    where it is and how to continue it (exit 130, as any interruption)."""
