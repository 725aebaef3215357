"""Adding a method takes three things (README, "Adding a method or a controller"): a schedule, one registry entry
and one parameter file. Here a toy method is added through exactly those three and run through a sweep of the
real notebooks on the tiny organism, into Table 2.

    .venv/bin/pytest tests/test_method_registry.py -q

The schedule and the registry entry are written to a module of their own (`toy_method.py`), standing in for the
lines a researcher adds to canary_lib/controller.py and canary_lib/methods.py; the notebook kernels import it
through an IPython startup file, as they would import an edited canary_lib. Nothing in the package changes.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from canary_lib.artifacts import read_steps
from canary_lib.methods import METHODS
from canary_lib.sweep import run_sweep

ROOT = Path(__file__).resolve().parents[1]

TOY_MODULE = '''
from canary_lib.controller import ConstantSchedule
from canary_lib.methods import METHODS, MethodSpec


def toy_schedule(cfg):  # 1. the schedule: a function of the run configuration
    """p_t = 0.25 at every step."""
    return ConstantSchedule(0.25, cfg.controller.alpha)


METHODS["toy"] = MethodSpec(toy_schedule, table2="Toy p = 0.25", tests="the registry")  # 2. the entry
'''
TOY_PARAMETERS = "method:\n  name: toy\n"  # 3. the parameter file


@pytest.fixture
def toy_method(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Registers the toy method in this process and in every notebook kernel the sweep starts."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "toy_method.py").write_text(TOY_MODULE)
    startup = tmp_path / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-toy-method.py").write_text("import toy_method\n")
    methods_dir = tmp_path / "methods"
    methods_dir.mkdir()
    (methods_dir / "toy.yaml").write_text(TOY_PARAMETERS)
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(code), os.environ.get("PYTHONPATH")])))
    monkeypatch.syspath_prepend(str(code))
    importlib.import_module("toy_method")
    yield methods_dir
    METHODS.pop("toy", None)
    sys.modules.pop("toy_method", None)


@pytest.mark.slow
def test_a_toy_method_added_in_three_places_runs_through_a_sweep_into_table2(
    toy_method: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        yaml.safe_dump(
            {
                "profile": "organism_tiny",
                "params": [str(ROOT / "parameters/organism.yaml"), str(ROOT / "parameters/organism_tiny.yaml")],
                "methods": ["toy"],
                "seeds": [42],
                "base_row": False,
                "overrides": [
                    f"data.dir={tmp_path / 'data'}",
                    f"organism.cache_dir={tmp_path / 'cache'}",
                    "train.max_target_examples=48",
                    "eval.samples_per_prompt=1",
                ],  # a smoke run: seconds
                "notebooks_dir": str(ROOT / "notebooks"),
                "methods_dir": str(toy_method),
                "runs_dir": str(tmp_path / "runs/{profile}"),
                "results_dir": str(tmp_path / "results/{profile}"),
                "notebook_parameters": {"canary_design": {"MEASURE_BASE_RISK": False}},
                "executor": {"kind": "debug"},
            }
        )
    )
    assert run_sweep(sweep) == 0

    steps = read_steps(tmp_path / "runs/organism_tiny/toy/seed42/steps.csv")
    assert steps and all(row["p"] == 0.25 for row in steps)  # the toy schedule drove training
    results = tmp_path / "results/organism_tiny"
    table2 = pd.read_csv(results / "table2.csv").set_index("method")
    assert list(table2.index)[-1] == "toy"
    toy = table2.loc["toy"]
    assert (toy.label, toy.tests, toy.n_seeds) == ("Toy p = 0.25", "the registry", 1)
    assert toy.avg_p_mean == pytest.approx(0.25) and pd.notna(toy.general_misaligned_pct_mean)
    assert "toy" not in set(pd.read_csv(results / "table1.csv").method)
    # the ablation figure's default methods come from the registry too
    assert "toy" in set(pd.read_csv(results / "figures" / "ablation_p_traces.csv").method)
