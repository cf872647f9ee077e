"""The sections of the TOML schema but ``[search]``: their keys, defaults and checks.

``[data]``, ``[tracking]``, ``[model]``, ``[resample]``, ``[train]``, ``[augment]`` and
``[export]``, each a strict :class:`~heartcli.config.bounds.Section`. The ``Field``
descriptions and the class docstrings are the config reference of the site
(docs/hooks/reference.py) and the comments of ``heart config init``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from heartcli.config.bounds import (
    EPOCH_BEATS_MAX,
    MAX_MINUTES,
    MAX_RECORDS,
    MAX_THREADS,
    MAX_WIDTH,
    SEED_MAX,
    Section,
)

# The rhythm columns of a dataset built from records (heartcli.data.dataset.RHYTHM_COLUMNS; the
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
        if any(not 1 <= c <= MAX_WIDTH for c in self.channels):
            raise ValueError(f"channels: every entry must be 1 to {MAX_WIDTH:,}")
        if any(not 1 <= k <= 255 for k in self.kernel_sizes):
            raise ValueError("kernel_sizes: every entry must be 1 to 255")
        if len(self.fc) > 16 or any(not 1 <= f <= MAX_WIDTH for f in self.fc):
            raise ValueError(f"fc: at most 16 layers, every size 1 to {MAX_WIDTH:,}")
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

    @field_validator("val_records")
    @classmethod
    def _valid_val_records(cls, value: int | list[str]) -> int | list[str]:
        if isinstance(value, int) and not 0 <= value <= MAX_RECORDS:
            raise ValueError(f"use 0 to {MAX_RECORDS:,} records or a list of names (got {value})")
        if isinstance(value, list) and len(value) > MAX_RECORDS:
            raise ValueError(f"at most {MAX_RECORDS:,} record names")
        return value

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
    calibration: Literal["minmax", "percentile", "entropy"] = Field(
        "minmax",
        description="--quantize static, ONNX: how the int8 activation ranges are set from the "
        "calibration beats (ONNX Runtime's MinMax, Percentile 99.999 or Entropy)",
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
