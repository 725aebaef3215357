"""A run directory is bound to the configuration that made it: nothing in it is reused under another one.

    check_training(run, cfg)     # before training resumes or skips a finished run
    check_evaluation(run, cfg)   # before evaluation reuses the run's adapter or its cached answers
    stale_keys(run, cfg, stage)  # what the sweep's "complete" compares (empty: complete for this config)

The run's config.yaml is the binding. Training may not reuse a run whose recorded configuration differs in any
key that shapes training (every key outside the `eval` section: seed, method, lora, train, controller, data,
canary, judge, model, organism). Evaluation may not change those either (the adapter was trained under them;
the seed also seeds the answers), and may change an `eval` key only while the run holds no generated answers;
adding question sets or samples per prompt extends the cached answers, which stay valid (docs/decisions.md).
Keys in OPERATIONAL change how a stage runs, not what it computes, and are never compared. No torch here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from canary_lib.artifacts import RunDir, RunFileError
from canary_lib.config_loader import read_run_config_dict
from canary_lib.errors import CanaryError
from canary_lib.judge import JUDGE_BACKENDS

OPERATIONAL = frozenset(
    {
        "provenance",
        "model.device",
        "organism.cache_dir",
        "data.hf_token_env",
        "train.checkpoint_every",
        "train.keep_checkpoint",
        "judge.batch_size",
        "judge.max_error_share",
        "judge.max_unscored_share",
        "eval.vllm_gpu_memory_utilization",
        "eval.vllm_tensor_parallel_size",
        "tracking",
        "train.snapshot_every",
    }
)
OPERATIONAL |= {f"judge.{key}" for spec in JUDGE_BACKENDS.values() for key in spec.operational}  # each backend's
OPERATIONAL |= {f"canary.{key}" for key in OPERATIONAL if key.startswith("judge.")}  # the canary judge's own
"""Where the work runs, how long it may wait, when it checkpoints, what it mirrors to a tracker or keeps as
snapshots: never part of the binding."""
EVAL_EXTENDS = frozenset({"eval.sets", "eval.samples_per_prompt"})
"""Evaluation keys that only add answers: each cached answer is keyed by (set, question, paraphrase, sample)
and seeded by that key, so it is the same answer under the new value."""
_SHOWN = 6


class ConfigMismatchError(CanaryError, ValueError):
    """A run directory (or its cached answers) was made under another configuration than the one given."""


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and scalars are leaves."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out |= flatten(value, dotted + ".")
        else:
            out[dotted] = value
    return out


@functools.cache
def _schema_defaults() -> dict[str, Any]:
    """Every configuration key's default (flattened, JSON form)."""
    from canary_lib.config_schema import RunConfig  # pydantic only, no torch

    return flatten(RunConfig().model_dump(mode="json"))


def config_changes(old: dict[str, Any], new: dict[str, Any], include: Callable[[str], bool]) -> list[str]:
    """`key: old -> new` for every included, non-operational key whose value differs (sorted by key).

    A key that `old` lacks but the schema has was added to the configuration after `old` was recorded: the run
    ran with that key's default, since a key's default must keep the behaviour from before it existed
    (docs/decisions.md). So a package upgrade that adds keys leaves finished runs complete.
    """
    a, b = flatten(old), flatten(new)
    defaults = _schema_defaults()
    a |= {k: defaults[k] for k in b.keys() - a.keys() if k in defaults}
    keys = sorted(
        k for k in set(a) | set(b) if include(k) and not any(k == o or k.startswith(o + ".") for o in OPERATIONAL)
    )
    return [f"{k}: {_show(a.get(k))} -> {_show(b.get(k))}" for k in keys if a.get(k) != b.get(k)]


def _show(value: Any) -> str:
    return (
        "null" if value is None else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    )


def describe(changes: list[str]) -> str:
    shown = "; ".join(changes[:_SHOWN])
    return shown + (f"; and {len(changes) - _SHOWN} more" if len(changes) > _SHOWN else "")


def recorded_config(run: RunDir) -> dict[str, Any] | None:
    """The run's config.yaml as a dict (None when there is none): canary_lib.config's one reader of it.

    Raises:
        RunFileError: the file is damaged (not UTF-8, not YAML, a repeated key, not a mapping).
    """
    return read_run_config_dict(run)


