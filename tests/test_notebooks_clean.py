"""The committed notebooks: stored without outputs, a tagged parameters cell first, in step with their builder
and with what the sweep runner passes them.

    .venv/bin/pytest tests/test_notebooks_clean.py -q
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from canary_lib.sweep import NOTEBOOKS, build_plan, load_sweep

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_PATHS = [ROOT / "notebooks" / name for name in NOTEBOOKS.values()]


@pytest.mark.parametrize("path", NOTEBOOK_PATHS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: a code cell has outputs"
            assert cell.execution_count is None, f"{path.name}: a code cell has an execution count"
        assert "execution" not in cell.metadata, f"{path.name}: execution timing left in cell metadata"
    assert "widgets" not in nb.metadata and "papermill" not in nb.metadata, f"{path.name}: run metadata left"


@pytest.mark.parametrize("path", NOTEBOOK_PATHS, ids=lambda p: p.name)
def test_first_code_cell_is_the_tagged_parameters_cell(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []), path.name
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), "a title first"
    assert nb.metadata["kernelspec"]["name"] == "python3"


def test_notebooks_match_their_builder() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_notebooks.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_sweep_parameters_match_the_real_notebooks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every name the sweep passes is declared in the notebook's parameters cell, with a matching type."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "profile.yaml").write_text("profile: check\n")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"profile: check\nparams: [profile.yaml]\nseeds: [42]\n"
        f"methods: [no_defense, fixed_5, canary, fixed_mean, delayed, shuffled, no_ema]\n"
        f"notebooks_dir: {ROOT / 'notebooks'}\nmethods_dir: {ROOT / 'parameters' / 'methods'}\n"
        f"notebook_parameters: {{train: {{INTERACTIVE: false}}, figures: {{INTERACTIVE: false}}, "
        f"canary_design: {{MEASURE_BASE_RISK: true}}}}\n"
    )
    plan = build_plan(load_sweep(sweep))
    assert len(plan.runs) == 1 + 7
    stages = [s.stage for job in (plan.prep, *plan.runs, plan.analysis) for s in job.steps]
    assert set(stages) == set(NOTEBOOKS)
