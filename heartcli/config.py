"""One TOML config for every command: schema, defaults, loading, overrides and writing back.

Precedence, in this one place: ``--set`` overrides > the TOML file > the defaults below.
The file is read with tomlkit (so comments survive a round trip) and validated with strict
pydantic models that forbid unknown keys. Every problem is reported at once, one line each:
``FILE:LINE section.key: message (expected ..., got ...)``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import tomlkit
import tomlkit.exceptions
import tomlkit.items
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from heartcli.errors import ConfigError, DataError
from heartcli.io import read_bounded, write_text

MAX_CONFIG_BYTES = 1 << 20  # a config is a few KB; a bigger file is a mistake, not a config
# The rhythm columns of a dataset built from records (heartcli.dataset.RHYTHM_COLUMNS; the
# formulas are in heartcli.data.rhythm), in the order a rhythm model takes them.
# The six RR columns, then the three template columns (heartcli.data.template).
RHYTHM_FEATURES = (
    "rr_pre",
    "rr_post",
    "rr_local",
    "rr_record",
    "rr_pre_local",
    "rr_post_pre",
    "tpl_decorr",
    "tpl_rms",
    "tpl_peak",
)
# What a rhythm model's head can use (`[model] rhythm_columns`): the nine columns, and three
# intervals relative to the patient's own mean RR, computed inside the model (name ->
# numerator, denominator) so that every export takes the same nine columns.
RHYTHM_DERIVED = {
    "rr_pre_record": ("rr_pre", "rr_record"),
    "rr_post_record": ("rr_post", "rr_record"),
    "rr_local_record": ("rr_local", "rr_record"),
}
RHYTHM_USABLE = RHYTHM_FEATURES + tuple(RHYTHM_DERIVED)
EPOCH_BEATS_MAX = 10_000_000  # beats drawn per epoch (MIT-BIH has 109,446 in all)
MAX_MINUTES = 525_600  # a budget of a year at most (train and search max_minutes)
SEED_MAX = 2**32 - 1  # numpy, scikit-learn and torch all accept seeds in 0..2**32-1
MAX_THREADS = 1024  # heartcli.threads.MAX_THREADS: more is a typo, not a machine


class Section(BaseModel):
    # allow_inf_nan=False: every float in the schema must be finite (lr = inf is an error).
    model_config = ConfigDict(
        strict=True, extra="forbid", validate_assignment=True, allow_inf_nan=False
    )


class DataConfig(Section):
    """Where the beat dataset lives and how `heart fetch` builds it."""

    dir: str = Field(
        "data/mitbih", description="dataset folder written by `heart fetch` and read by training"
    )
    split: str = Field(
        "random",
        description='split to train and evaluate on: "random" (beat-level, Kaggle protocol) '
        'or "inter-patient" (de Chazal DS1/DS2), or another split the dataset\'s manifest lists',
    )
    records: str = Field(
        "data/mitbih/records", description="folder of the raw MIT-BIH records (.dat .hea .atr)"
    )
    url: str = Field(
        "https://physionet.org/files/mitdb/1.0.0/",
        description="PhysioNet base URL the records are downloaded from",
    )
    lead: Literal["channel0", "MLII"] = Field(
        "channel0",
        description='"channel0" = Kaggle-exact (lead 0 of every record); '
        '"MLII" = the MLII lead chosen by name in every record',
    )
    test_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="test share of the beat-level random split"
    )
    seed: int = Field(42, ge=0, le=SEED_MAX, description="seed of the random split")
    classes: dict[str, str] = Field(
        {},
        description="drop or merge classes of the split for training, validation and "
        'evaluation (AAMI EC57 practice): {Q = "drop"} leaves class Q out, {F = "V"} '
        "counts F beats as V; {} = the dataset's classes",
    )

    @field_validator("classes")
    @classmethod
    def _valid_classes(cls, value: dict[str, str]) -> dict[str, str]:
        for name, target in value.items():
            if not target or target == name:
                raise ValueError(
                    f'class {name}: use "drop" or the name of another class to merge it into '
                    f"(got {target!r})"
                )
            if target in value:
                raise ValueError(
                    f'class {name}: "{target}" is itself dropped or merged; '
                    "merge into a class that stays"
                )
        return value


class TrackingConfig(Section):
    """Experiment tracking."""

    uri: str = Field(
        "",
        description='MLflow tracking URI; "" = sqlite:///mlflow.db in the working folder '
        "(MLFLOW_TRACKING_URI wins over this key)",
    )
    experiment: str = Field("heart", description="MLflow experiment name")
    enabled: bool = Field(True, description="log runs to MLflow")
    tensorboard: bool = Field(False, description="also write TensorBoard scalars into the run")
    on_error: Literal["fail", "local"] = Field(
        "fail",
        description='an MLflow server that does not answer within seconds: "fail" (one error '
        'line) or "local" (warn, then log to sqlite:///mlflow.db in the working folder)',
    )


PoolKind = Literal["max", "avg", "none"]


class ModelConfig(Section):
    """The 1D CNN. The defaults are the seed architecture (5 conv layers, SE, residual)."""

    conv_layers: int = Field(5, ge=1, le=12, description="number of conv layers (search: 2-6)")
    channels: list[int] = Field(
        [32, 64, 64, 128, 160], description="output channels of each conv layer"
    )
    kernel_sizes: list[int] = Field(
        [11, 7, 5, 3, 3], description="kernel size of each conv layer (odd, 3-11 in the search)"
    )
    pooling: list[PoolKind] = Field(
        ["none", "max", "none", "none", "none"],
        description='pooling after each conv layer: "max", "avg" (kernel 2, stride 2) or "none"',
    )
    dilation: int = Field(1, ge=1, le=16, description="dilation of every conv (1, 2, 4, 8)")
    squeeze_excite: bool = Field(True, description="squeeze-excite after every layer but the first")
    residual: bool = Field(
        True, description="layers between the first two and the last are residual blocks"
    )
    attention: bool = Field(
        False, description="multi-head temporal self-attention over the final conv features"
    )
    attention_heads: int = Field(4, ge=1, description="heads of the self-attention layer")
    pool_output: int = Field(8, ge=1, description="length of the adaptive average pool output")
    fc: list[int] = Field([384, 256, 96], description="sizes of the fully connected layers")
    dropout: float = Field(0.3, ge=0.0, lt=1.0, description="dropout after each FC layer")
    separable: bool = Field(
        False,
        description="every conv after the first is depthwise-separable: a depthwise conv "
        "(one filter per channel) then a 1x1 pointwise conv (about kernel-size times fewer "
        "weights and multiply-adds; the small recipes of examples/tiny.toml)",
    )
    width: float = Field(
        1.0,
        gt=0.0,
        le=4.0,
        description="width multiplier: every entry of channels is scaled by it (rounded, at "
        "least 1) before the model is built",
    )
    rhythm: bool = Field(
        False,
        description="feed the rhythm columns (RR features of `heart fetch`) to the classifier "
        "head beside the conv features, standardised with statistics of the training fold",
    )
    rhythm_columns: list[str] = Field(
        list(RHYTHM_FEATURES),
        description="the rhythm features the head uses when rhythm = true: any of the nine "
        "columns and rr_pre_record, rr_post_record, rr_local_record (interval / rr_record); "
        "the model still takes all nine columns as its second input",
    )
    rhythm_scale: Literal["log", "linear"] = Field(
        "log",
        description='"log": the log of each feature, centred on the training fold\'s median '
        'and divided by its interquartile range / 1.349; "linear": the value, mean and std',
    )
    rhythm_wide: bool = Field(
        False,
        description="also add a linear map of the standardised rhythm features to the "
        "output logits, beside the path through the fully connected layers",
    )

    @model_validator(mode="after")
    def _per_layer_lengths(self) -> ModelConfig:
        for key in ("channels", "kernel_sizes", "pooling"):
            value = getattr(self, key)
            if len(value) != self.conv_layers:
                raise ValueError(
                    f"{key}: needs one entry per conv layer "
                    f"(expected {self.conv_layers} for conv_layers = {self.conv_layers}, "
                    f"got {len(value)})"
                )
        if any(c < 1 for c in self.channels):
            raise ValueError("channels: every entry must be >= 1")
        if any(k < 1 for k in self.kernel_sizes):
            raise ValueError("kernel_sizes: every entry must be >= 1")
        if any(f < 1 for f in self.fc):
            raise ValueError("fc: every size must be >= 1")
        unknown = [c for c in self.rhythm_columns if c not in RHYTHM_USABLE]
        if (
            unknown
            or not self.rhythm_columns
            or len(set(self.rhythm_columns)) != len(self.rhythm_columns)
        ):
            raise ValueError(
                f"rhythm_columns: {', '.join(unknown) or 'empty or repeated'}; use distinct "
                f"names from {', '.join(RHYTHM_USABLE)}"
            )
        return self


class ResampleConfig(Section):
    """Class rebalancing, applied to the training fold only (never validation or test)."""

    strategy: Literal["none", "class_weight", "random", "smote", "adasyn", "smote_tomek"] = Field(
        "none",
        description='"none", "class_weight" (weighted loss), "random" (every class to target '
        'beats an epoch, drawn by the sampler), "smote", "adasyn", "smote_tomek"',
    )
    target: int = Field(
        15000, ge=1, description="beats per class after resampling (seed search: 5,000-25,000)"
    )
    majority: Literal["keep", "cap", "drop"] = Field(
        "cap",
        description='class 0 (N): "cap" at target like every class, "keep" all, or "drop" it',
    )
    k_neighbors: int = Field(5, ge=1, description="neighbours for SMOTE / ADASYN")
    seed: int = Field(42, ge=0, le=SEED_MAX, description="seed of the resampler")
    min_beats: int = Field(
        50,
        ge=0,
        description="refuse to oversample a class from fewer real beats than this "
        "(drop or merge it with data.classes instead); 0 = no limit",
    )


class TrainConfig(Section):
    """Training loop. Validation is carved from the training split; test is never read."""

    epochs: int = Field(50, ge=1, description="maximum epochs")
    batch_size: int = Field(
        256, ge=1, description="beats per batch (scale lr with it: twice the batch, twice the lr)"
    )
    optimizer: Literal["adam", "adamw"] = Field(
        "adamw", description='"adamw" (decoupled weight decay) or "adam"'
    )
    lr: float = Field(2e-3, gt=0.0, description="learning rate (the peak, after any warm-up)")
    weight_decay: float = Field(0.01, ge=0.0, description="weight decay")
    scheduler: Literal["plateau", "onecycle", "cosine", "none"] = Field(
        "cosine",
        description='LR schedule: "cosine" (warm-up, then cosine decay to 0 over epochs), '
        '"onecycle", "plateau" (halve on a stalled val macro-F1) or "none"',
    )
    patience: int = Field(10, ge=1, description="early stopping: epochs without val improvement")
    val_fraction: float = Field(
        0.1, gt=0.0, lt=1.0, description="share of the training split held out for validation"
    )
    val_records: int | list[str] = Field(
        0,
        description="validation as whole records: N records of the training split, chosen so "
        "that both sides hold S and V beats, or a list of record names; 0 = val_fraction "
        "(whole records for inter-patient)",
    )
    steps_fraction: float = Field(
        1.0, gt=0.0, le=1.0, description="share of a full pass run as one epoch (1/10 to 1)"
    )
    final: Literal["retrain", "ensemble"] = Field(
        "retrain",
        description='the final model of `heart train --folds K`: "retrain" (one model on the '
        'whole training split for the folds\' mean best epoch) or "ensemble" (the K fold '
        "models as one model averaging their probabilities; no retraining)",
    )
    label_smoothing: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="label smoothing of the training loss (Szegedy et al. 2016): this share "
        "of every target is spread evenly over all classes; 0 = off",
    )
    ema: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="exponential moving average of the weights (Polyak averaging), e.g. "
        "0.999: validation, the best weights and the saved model are the average's; 0 = off",
    )
    seed: int = Field(
        42, ge=0, le=SEED_MAX, description="seed for weights, batches and the validation carve-out"
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto", description='"auto" picks cuda, then mps, then cpu'
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description='"bf16" = bfloat16 autocast (weights, loss, BatchNorm statistics and '
        'validation stay fp32); "auto" = bf16 on a CUDA GPU or a CPU with native bf16 '
        '(AVX512-BF16 or AMX), else "fp32"',
    )
    epoch_beats: int = Field(
        0,
        ge=0,
        le=EPOCH_BEATS_MAX,
        description="training beats drawn per epoch by the class-balancing sampler; "
        "0 = the balanced fold's size (the sum of the [resample] class targets)",
    )
    warmup_epochs: float = Field(
        1.0, ge=0.0, description='linear LR warm-up before "cosine" decays it (per step)'
    )
    max_minutes: float = Field(
        0.0,
        ge=0.0,
        le=MAX_MINUTES,
        description='training budget: stop after the epoch that crosses it (status "budget", '
        "best weights kept); 0 = none",
    )
    threads: int | str = Field(
        "auto",
        description='torch CPU threads: "auto" = the CPUs this process may use (affinity, '
        "cgroup quota) less those other programs keep busy, re-checked every epoch; a number "
        f"(1-{MAX_THREADS}) fixes it; 0 = every usable CPU",
    )
    runs_dir: str = Field("runs", description="folder that holds the run folders")

    @field_validator("threads", mode="before")
    @classmethod
    def _valid_threads(cls, value: Any) -> Any:
        # One message for every wrong shape, before the int | str union adds one per member.
        count = isinstance(value, int) and not isinstance(value, bool)
        if value == "auto" or (count and 0 <= value <= MAX_THREADS):
            return value
        raise ValueError(
            f'use "auto" or a whole number of threads 0..{MAX_THREADS} (got {value!r}); '
            "0 = every usable CPU"
        )

    @model_validator(mode="after")
    def _warmup_within_epochs(self) -> TrainConfig:
        if self.scheduler == "cosine" and self.warmup_epochs > self.epochs:
            raise ValueError(
                f"warmup_epochs: {self.warmup_epochs:g} is beyond epochs = {self.epochs} (the "
                "learning rate would never reach lr); use at most epochs"
            )
        return self


class AugmentConfig(Section):
    """On-the-fly augmentation of training beats (never validation or test); 0 = off."""

    scale: float = Field(
        0.0, ge=0.0, lt=1.0, description="amplitude scale: each beat times 1 + U(-scale, scale)"
    )
    shift: float = Field(0.0, ge=0.0, description="baseline shift: each beat plus U(-shift, shift)")
    noise: float = Field(0.0, ge=0.0, description="Gaussian noise of this standard deviation")
    time_shift: int = Field(
        0, ge=0, le=32, description="move each beat by up to this many samples (zero-filled)"
    )


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
        description="select on K-fold cross-validation of the training split (record-wise "
        "for inter-patient, stratified beats for random), as "
        "`heart train --folds K`: a trial's value is the folds' mean val_macro_f1 (needs "
        'pruner = "none"); 0 = one validation fold',
    )
    ensemble: int = Field(
        0,
        ge=0,
        description="after the search, also make RUN/ensemble: the top k finished trials as "
        "one model averaging their probabilities, scored on validation (out-of-fold with "
        "folds), never on test; 0 = off",
    )
    space: dict[str, Any] = Field(
        default_factory=dict,
        description='config key -> distribution, e.g. "train.lr" = {loguniform = [1e-5, 1e-2]}; '
        "choice, uniform, loguniform, quniform ([low, high, q], integers), bool, "
        "each = [...] (one per list item), per_layer = [...] (one per conv layer)",
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

    @field_validator("space")
    @classmethod
    def _valid_space(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Every bad key at once, each located at search.space.<key> (see search_space.py).
        from heartcli.search_space import check_space

        problems = check_space(value)
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


class ExportConfig(Section):
    """Model export (`heart export`)."""

    formats: list[Literal["onnx", "pt2", "torchscript", "pte"]] = Field(
        ["onnx", "pt2", "torchscript"],
        description='formats `heart export` writes by default ("pte": ExecuTorch, heart[edge])',
    )
    opset: int = Field(18, ge=7, description="ONNX opset")
    parity_beats: int = Field(1000, ge=1, description="real test beats used by the parity check")
    atol: float = Field(1e-4, gt=0.0, description="max |p_export - p_torch| allowed")
    calibration_beats: int = Field(
        2000,
        ge=1,
        description="--quantize static: training beats (never test) drawn in equal shares per "
        "class to calibrate the int8 activations",
    )
    int8_tolerance: float = Field(
        0.005,
        ge=0.0,
        description="largest test macro-F1 an int8 file may lose against the float model; "
        "a bigger loss is flagged (and --strict exits 1)",
    )
    latency_threads: int = Field(
        1, ge=1, description="threads of every runtime when the card's latency is measured"
    )


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


# --------------------------------------------------------------------------- loading


_HEADER = re.compile(r"^\s*\[+\s*([^\]]+?)\s*\]+")
_ASSIGN = re.compile(r'^\s*("?[A-Za-z0-9_.\-"]+"?)\s*=')


def _toml_lines(text: str) -> Iterator[tuple[int, tuple[str, ...], bool]]:
    """``(line, dotted path, is a table header)`` for every table header and key of a TOML
    text; a key's path starts with its table's."""
    table: tuple[str, ...] = ()
    for lineno, line in enumerate(text.splitlines(), start=1):
        if m := _HEADER.match(line):
            table = tuple(part.strip().strip('"') for part in m.group(1).split("."))
            yield lineno, table, True
        elif m := _ASSIGN.match(line):
            yield lineno, table + tuple(p.strip().strip('"') for p in m.group(1).split(".")), False


def _line_index(text: str) -> dict[tuple[str, ...], int]:
    """Map ``(section, key)`` and ``(section,)`` to their 1-based line in a TOML text."""
    index: dict[tuple[str, ...], int] = {}
    for lineno, path, _ in _toml_lines(text):
        index.setdefault(path, lineno)
    return index


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"float {value}"
    if isinstance(value, str):
        return f'string "{value}"'
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return type(value).__name__


def _expected(error: Any) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    simple = {
        "int_type": "an integer",
        "int_parsing": "an integer",
        "float_type": "a number",
        "float_parsing": "a number",
        "bool_type": "true or false",
        "bool_parsing": "true or false",
        "string_type": "a string",
        "list_type": "an array",
        "dict_type": "a table",
        "model_type": "a table",
        "int_from_float": "an integer",
        "finite_number": "a finite number",
    }
    if kind in simple:
        return simple[kind]
    if kind == "literal_error":
        return "one of " + str(ctx.get("expected", "")).replace("'", '"')
    bounds = {
        "greater_than": "> {gt}",
        "greater_than_equal": ">= {ge}",
        "less_than": "< {lt}",
        "less_than_equal": "<= {le}",
    }
    if kind in bounds:
        return "a value " + bounds[kind].format(**ctx)
    return ""


def _validate(
    data: dict[str, Any],
    *,
    source: str,
    lines: dict[tuple[str, ...], int],
    overridden: frozenset[tuple[str, ...]] = frozenset(),
) -> HeartConfig:
    problems: list[str] = []

    def where(path: tuple[str, ...]) -> str:
        """The most specific place that set ``path``: --set, or the file's line of its key."""
        for n in range(len(path), 0, -1):
            if path[:n] in overridden:
                return "--set"
        for n in range(len(path), 0, -1):
            if path[:n] in lines:
                return f"{source}:{lines[path[:n]]}"
        return source

    # Unknown sections and keys, with a did-you-mean; they are set aside so that the
    # remaining keys are still checked and every problem is reported at once.
    known: dict[str, Any] = {}
    for section, body in data.items():
        if section not in SECTIONS:
            hint = difflib.get_close_matches(section, list(SECTIONS), n=1)
            tip = (
                f'; did you mean "{hint[0]}"?' if hint else f"; sections are {', '.join(SECTIONS)}"
            )
            problems.append(f"{where((section,))} {section}: unknown section{tip}")
            continue
        if not isinstance(body, dict):
            problems.append(
                f"{where((section,))} {section}: must be a table, got {_describe(body)}"
            )
            continue
        fields = SECTIONS[section].model_fields
        known[section] = {}
        for key, value in body.items():
            if key in fields:
                known[section][key] = value
                continue
            hint = difflib.get_close_matches(key, list(fields), n=1)
            tip = f'; did you mean "{hint[0]}"?' if hint else ""
            problems.append(f"{where((section, key))} {section}.{key}: unknown key{tip}")

    try:
        config = HeartConfig.model_validate(known)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(str(p) for p in err["loc"])
            # ("search", "space", "train.lr") is found at the line of the key "train.lr"
            path = tuple(part for p in loc for part in p.split("."))
            dotted = ".".join(loc)
            message = err["msg"]
            if message.startswith("Value error, "):
                # Model-level checks start their message with the key they are about.
                message = message.removeprefix("Value error, ")
                key, _, rest = message.partition(": ")
                if rest and len(loc) == 1:
                    path, dotted, message = (loc[0], key), f"{loc[0]}.{key}", rest
                problems.append(f"{where(path)} {dotted}: {message}")
                continue
            got = _lookup(data, loc)
            expected = _expected(err)
            detail = f" (expected {expected}, got {_describe(got)})" if expected else ""
            problems.append(f"{where(path)} {dotted}: {message[:1].lower() + message[1:]}{detail}")
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return config