def _as_dict(cfg: Any) -> dict[str, Any]:
    return cfg.model_dump(mode="json")


def is_training_key(key: str) -> bool:
    return not key.startswith("eval.")


def stale_keys(run: RunDir, cfg: Any, stage: str) -> list[str]:
    """How `cfg` differs from what made the run's `stage` ("training" or "eval"); [] when nothing was recorded."""
    recorded = recorded_config(run)
    if recorded is None:
        return []
    new = _as_dict(cfg)
    if stage == "training":
        return config_changes(recorded, new, is_training_key)
    return config_changes(recorded, new, lambda k: True)


def check_training(run: RunDir, cfg: Any) -> None:
    """Refuse to resume or reuse a run that was trained under another configuration."""
    changes = stale_keys(run, cfg, "training")
    if changes:
        raise ConfigMismatchError(
            f"{run.path} was trained with another configuration ({describe(changes)}); train into a new "
            f"directory, or delete {run.path} to train it again"
        )


def check_evaluation(run: RunDir, cfg: Any, *, trained: bool) -> None:
    """Refuse to evaluate a trained run under other training settings, or to reuse cached answers (or verdicts)
    made under other evaluation settings."""
    recorded = recorded_config(run)
    if recorded is None:
        return
    new = _as_dict(cfg)
    changes = config_changes(recorded, new, is_training_key)
    if changes:
        what = "was trained" if trained else "was evaluated"
        raise ConfigMismatchError(
            f"{run.path} {what} with another configuration ({describe(changes)}); evaluate with the run's own "
            f"settings (only eval.* may change), or use a new run directory"
        )
    cached = [p for p in (run.generations_path, run.judgments_path) if p.is_file() and p.stat().st_size]
    changes = config_changes(recorded, new, lambda k: k.startswith("eval.") and k not in EVAL_EXTENDS)
    if cached and changes:
        names = ", ".join(p.name for p in cached)
        raise ConfigMismatchError(
            f"{run.path}: {names} hold answers drawn with other evaluation settings ({describe(changes)}); "
            f"evaluate with the same settings, or delete {names} and {run.marker('eval').name} to evaluate anew"
        )


def check_training_directory(run: RunDir, cfg: Any) -> None:
    """Before training starts (or restarts) in `run`: refuse a directory that holds results training would
    destroy or later reuse as its own, before anything in it is deleted.

    Raises:
        ConfigMismatchError: it holds an evaluation without a finished training (a base-model evaluation, or
            another run's answers), or a run recorded under another configuration.
    """
    evaluation = [p.name for p in (run.generations_path, run.judgments_path, run.marker("eval")) if p.exists()]
    if evaluation and not run.is_complete("training"):
        raise ConfigMismatchError(
            f"{run.path} holds an evaluation ({', '.join(evaluation)}) but no finished training: it is a base-model "
            f"evaluation or another run's directory, and training would delete its metrics and later score its "
            f"answers as its own; train into a new directory, or delete those files to train here"
        )
    check_training(run, cfg)


def check_base_evaluation_directory(run: RunDir) -> None:
    """A base-model evaluation (no adapter) never writes into a training run's directory: its answers would
    become the run's cached answers.

    Raises:
        ConfigMismatchError: `run` holds training results.
    """
    training = [
        p.name for p in (run.marker("training"), run.adapter_dir, run.checkpoint_dir, run.steps_path) if p.exists()
    ]
    if training:
        raise ConfigMismatchError(
            f"{run.path} holds a training run ({', '.join(training)}); evaluate the base model into its own directory"
        )


def config_changes_from_dumps(old_yaml: str, new_yaml: str) -> list[str]:
    """The changed keys between two config dumps (a checkpoint's fingerprint against the run's configuration).

    Raises:
        ValueError: a dump is not a mapping (a damaged or foreign file).
    """
    old, new = yaml.safe_load(old_yaml) or {}, yaml.safe_load(new_yaml) or {}
    if not isinstance(old, dict) or not isinstance(new, dict):
        raise ValueError("a configuration dump is not a mapping")
    return config_changes(old, new, lambda k: True)


def ensure_run_directory(path: Path) -> None:
    """A run directory must be a directory (or not exist yet)."""
    if path.exists() and not path.is_dir():
        raise RunFileError(f"{path}: not a directory (a run directory is a folder); choose another path")
