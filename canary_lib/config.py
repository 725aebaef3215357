"""One typed configuration for a run (one method x one seed), loaded from YAML files under `parameters/`.

    cfg = load_config(["parameters/organism.yaml", "parameters/methods/canary.yaml"], overrides=["seed=123"])

Files are deep-merged left to right, then `key.sub=value` overrides (values parsed as YAML). Unknown keys,
wrong types and invalid values raise `ConfigError` naming the dotted key and the file that set it.
This module imports no torch: it is safe to use from the sweep runner and notebooks' parameter checks.

It is the way in, and only re-exports: the models are in canary_lib/config_schema.py (the organism's section in
canary_lib/config_organism.py; their shared base, `Strict`, `ConfigError` and the seed types, in
canary_lib/config_base.py), loading, error formatting and a run directory's
config.yaml in canary_lib/config_loader.py.
"""

from __future__ import annotations

from canary_lib.config_base import TORCH_SEED_MAX, TORCH_SEED_MIN, ConfigError, NonNegativeSeed, Strict, TorchSeed
from canary_lib.config_loader import (
    apply_process_settings,
    config_from_dict,
    load_config,
    load_yaml_text,
    merge_sources,
    parse_override,
    read_run_config,
    read_run_config_dict,
    read_yaml,
    validate_model,
    write_run_config,
)
from canary_lib.config_organism import OrganismSettings
from canary_lib.config_schema import (
    LEGACY_DATA_KEYS,
    QWEN2_PROJECTIONS,
    CanarySettings,
    ControllerSettings,
    DataSettings,
    EvalSettings,
    JudgeSettings,
    LoraSettings,
    MethodSettings,
    ModelConfig,
    RunConfig,
    SamplingSettings,
    TrackingSettings,
    TrainSettings,
    canary_judge_settings,
    dump_config,
)

__all__ = [
    "CanarySettings",
    "ConfigError",
    "ControllerSettings",
    "DataSettings",
    "EvalSettings",
    "JudgeSettings",
    "LEGACY_DATA_KEYS",
    "LoraSettings",
    "MethodSettings",
    "ModelConfig",
    "NonNegativeSeed",
    "OrganismSettings",
    "QWEN2_PROJECTIONS",
    "RunConfig",
    "SamplingSettings",
    "Strict",
    "TORCH_SEED_MAX",
    "TORCH_SEED_MIN",
    "TorchSeed",
    "TrackingSettings",
    "TrainSettings",
    "apply_process_settings",
    "canary_judge_settings",
    "config_from_dict",
    "dump_config",
    "load_config",
    "load_yaml_text",
    "merge_sources",
    "parse_override",
    "read_run_config",
    "read_run_config_dict",
    "read_yaml",
    "validate_model",
    "write_run_config",
]
