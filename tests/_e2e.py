"""Helpers of the end-to-end tests: the tiny organism's sweep, where screenshots are kept, and how a test that
needs a system program (Chromium, SLURM) skips on a user's machine but fails in CI. Fixtures: conftest.py."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY_METHODS = ["no_defense", "fixed_5", "canary", "fixed_mean"]
"""Table 1's methods and one replay ablation (it must wait for the canary run): every notebook runs, in a few
minutes; the other ablations share these code paths and are covered by the sweep and results tests."""
TINY_SWEEP_ENV = "CANARY_TINY_SWEEP_DIR"
"""Where the session's tiny sweep runs (resumed if it is there already); default a fresh temporary directory."""
ARTIFACTS_ENV = "CANARY_TEST_ARTIFACTS"
"""Directory for screenshots and other files a person may want to look at after the tests (default
tests/artifacts/, git-ignored)."""


def need(problem: str | None, require_env: str) -> None:
    """Skip with `problem` (one line) when a system program is missing, unless `require_env` is 1 (CI), where
    a missing program is a failure: CI installs it, so a skip there would hide a broken set-up."""
    if problem is None:
        return
    if os.environ.get(require_env) == "1":
        pytest.fail(f"{problem} ({require_env}=1: required here)", pytrace=False)
    pytest.skip(problem)


used_artifacts: list[Path] = []


def artifacts_dir(*parts: str) -> Path:
    """A folder under the artifacts directory (created), reported at the end of the test session."""
    root = Path(os.environ.get(ARTIFACTS_ENV) or ROOT / "tests" / "artifacts")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    if root not in used_artifacts:
        used_artifacts.append(root)
    return path


# ---------------------------------------------------------------------------------------------- the tiny sweep


@dataclass
class TinySweep:
    """A finished tiny-organism sweep in a temporary directory (what `make reproduce` writes, in small)."""

    root: Path
    sweep_file: Path
    status: int
    """run_sweep's return value (0: every job succeeded)."""

    @property
    def runs(self) -> Path:
        return self.root / "runs" / "organism_tiny"

    @property
    def results(self) -> Path:
        return self.root / "results" / "organism_tiny"

    @property
    def overrides(self) -> list[str]:
        """Where its prepared data and cached base organism are (for reusing them in another run)."""
        return [f"data.dir={self.root / 'data'}", f"organism.cache_dir={self.root / 'cache'}"]


def write_tiny_sweep(root: Path, methods: list[str], executor: dict, **changes) -> Path:
    """A sweep file for the tiny organism with every path absolute and under root."""
    spec = {
        "profile": "organism_tiny",
        "params": [str(ROOT / "parameters/organism.yaml"), str(ROOT / "parameters/organism_tiny.yaml")],
        "methods": methods,
        "seeds": [42],
        "base_row": True,
        "overrides": [f"data.dir={root / 'data'}", f"organism.cache_dir={root / 'cache'}"],
        "notebooks_dir": str(ROOT / "notebooks"),
        "methods_dir": str(ROOT / "parameters/methods"),
        "runs_dir": str(root / "runs/{profile}"),
        "results_dir": str(root / "results/{profile}"),
        "executor": executor,
    }
    spec.update(changes)
    path = root / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def run_sweep_in(root: Path, sweep_file: Path) -> int:
    """run_sweep with root as the working directory (notebooks run in the invocation's directory)."""
    from canary_lib.sweep import run_sweep

    previous = Path.cwd()
    os.chdir(root)
    try:
        return run_sweep(sweep_file)
    finally:
        os.chdir(previous)
