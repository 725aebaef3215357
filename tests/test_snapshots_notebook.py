"""Adapter snapshots on the tiny organism: notebook 02 under papermill keeps them and draws the norm per layer
next to r-hat, and `canary eval RUN --step t` evaluates one with the organism's judge (slow: reuses the session's
tiny sweep for its prepared data and cached base organism)."""

from __future__ import annotations

import json

import papermill as pm
import pytest

from _e2e import ROOT
from canary_lib.artifacts import RunDir
from canary_lib.cli import main
from canary_lib.config import read_run_config
from canary_lib.snapshots import SNAPSHOT_EVALS_DIR, list_snapshots

pytestmark = pytest.mark.slow


def test_notebook_02_keeps_snapshots_and_plots_their_norms_then_one_evaluates(tiny_sweep, tmp_path):
    assert tiny_sweep.status == 0
    run = tmp_path / "runs" / "canary" / "seed42"
    params = [
        str(ROOT / "parameters" / name) for name in ("organism.yaml", "organism_tiny.yaml", "methods/canary.yaml")
    ]
    pm.execute_notebook(
        str(ROOT / "notebooks" / "02_train_controller.ipynb"),
        str(tmp_path / "02.ipynb"),
        parameters={
            "PARAMS": params,
            "OVERRIDES": [*tiny_sweep.overrides, "train.snapshot_every=1"],
            "RUN_DIR": str(run),
        },
        kernel_name="python3",
        cwd=str(tmp_path),
        progress_bar=False,
    )
    steps = list(list_snapshots(run))
    K = read_run_config(RunDir(run)).controller.K
    assert steps and steps[0] == 0 and all(s % K == 0 for s in steps)  # every canary evaluation
    figure = json.loads((tmp_path / "02.ipynb").read_text())["cells"][-1]["outputs"]
    plotted = json.dumps(figure)
    assert "LoRA update norm per layer" in plotted and '"name": "layer 1"' in plotted and "r\\u0302_t" in plotted

    assert main(["eval", str(run), "--step", str(steps[-1]), "--set", "eval.samples_per_prompt=1"]) == 0
    out = RunDir(run / SNAPSHOT_EVALS_DIR / f"step{steps[-1]}")
    metrics = out.read_metrics()
    assert out.is_complete("eval") and metrics["eval_adapter"] == str(list_snapshots(run)[steps[-1]])
    assert metrics["general_n_total"] > 0 and metrics["eval_judge_requests"] == 0  # the exact judge sends nothing
