"""The bounds of every numeric config key, and ``Section``, the strict model that checks them.

Every numeric key has an upper bound: in its ``Field`` (``le=``/``lt=``), or else in
:data:`UPPER_BOUNDS`, one table by section class, checked by :class:`Section` after the
section's own checks. A count beyond these is a typo, and would size a loop, an allocation
or a thread pool.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, model_validator

EPOCH_BEATS_MAX = 10_000_000  # beats drawn per epoch (MIT-BIH has 109,446 in all)
MAX_MINUTES = 525_600  # a budget of a year at most (train and search max_minutes)
SEED_MAX = 2**32 - 1  # numpy, scikit-learn and torch all accept seeds in 0..2**32-1
MAX_THREADS = 1024  # heartcli.threads.MAX_THREADS: more is a typo, not a machine
# Every numeric key has an upper bound (tests/cli/test_config.py checks that none lacks one):
# a count beyond these is a typo, and would size a loop, an allocation or a thread pool.
MAX_FOLDS = 100  # train --folds K and [search] folds
MAX_COUNT = 1_000_000  # epochs, trials, patience, rungs: a million (11 days at one a second)
MAX_BEATS = 1_000_000  # beats of one class after resampling, parity or calibration beats
MAX_WIDTH = 4096  # conv channels, FC units
MAX_RECORDS = 10_000  # train.val_records (MIT-BIH has 48 records)
MAX_FLOAT = 1e30  # finite floats with no natural ceiling (lr = 1e30 is a divergence test)
# The upper bound of each numeric key that has none in its Field (checked by Section after
# the section's own checks), by section class: one table, every key in one place.
UPPER_BOUNDS: dict[str, dict[str, float]] = {
    "ModelConfig": {"attention_heads": 64, "pool_output": 1024},
    "ResampleConfig": {"target": MAX_BEATS, "k_neighbors": 1000, "min_beats": MAX_BEATS},
    "TrainConfig": {
        "epochs": MAX_COUNT,
        "batch_size": 65_536,
        "lr": MAX_FLOAT,
        "weight_decay": MAX_FLOAT,
        "patience": MAX_COUNT,
        "warmup_epochs": MAX_COUNT,
    },
    "AugmentConfig": {"shift": MAX_FLOAT, "noise": MAX_FLOAT},
    "SearchConfig": {
        "evals": MAX_COUNT,
        "min_epochs": MAX_COUNT,
        "reduction_factor": 1000,
        "warmup_epochs": MAX_COUNT,
        "min_trials": MAX_COUNT,
        "concurrency": MAX_THREADS,
        "max_failures": 1000,
        "startup_trials": MAX_COUNT,
        "max_epochs": MAX_COUNT,
        "folds": MAX_FOLDS,
        "ensemble": MAX_FOLDS,
        "refit": 1000,  # the rungs' refit (a key of the search branch; skipped where absent)
    },
    "ExportConfig": {
        "opset": 64,  # and at most the newest the installed onnx knows: heart export checks
        "parity_beats": MAX_BEATS,
        "atol": 1.0,
        "calibration_beats": MAX_BEATS,
        "int8_tolerance": 1.0,
        "latency_threads": MAX_THREADS,
    },
}


class Section(BaseModel):
    # allow_inf_nan=False: every float in the schema must be finite (lr = inf is an error).
    model_config = ConfigDict(
        strict=True, extra="forbid", validate_assignment=True, allow_inf_nan=False
    )

    @model_validator(mode="after")
    def _within_upper_bounds(self) -> Section:
        for key, most in UPPER_BOUNDS.get(type(self).__name__, {}).items():
            value = getattr(self, key, None)
            if isinstance(value, int | float) and not isinstance(value, bool) and value > most:
                bound = f"{int(most):,}" if most < 1e15 else f"{most:g}"
                text = str(value)  # an over-long number is not echoed whole
                got = f"{value:,}" if len(text) <= 16 else f"{text[:16]}...{text[-4:]}"
                got += f" ({len(text):,} digits)" if len(text) > 16 else ""
                raise ValueError(
                    f"{key}: input should be less than or equal to {bound} (expected a value "
                    f"<= {bound}, got {got})"
                )
        return self