def _lookup(data: Any, loc: tuple[str, ...]) -> Any:
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return None
    return data


def parse_override(item: str) -> tuple[tuple[str, str], Any]:
    """Parse ``section.key=value``; the value is TOML, or a bare string when it is not TOML."""
    if "=" not in item:
        raise ConfigError(
            [f'--set {item}: expected section.key=value, e.g. --set train.epochs=5 (got "{item}")']
        )
    dotted, raw = item.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(
            [f'--set {item}: the key must be section.key, e.g. train.lr (got "{dotted.strip()}")']
        )
    raw = raw.strip()
    try:
        value = tomlkit.parse(f"v = {raw}")["v"]
        value = value.unwrap() if hasattr(value, "unwrap") else value
    except tomlkit.exceptions.TOMLKitError:
        value = raw
    return (parts[0], parts[1]), value


def read_config_text(path: str | Path) -> str:
    """The text of a config file: one that is missing, unreadable, not a regular file (a
    FIFO, a device: never opened in a way that blocks) or over 1 MB is refused."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(
            [f"{path}: config file not found; create one with `heart config init {path}`"]
        )
    size = path.stat().st_size if path.is_file() else 0
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(
            [
                f"{path}: {size:,} bytes is too big for a config file (at most "
                f"{MAX_CONFIG_BYTES:,}); pass the TOML config, not a data file"
            ]
        )
    try:
        data = read_bounded(path, MAX_CONFIG_BYTES, "config")
    except DataError as exc:
        raise ConfigError(
            [f"{exc} (a TOML config of at most {MAX_CONFIG_BYTES:,} bytes)"]
        ) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: cannot read the config file ({exc})"]) from None


def _duplicate_key_line(text: str, key: str) -> int | None:
    """The line of the second definition of ``key`` within one table of a TOML text."""
    seen: set[tuple[str, ...]] = set()
    for lineno, path, _ in _toml_lines(text):
        if path in seen and path[-1] == key:
            return lineno
        seen.add(path)
    return None


def load_document(path: str | Path) -> tomlkit.TOMLDocument:
    path = Path(path)
    text = read_config_text(path)
    try:
        return tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as exc:
        raise ConfigError(
            [f"{path}:{exc.line} {exc.__class__.__name__}: {exc}; fix the TOML syntax"]
        ) from None
    except tomlkit.exceptions.KeyAlreadyPresent as exc:
        key = str(exc).split('"')[1] if str(exc).count('"') >= 2 else str(exc)
        line = _duplicate_key_line(text, key)
        where = f"{path}:{line}" if line else str(path)
        raise ConfigError(
            [f'{where} {key}: defined twice (key "{key}" already exists); keep one of them']
        ) from None
    except tomlkit.exceptions.TOMLKitError as exc:
        raise ConfigError([f"{path}: not valid TOML ({exc}); fix the TOML syntax"]) from None


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> HeartConfig:
    """Resolve a config: defaults < the TOML file at ``path`` < ``--set`` overrides."""
    data: dict[str, Any] = {}
    lines: dict[tuple[str, ...], int] = {}
    source = "defaults"
    if path is not None:
        doc = load_document(path)
        data = doc.unwrap()
        lines = _line_index(doc.as_string())
        source = str(path)
    problems: list[str] = []
    overridden: set[tuple[str, ...]] = set()
    for item in overrides:
        try:
            (section, key), value = parse_override(item)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        if section not in data:
            overridden.add((section,))
        body = data.setdefault(section, {})
        if not isinstance(body, dict):
            problems.append(f"--set {item}: {section} is not a table")
            continue
        body[key] = value
        overridden.add((section, key))
    if problems:
        raise ConfigError(problems)
    return _validate(data, source=source, lines=lines, overridden=frozenset(overridden))


# --------------------------------------------------------------------------- writing


def _comment_lines(text: str, width: int = 88) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width=width, break_on_hyphens=False) or [text]


def to_document(
    config: HeartConfig, base: tomlkit.TOMLDocument | None = None
) -> tomlkit.TOMLDocument:
    """The config as a commented TOML document.

    With ``base`` (the user's own file), its comments and layout are kept and only values
    that differ, or keys it lacks, are written; without it every key gets its description.
    """
    doc = base if base is not None else tomlkit.document()
    if base is None:
        doc.add(tomlkit.comment("heart config: every command reads this file (heart --help)."))
        doc.add(tomlkit.comment("Precedence: --set section.key=value > this file > defaults."))
    values = config.to_dict()
    for section, model in SECTIONS.items():
        if section not in doc:
            table = tomlkit.table()
            if model.__doc__:
                for line in _comment_lines(model.__doc__.strip()):
                    table.add(tomlkit.comment(line))
            doc.add(tomlkit.nl())
            doc.add(section, table)
        table = doc[section]
        for key, field in model.model_fields.items():
            value = values[section][key]
            if key in table:
                current = table[key]
                current = current.unwrap() if hasattr(current, "unwrap") else current
                if current != value:
                    table[key] = value
                continue
            if field.description:
                for line in _comment_lines(field.description):
                    table.add(tomlkit.comment(line))
            if isinstance(value, dict):
                sub = tomlkit.table()
                for k, v in value.items():
                    sub[k] = v
                table.add(key, sub)
            else:
                table.add(key, value)
    return doc


def dumps(config: HeartConfig, base: tomlkit.TOMLDocument | None = None) -> str:
    return tomlkit.dumps(to_document(config, base))


def save_config(
    config: HeartConfig, target: str | Path, base: tomlkit.TOMLDocument | None = None
) -> None:
    """Write the resolved config (comments of ``base`` kept) atomically."""
    write_text(target, dumps(config, base))
