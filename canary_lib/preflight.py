"""Checks of a run's inputs that need no model: refused in one line before any model loads.

    check_adapter(run.adapter_dir)   # a damaged adapter (config, safetensors header, tensor offsets)
    require_judge_key(cfg)           # the OpenAI API judge's key, before hours of generation or training

No torch here (safetensors reads the header only).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from canary_lib.errors import CanaryError

if TYPE_CHECKING:  # pragma: no cover
    from canary_lib.config_schema import JudgeSettings, RunConfig

OPENAI_API = "https://api.openai.com/v1"
"""The judge's address when judge.base_url is unset (canary_lib.judge.OPENAI_URL)."""


class PreflightError(CanaryError, ValueError):
    """A run's input cannot be used (a damaged adapter, a missing API key)."""


def check_adapter(adapter_dir: Path) -> None:
    """A saved adapter is readable: its config is a JSON object and its weights' safetensors header and size are
    whole (read without loading any model).

    Raises:
        PreflightError: naming what is damaged.
    """

    def damaged(problem: str) -> PreflightError:
        return PreflightError(f"{adapter_dir}: damaged adapter ({problem}); train the run again into a new directory")

    try:
        config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise damaged(f"adapter_config.json: {type(exc).__name__}: {exc}") from None
    if not isinstance(config, dict):
        raise damaged("adapter_config.json is not a JSON object")
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        if (adapter_dir / "adapter_model.bin").is_file():
            return  # an older peft format; peft reads it
        raise damaged("no adapter_model.safetensors")
    try:
        from safetensors import safe_open

        with safe_open(str(weights), framework="np") as fh:
            names = list(fh.keys())
            for name in names:  # the offsets of every tensor must lie inside the file
                fh.get_slice(name)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise damaged(f"adapter_model.safetensors: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not names:
        raise damaged("adapter_model.safetensors holds no tensors")


def require_judge_key(cfg: RunConfig, settings: JudgeSettings | None = None) -> None:
    """The OpenAI API judge needs its key in the environment: refuse before any model loads, not after the
    generation (the key itself is read and kept only by the judge's client).

    `settings`: the judge to check (default cfg.judge, the evaluation judge; training passes the canary judge).

    Raises:
        PreflightError: naming the environment variable.
    """
    j = settings or cfg.judge
    if j.backend == "openai" and "api.openai.com" in (j.base_url or OPENAI_API) and not os.environ.get(j.api_key_env):
        raise PreflightError(
            f"the judge is the OpenAI API ({j.base_url or OPENAI_API}) and needs a key: set the "
            f"environment variable {j.api_key_env} (judge.api_key_env)"
        )
