"""Run configuration: typed sections with defaults, a YAML recipe on top, ``key=value`` overrides on
top of that, validated before anything is built from it.

- :mod:`.schema`: the sections and their defaults (:class:`Config`).
- :mod:`.merge`: setting keys from a mapping or an override (:func:`merge_config`,
  :func:`apply_overrides`).
- :mod:`.recipes`: YAML recipes and their ``_base_`` files (:func:`read_recipe`,
  :func:`load_config`, :func:`dump_config`).
- :mod:`.validation`: the allowed values (:data:`RULES`, :func:`validate_config`).
"""
from .merge import apply_overrides, merge_config
from .recipes import dump_config, load_config, read_recipe
from .schema import (CLASS_WEIGHTINGS, LOSSES, Config, ConfigError, DataConfig, DigitsConfig, EvalConfig, ModelConfig,
                     RunConfig, TrainConfig)
from .validation import RULES, Rule, validate_config

__all__ = ["Config", "ModelConfig", "DataConfig", "DigitsConfig", "TrainConfig", "EvalConfig", "RunConfig",
           "ConfigError", "RULES", "Rule", "LOSSES", "CLASS_WEIGHTINGS", "load_config", "read_recipe",
           "validate_config", "apply_overrides", "merge_config", "dump_config"]
