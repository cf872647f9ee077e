"""One TOML config for every command.

- :mod:`heartcli.config.schema`: ``HeartConfig``, ``[search]`` and ``SECTIONS``, the whole schema
- :mod:`heartcli.config.sections`: the other sections, their keys, defaults and checks
- :mod:`heartcli.config.bounds`: the upper bound of every numeric key, and ``Section``, the
  strict base model that checks them
- :mod:`heartcli.config.load`: reading (``--set`` > file > defaults), every problem at once
  with its line, and writing back with comments
- :mod:`heartcli.config.space`: the ``[search.space]`` grammar (its distributions, checked
  against the sections)
- :mod:`heartcli.config.sampling`: a parsed space as hyperopt expressions, a sample as
  config values

The schema and the loader are re-exported here: ``from heartcli.config import HeartConfig,
load_config``.
"""

from heartcli.config.bounds import (
    EPOCH_BEATS_MAX,
    MAX_FOLDS,
    MAX_MINUTES,
    MAX_THREADS,
    SEED_MAX,
    Section,
)
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
from heartcli.config.schema import SECTIONS, HeartConfig, SearchConfig, SearchKind
from heartcli.config.sections import (
    RHYTHM_DERIVED,
    RHYTHM_FEATURES,
    RHYTHM_USABLE,
    AugmentConfig,
    DataConfig,
    ExportConfig,
    ModelConfig,
    PoolKind,
    ResampleConfig,
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
