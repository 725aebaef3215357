"""End to end: every notebook under papermill, in pipeline order, on the tiny organism (parameters/organism_tiny.yaml),
through the same sweep runner as `make reproduce`.

    .venv/bin/pytest tests/test_notebooks_pipeline.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml

from canary_lib.sweep import NOTEBOOKS, run_sweep

ROOT = Path(__file__).resolve().parents[1]
# Table 1's methods and one replay ablation (it must wait for the canary run): every notebook runs, in a few
# minutes; the other ablations share these code paths and are covered by the sweep and results tests.
METHODS = ["no_defense", "fixed_5", "canary", "fixed_mean"]


def _errors(path: Path) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    return [o.get("ename", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if o.output_type == "error"]


@pytest.mark.slow
def test_every_notebook_runs_in_pipeline_order_on_the_tiny_organism(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    for needed in ("organism.yaml", "organism_tiny.yaml"):
        assert (ROOT / "parameters" / needed).is_file(), f"parameters/{needed} is missing"
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "profile": "organism_tiny",
        "params": [str(ROOT / "parameters/organism.yaml"), str(ROOT / "parameters/organism_tiny.yaml")],
        "methods": METHODS, "seeds": [42], "base_row": True,
        "overrides": [f"data.dir={tmp_path / 'data'}", f"organism.cache_dir={tmp_path / 'cache'}"],
        "notebooks_dir": str(ROOT / "notebooks"), "methods_dir": str(ROOT / "parameters/methods"),
        "runs_dir": str(tmp_path / "runs/{profile}"), "results_dir": str(tmp_path / "results/{profile}"),
        "executor": {"kind": "local", "parallel": 2, "threads_per_job": 1, "poll_s": 0.5},
    }))
    assert run_sweep(sweep) == 0

    runs, results = tmp_path / "runs/organism_tiny", tmp_path / "results/organism_tiny"
    executed = [results / "notebooks" / NOTEBOOKS[s] for s in ("data", "canary_design", "ablations", "figures")]
    executed += [runs / m / "seed42" / NOTEBOOKS[s] for m in METHODS for s in ("train", "evaluate")]
    executed += [runs / "base/seed42" / NOTEBOOKS["evaluate"]]
    for path in executed:
        assert path.is_file() and _errors(path) == [], path

    table1 = pd.read_csv(results / "table1.csv").set_index("method")
    assert list(table1.index) == ["base", "no_defense", "fixed_5", "canary"]
    assert table1.n_seeds.tolist() == [1, 1, 1, 1]
    assert table1.general_misaligned_pct_mean.notna().all()
    assert table1.loc["no_defense", "avg_p_mean"] == 0.0
    assert table1.loc["fixed_5", "avg_p_mean"] == pytest.approx(0.05)
    table2 = pd.read_csv(results / "table2.csv")
    assert table2.n_seeds.tolist() == [1, 1, 0, 0, 0]  # canary and fixed_mean ran
    assert table2.general_misaligned_pct_mean.iloc[:2].notna().all()
    correlation = json.loads((results / "correlation.json").read_text())
    assert correlation["n"] == len(METHODS)
    for name in ("table1", "table2", "figure2", "correlation", "ablation_p_traces", "trace_replay_seed42"):
        assert (results / "figures" / f"{name}.html").is_file(), name
    assert "Table 1" in (results / "summary.md").read_text()

    # A second invocation finds every run complete: only the two aggregation notebooks run again.
    trained = (runs / "canary/seed42" / NOTEBOOKS["train"]).stat().st_mtime_ns
    assert run_sweep(sweep) == 0
    assert (runs / "canary/seed42" / NOTEBOOKS["train"]).stat().st_mtime_ns == trained
