"""One TOML config for every command.

- :mod:`heartcli.config.schema`: the sections, keys, defaults and their checks
- :mod:`heartcli.config.load`: reading (``--set`` > file > defaults), every problem at once
  with its line, and writing back with comments
- :mod:`heartcli.config.space`: the ``[search.space]`` grammar (its distributions, checked
  against the sections)
- :mod:`heartcli.config.sampling`: a parsed space as hyperopt expressions, a sample as
  config values

The schema and the loader are re-exported here: ``from heartcli.config import HeartConfig,
load_config``.
"""

from heartcli.config.load import (
    MAX_CONFIG_BYTES,
    dumps,
    load_config,
    load_document,
    option_overrides,
    parse_override,
    read_config_text,
    save_config,
    to_document,
)
from heartcli.config.schema import (
    EPOCH_BEATS_MAX,
    MAX_FOLDS,
    MAX_MINUTES,
    MAX_THREADS,
    RHYTHM_DERIVED,
    RHYTHM_FEATURES,
    RHYTHM_USABLE,
    SECTIONS,
    SEED_MAX,
    AugmentConfig,
    DataConfig,
    ExportConfig,
    HeartConfig,
    ModelConfig,
    PoolKind,
    ResampleConfig,
    SearchConfig,
    SearchKind,
    Section,
    TrackingConfig,
    TrainConfig,
)

__all__ = [
    "EPOCH_BEATS_MAX",
    "MAX_CONFIG_BYTES",
    "MAX_FOLDS",
    "MAX_MINUTES",
    "MAX_THREADS",
    "RHYTHM_DERIVED",
    "RHYTHM_FEATURES",
    "RHYTHM_USABLE",
    "SECTIONS",
    "SEED_MAX",
    "AugmentConfig",
    "DataConfig",
    "ExportConfig",
    "HeartConfig",
    "ModelConfig",
    "PoolKind",
    "ResampleConfig",
    "SearchConfig",
    "SearchKind",
    "Section",
    "TrackingConfig",
    "TrainConfig",
    "dumps",
    "load_config",
    "load_document",
    "option_overrides",
    "parse_override",
    "read_config_text",
    "save_config",
    "to_document",
]
