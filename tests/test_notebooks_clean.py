"""The committed notebooks: each a jupytext pair (NN_name.ipynb and its percent-format NN_name.py) in step, stored
without outputs, a tagged parameters cell first, and in step with what the sweep runner passes them.

    .venv/bin/pytest tests/test_notebooks_clean.py -q
"""

from __future__ import annotations

from pathlib import Path

import jupytext
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


def _cells(nb: nbformat.NotebookNode) -> list[tuple[str, str, list[str]]]:
    return [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in nb.cells]


@pytest.mark.parametrize("path", NOTEBOOK_PATHS, ids=lambda p: p.name)
def test_notebook_and_its_script_are_an_exact_pair(path: Path) -> None:
    """An edit in JupyterLab (which saves both, notebooks/jupytext.toml) or in the script then `jupytext --sync`."""
    script = path.with_suffix(".py")
    assert script.is_file(), f"{script.name} is missing: jupytext --sync {path.relative_to(ROOT)}"
    paired = jupytext.read(script)
    assert _cells(paired) == _cells(nbformat.read(path, as_version=4)), (
        f"{path.name} and {script.name} differ: run jupytext --sync on the one you edited"
    )
    assert paired.metadata["kernelspec"]["name"] == "python3"
    compile(script.read_text(), str(script), "exec")  # the script is plain Python (magics would not be)


def test_every_notebook_file_belongs_to_a_pair_the_sweep_runs() -> None:
    folder = ROOT / "notebooks"
    assert sorted(p.name for p in folder.glob("*.ipynb")) == sorted(NOTEBOOKS.values())
    assert sorted(p.stem for p in folder.glob("*.py")) == sorted(Path(n).stem for n in NOTEBOOKS.values())


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
