"""End to end: every notebook under papermill, in pipeline order, on the tiny organism (parameters/organism_tiny.yaml),
through the same sweep runner as `make reproduce` (the session's `tiny_sweep`, tests/conftest.py).

    .venv/bin/pytest tests/test_notebooks_pipeline.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from _e2e import ROOT, TINY_METHODS, TinySweep
from canary_lib.sweep import NOTEBOOKS, build_plan, load_sweep


def _errors(path: Path) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    return [
        o.get("ename", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]


@pytest.mark.slow
def test_every_notebook_runs_in_pipeline_order_on_the_tiny_organism(tiny_sweep: TinySweep) -> None:
    for needed in ("organism.yaml", "organism_tiny.yaml"):
        assert (ROOT / "parameters" / needed).is_file(), f"parameters/{needed} is missing"
    assert tiny_sweep.status == 0

    runs, results = tiny_sweep.runs, tiny_sweep.results
    executed = [results / "notebooks" / NOTEBOOKS[s] for s in ("data", "canary_design", "ablations", "figures")]
    executed += [runs / m / "seed42" / NOTEBOOKS[s] for m in TINY_METHODS for s in ("train", "evaluate")]
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
    assert correlation["n"] == len(TINY_METHODS)
    for name in ("table1", "table2", "figure2", "correlation", "frontier", "ablation_p_traces", "trace_replay_seed42"):
        assert (results / "figures" / f"{name}.html").is_file(), name
    assert "Table 1" in (results / "summary.md").read_text()

    # A second invocation would find every job complete and run only the aggregation notebooks. Checked on the
    # plan, not by running it: the browser tests may be reading these results in another worker meanwhile (a
    # real second invocation is in tests/test_slurm_sweep.py).
    plan = build_plan(load_sweep(tiny_sweep.sweep_file))
    assert [job.state() for job in [plan.prep, *plan.runs]] == ["complete"] * (1 + len(plan.runs))
