"""One search, read once: its folder, its config, the config's text and the parsed space.

`heart tune` builds one :class:`Search` (:meth:`Search.plan` for a new search, before its
folder is claimed; :meth:`Search.read` for ``--resume``) and hands it to every part that
runs it: the TPE loop and its worker processes (pickled), the Ray driver, the report and
the ensemble step. A Ray trial gets the config's text (it needs nothing from the driver's
disk) and builds its own :class:`Search` once on its node (:meth:`Search.from_text`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import tomlkit

from heartcli.config import HeartConfig, SearchConfig, dumps, load_config
from heartcli.config.space import Space
from heartcli.errors import ConfigError, DataError, UsageError
from heartcli.search.best import BEST
from heartcli.search.checks import check_pruner, max_trial_epochs
from heartcli.search.claim import check_search_name
from heartcli.search.metric import maximize
from heartcli.search.records import trial_name
from heartcli.search.state import CONFIG


@dataclass(frozen=True)
class Search:
    """A search's config as ``search.toml`` holds it, parsed once."""

    folder: Path  # runs/NAME (a new search: not claimed yet)
    config: HeartConfig  # search.toml, resolved
    text: str  # search.toml as written, comments kept: the base of each trial's config.toml
    space: Space  # [search.space], parsed

    # ----------------------------------------------------------------- building it

    @classmethod
    def read(cls, folder: Path) -> Search:
        """The search in ``folder`` (``--resume``, ``--report``): its ``search.toml``."""
        folder = Path(folder)
        path = folder / CONFIG
        try:
            config = load_config(path)
        except ConfigError as exc:
            raise DataError(f"{path}: not a valid config ({exc.problems[0]})") from None
        return cls(folder, config, path.read_text(encoding="utf-8"), config.search.parsed_space())

    @classmethod
    def from_text(cls, folder: Path, text: str) -> Search:
        """The search from the text of its ``search.toml`` (written by heart, so valid)."""
        config = HeartConfig.model_validate(tomlkit.parse(text).unwrap())
        return cls(Path(folder), config, text, config.search.parsed_space())

    @classmethod
    def plan(cls, config: HeartConfig, name: str | None = None, config_base: Any = None) -> Search:
        """A new search of ``config`` under ``runs/NAME``, once its space, pruner and name are
        fine (nothing is written: :func:`heartcli.search.claim.new_search` claims it).

        Its config is the one ``search.toml`` will hold (``config_base``'s comments kept, the
        tracking URI redacted), as every trial reads it."""
        if not config.search.space:
            raise UsageError(
                "search.space: empty; add search.space entries, e.g. "
                '"train.lr" = {loguniform = [1e-5, 1e-2]} (see examples/exp.toml)'
            )
        runs_dir = Path(config.train.runs_dir)
        search = cls.from_text(runs_dir, dumps(config, config_base))
        check_pruner(search.config, search.space)
        name = datetime.now().strftime("tune-%Y%m%d-%H%M%S") if name is None else name
        check_search_name(name)
        return replace(search, folder=runs_dir / name)

    # ----------------------------------------------------------------- what it says

    @property
    def s(self) -> SearchConfig:
        """The ``[search]`` section."""
        return self.config.search

    @property
    def metric(self) -> str:
        return self.config.search.metric

    @property
    def maximise(self) -> bool:
        return maximize(self.config.search.metric)

    @property
    def max_epochs(self) -> int:
        """The most epochs any trial can run."""
        return max_trial_epochs(self.config, self.space)

    def document(self) -> tomlkit.TOMLDocument:
        """``search.toml`` as a TOML document (a fresh one a call): a trial's config base."""
        return tomlkit.parse(self.text)

    def trial_dir(self, number: int) -> Path:
        return self.folder / trial_name(number)

    @property
    def best_dir(self) -> Path:
        return self.folder / BEST
