"""ExplainerConfiguration: schema, loading with located errors, policy gate, storage layout."""

from include.configuration.loader import (
    EXPLAINER_CONFIGS_DIR,
    ConfigError,
    LoadedConfig,
    Problem,
    discover_config_files,
    load_config,
    model_catalogue,
    parse_config_text,
)
from include.configuration.schema import ExplainerConfiguration, json_schema

__all__ = [
    "EXPLAINER_CONFIGS_DIR",
    "ConfigError",
    "ExplainerConfiguration",
    "LoadedConfig",
    "Problem",
    "discover_config_files",
    "json_schema",
    "load_config",
    "model_catalogue",
    "parse_config_text",
]
