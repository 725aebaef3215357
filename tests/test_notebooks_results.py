"""Notebooks 04 and 05 under papermill on synthetic run directories (fast; no model needed).

.venv/bin/pytest tests/test_notebooks_results.py -q
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pandas as pd
import papermill as pm

from test_results_tables import _m, write_synthetic_run

ROOT = Path(__file__).resolve().parents[1]


def test_ablations_and_figures_notebooks_on_synthetic_runs(tmp_path: Path) -> None:
    runs, results = tmp_path / "runs" / "synthetic", tmp_path / "results" / "synthetic"
    for seed in (42, 123):
        write_synthetic_run(runs, "base", seed, _m(2.0))
        for method, gen in (
            ("no_defense", 20.0),
            ("fixed_5", 10.0),
            ("canary", 5.0),
            ("fixed_mean", 7.0),
            ("delayed", 8.0),
            ("shuffled", 6.0),
            ("no_ema", 7.5),
        ):
            write_synthetic_run(runs, method, seed, _m(gen + seed / 100), risks=[0.0, 0.1, 0.05], p=0.1)
        (runs / "canary" / f"seed{seed}" / "canary_answers.jsonl").write_text(
            '{"step": 4, "question_id": "c1", "sample": 0, "answer": "fine", "aligned": 90, "coherent": 90, '
            '"status": "scored"}\n'
        )
    profile = tmp_path / "profile.yaml"
    profile.write_text("profile: synthetic\n")
    params = {"PARAMS": [str(profile)], "OVERRIDES": [], "RUNS_DIR": str(runs), "RESULTS_DIR": str(results)}
    for name in ("04_ablations", "05_figures"):
        out = tmp_path / f"{name}.ipynb"
        pm.execute_notebook(
            str(ROOT / "notebooks" / f"{name}.ipynb"),
            str(out),
            parameters=params,
            kernel_name="python3",
            cwd=str(tmp_path),
            progress_bar=False,
        )
        nb = nbformat.read(out, as_version=4)
        assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    table1 = pd.read_csv(results / "table1.csv")
    assert table1.n_seeds.tolist() == [2, 2, 2, 2]
    assert pd.read_csv(results / "table2.csv").relative_change.tolist()[1] == "+34%"  # (7.825 - 5.825) / 5.825
    for name in ("table1", "table2", "figure2", "correlation", "ablation_p_traces", "trace_replay_seed42"):
        assert (results / "figures" / f"{name}.html").is_file(), name
