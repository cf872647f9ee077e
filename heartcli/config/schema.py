"""The TOML schema of every command: ``HeartConfig``, its sections, and ``[search]``.

Strict pydantic models that forbid unknown keys (``HeartConfig`` and one ``Section`` per
table): the bounds and the ``Section`` base in :mod:`heartcli.config.bounds`, the sections
in :mod:`heartcli.config.sections`, and here ``[search]``, whose ``space`` is checked
against every section (:data:`SECTIONS`), and the whole. ``[search.space]`` is checked by
:mod:`heartcli.config.space`, given the sections here, so the grammar does not import the
schema.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from heartcli.config.bounds import MAX_MINUTES, SEED_MAX, Section
from heartcli.config.sections import (
    AugmentConfig,
    DataConfig,
    ExportConfig,
    ModelConfig,
    ResampleConfig,
    TrackingConfig,
    TrainConfig,
)
from heartcli.config.space import Space, check_space, parse_space

SearchKind = Literal["choice", "uniform", "loguniform", "quniform", "bool"]


class SearchConfig(Section):
    """Hyperparameter search (`heart tune`)."""

    evals: int = Field(20, ge=1, description="number of trials")
    seed: int = Field(42, ge=0, le=SEED_MAX, description="seed of the TPE sampler")
    metric: str = Field("val_macro_f1", description="validation metric to maximise")
    max_minutes: float = Field(
        0.0, ge=0.0, le=MAX_MINUTES, description="wall-clock budget; 0 = none"
    )
    pruner: Literal["none", "median", "asha"] = Field(
        "asha",
        description='stop poor trials early: "asha" (successive halving), "median" '
        '(median stopping rule) or "none"',
    )
    min_epochs: int = Field(1, ge=1, description="asha: epochs of the first rung")
    reduction_factor: int = Field(
        3, ge=2, description="asha: rungs at min_epochs x factor^k; 1/factor of trials go on"
    )
    warmup_epochs: int = Field(3, ge=0, description="median: epochs before a trial can be pruned")
    min_trials: int = Field(3, ge=1, description="median: finished trials before pruning starts")
    backend: Literal["hyperopt", "ray"] = Field("hyperopt", description='"hyperopt" or "ray"')
    concurrency: int = Field(2, ge=1, description="parallel trials (ray backend; --jobs sets it)")
    max_failures: int = Field(
        2,
        ge=0,
        description="ray backend: times a failed trial is retried from its last epoch "
        "(a lost node); 0 = never",
    )
    startup_trials: int = Field(
        10, ge=1, description="random trials before TPE starts to model the results"
    )
    max_epochs: int = Field(0, ge=0, description="cap on train.epochs of every trial; 0 = none")
    folds: int = Field(
        0,
        ge=0,
        description="K-fold cross-validation of the training split (record-wise for "
        "inter-patient, stratified beats for random), as `heart train --folds K`. With "
        "refit: the folds the refitted trials train on (any pruner). Without: every trial "
        "is cross-validated and its value is the folds' mean val_macro_f1 (needs pruner = "
        '"none"); 0 = one validation fold',
    )
    refit: int = Field(
        0,
        ge=0,
        description="after the rungs, the top `refit` trials (the furthest through the "
        "successive-halving rungs, then by their value there) are trained again on `folds` "
        "K folds: each fold model predicts the beats it never trained on, so every training "
        "beat gets an out-of-fold prediction; these trials are ranked by out-of-fold "
        "macro-F1 (with its bootstrap 95% CI), and runs/best is the best one as one model "
        'of its K fold models (or, with ensemble = "greedy", their ensemble); per-class '
        "decision weights join where they gain out of fold. A finished fold is never "
        "trained again (--resume); 0 = off",
    )
    ensemble: int | str = Field(
        0,
        description="after the search, also make RUN/ensemble: the top k finished trials as "
        "one model averaging their probabilities, scored on validation (out-of-fold with "
        'folds), never on test; 0 = off. "greedy" (with refit): greedy ensemble selection '
        "with replacement (Caruana et al. 2004) over the refitted trials' out-of-fold "
        "probabilities, kept as runs/best only when it beats the best single trial out of "
        "fold by more than 0.002 (its weights chosen on the other folds' beats)",
    )
    space: dict[str, Any] = Field(
        default_factory=dict,
        description='config key -> distribution, e.g. "train.lr" = {loguniform = [1e-5, 1e-2]}; '
        "choice, uniform, loguniform, quniform ([low, high, q], integers), bool, "
        "each = [...] (one per list item), per_layer = [...] (one per conv layer)",
    )

    @field_validator("ensemble", mode="before")
    @classmethod
    def _valid_ensemble(cls, value: Any) -> Any:
        # One message for every wrong shape, before the int | str union adds one per member.
        count = isinstance(value, int) and not isinstance(value, bool)
        if value == "greedy" or (count and value >= 0):
            return value
        raise ValueError(
            f'use 0 (off), a number k of top trials, or "greedy" (with refit) (got {value!r})'
        )

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if not re.fullmatch(r"val_macro_f1|val_loss|val_recall_\w+", value):
            raise ValueError(
                f'"{value}" is not a validation metric; use "val_macro_f1", "val_loss" '
                'or "val_recall_<class>", e.g. "val_recall_S"'
            )
        return value

    def parsed_space(self) -> Space:
        """``space`` parsed by the grammar of :mod:`heartcli.config.space` (checked on load)."""
        return parse_space(self.space, SECTIONS)

    @field_validator("space")
    @classmethod
    def _valid_space(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Every bad key at once, each located at search.space.<key> (see config/space.py).
        problems = check_space(value, SECTIONS)
        if problems:
            raise ValidationError.from_exception_data(
                "space",
                [
                    InitErrorDetails(
                        type=PydanticCustomError(
                            "search_space", "{message}", {"message": p.message}
                        ),
                        loc=(p.key,),
                        input=value.get(p.key.split("[")[0]),
                    )
                    for p in problems
                ],
            )
        return value


class HeartConfig(Section):
    data: DataConfig = Field(default_factory=DataConfig)  # type: ignore[arg-type]
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)  # type: ignore[arg-type]
    model: ModelConfig = Field(default_factory=ModelConfig)  # type: ignore[arg-type]
    resample: ResampleConfig = Field(default_factory=ResampleConfig)  # type: ignore[arg-type]
    train: TrainConfig = Field(default_factory=TrainConfig)  # type: ignore[arg-type]
    augment: AugmentConfig = Field(default_factory=AugmentConfig)  # type: ignore[arg-type]
    search: SearchConfig = Field(default_factory=SearchConfig)  # type: ignore[arg-type]
    export: ExportConfig = Field(default_factory=ExportConfig)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


SECTIONS: dict[str, type[Section]] = {
    name: field.annotation  # type: ignore[misc]
    for name, field in HeartConfig.model_fields.items()
}
