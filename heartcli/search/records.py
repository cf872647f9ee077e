"""One trial as a search keeps it: its name, its record in search.json, its config, its
failure in one line, and the best of them.

A trial's record is what :func:`heartcli.search.trial.run_trial` fills, search.json keeps
(search/state.py) and the report, the refit and the final model read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from heartcli.config import HeartConfig
from heartcli.config.sampling import apply
from heartcli.errors import ConfigError, HeartError

DONE = ("completed", "early_stopped", "pruned", "stopped")  # finished with a metric
# The median stopping rule compares with trials that ran their course (as Ray's
# MedianStoppingRule and Optuna's MedianPruner do): not pruned or cut-off ones.
REFERENCE = ("completed", "early_stopped")


def trial_name(number: int) -> str:
    """A trial's folder (and MLflow run) name: ``trial-NNN``."""
    return f"trial-{number:03d}"


@dataclass
class TrialRecord:
    """One trial as search.json keeps it."""

    number: int  # 1-based; the folder is trial-NNN
    vals: dict[str, list[Any]]  # hyperopt's labels -> [value] or [] (inactive branch)
    params: dict[str, Any]  # config key -> sampled value
    status: str = "running"  # running, completed, early_stopped, pruned, stopped, failed
    metric: float | None = None  # the objective at the kept (best) epoch
    best_epoch: int = 0
    epochs_run: int = 0
    seconds: float = 0.0
    reason: str = ""
    run_dir: str = ""
    curve: list[float] = field(default_factory=list)  # the metric per epoch
    tracking_run_id: str | None = None
    # Successive halving: epoch (as text, JSON keys) -> the metric recorded at that rung.
    rungs: dict[str, float] = field(default_factory=dict)
    seen: list[int] = field(default_factory=list)  # the finished trials TPE knew when suggesting
    started_at: float | None = None  # unix time the trial (last) started
    ended_at: float | None = None  # unix time it ended
    worker: int | None = None  # process id of the worker that ran it (--jobs)
    key: str = ""  # Ray Tune's trial id (ray backend): the same on every retry
    retries: int = 0  # times Ray restarted it after a failure (a lost node)
    node: str = ""  # Ray node id that ran (the last try of) it

    @property
    def finished(self) -> bool:
        return self.status in DONE

    @property
    def rung(self) -> int:
        """The highest rung (in epochs) this trial reached; 0 for none."""
        return max((int(e) for e in self.rungs), default=0)

    def loss(self, maximize: bool) -> float | None:
        """What TPE minimises: the best value the trial reported (pruned ones too); None for a
        failed trial."""
        if self.status == "failed" or self.metric is None:
            return None
        return -self.metric if maximize else self.metric


def best_of(records: list[TrialRecord], maximise: bool) -> TrialRecord | None:
    scored = [r for r in records if r.finished and r.metric is not None]
    if not scored:
        return None
    # Ties go to the earlier trial.
    return sorted(scored, key=lambda r: (-(r.metric or 0.0) if maximise else r.metric, r.number))[0]


def trial_config(config: HeartConfig, values: dict[str, Any], number: int) -> HeartConfig:
    """The base config with a trial's values; an impossible combination is a ConfigError."""
    data = apply(config.to_dict(), values)
    data["search"]["space"] = {}
    cap = config.search.max_epochs
    if cap and data["train"]["epochs"] > cap:
        data["train"]["epochs"] = cap
    try:
        return HeartConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            message = str(err["msg"]).removeprefix("Value error, ")
            problems.append(f"trial {number}: {where}: {message}")
        raise ConfigError(problems) from None


def failure(exc: BaseException) -> str:
    """One line for a trial's failure."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    if isinstance(exc, MemoryError) or "out of memory" in text.lower() or "can't allocate" in text:
        return f"out of memory: {text}"
    if isinstance(exc, HeartError):
        return text
    return f"{type(exc).__name__}: {text}"


def describe(values: dict[str, Any], keys: list[str] | None = None) -> str:
    """Short text of a trial's values (in the order of ``keys``) for tables."""
    order = list(keys) if keys is not None else list(values)
    parts = []
    for key in order:
        if key not in values:
            continue
        value = values[key]
        short = key.split(".", 1)[1]
        if isinstance(value, float):
            text = f"{value:.3g}"
        elif isinstance(value, list):
            text = "/".join(str(v) for v in value)
        else:
            text = str(value).lower() if isinstance(value, bool) else str(value)
        parts.append(f"{short}={text}")
    return " ".join(parts)
