"""The beyond-paper methods of the extended sweep (safe-data budget, judged-probability signal, P and PI
controllers) trained and evaluated on the tiny organism through the package's own code path (train_from_config,
evaluate_run), then into Table 2, the frontier and the per-signal correlation (build_results).

    .venv/bin/pytest tests/test_beyond_paper_end_to_end.py -q

The notebooks and the sweep runner read the same registry for every method (tests/test_method_registry.py runs a
new method through them); the extended sweep file itself is dry-run with every committed sweep. Smoke-test
numbers: what is checked is each method's defining property in its run files, not results.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from _fixtures import ScriptedCanary
from canary_lib.artifacts import RunDir, read_controller, read_steps
from canary_lib.config import load_config
from canary_lib.controller import pi_update, proportional_gains

ROOT = Path(__file__).resolve().parents[1]
PROFILE = [ROOT / "parameters/organism.yaml", ROOT / "parameters/organism_tiny.yaml"]


@pytest.mark.slow
def test_extended_methods_on_the_tiny_organism(tmp_path: Path) -> None:
    overrides = [
        f"data.dir={tmp_path / 'data'}",
        f"organism.cache_dir={tmp_path / 'cache'}",
        "eval.samples_per_prompt=1",
        "eval.sets=[general]",
    ]
    base = load_config(PROFILE, overrides)
    from canary_lib.evaluate import evaluate_run
    from canary_lib.organism import ensure_base_model, prepare_organism_data
    from canary_lib.results import build_results
    from canary_lib.train import train_from_config

    prepare_organism_data(base)
    ensure_base_model(base)
    extended = yaml.safe_load((ROOT / "parameters/sweeps/organism_extended.yaml").read_text())["methods"]
    runs = tmp_path / "runs"
    # the fixed curve (p = 0 and 0.05) and the reference run, which the main sweep provides on the organism
    for method in ["no_defense", "fixed_5", "canary", *extended]:
        cfg = load_config([*PROFILE, ROOT / f"parameters/methods/{method}.yaml"], overrides)
        train_from_config(cfg, runs / method / "seed42")
        evaluate_run(runs / method / "seed42")

    def run(method: str) -> RunDir:
        return RunDir(runs / method / "seed42")

    # budget: exactly Fixed 5%'s safe steps on the same D_T and seed, never more spent
    budget, fixed = run("canary_budget").read_metrics(), run("fixed_5").read_metrics()
    assert budget["safe_budget"] == fixed["n_safe_steps"] and budget["n_safe_steps"] <= budget["safe_budget"]
    assert budget["n_target_steps"] == fixed["n_target_steps"]
    # the same budget from step 0: p_max until the budget is spent, then 0; no canary feedback needed
    front = run("budget_front").read_metrics()
    assert front["safe_budget"] == fixed["n_safe_steps"] == front["n_safe_steps"]
    steps = read_steps(run("budget_front").steps_path)
    safe_at = [i for i, r in enumerate(steps) if r["source"] == "safe"]
    assert safe_at, "the tiny Fixed 5% run drew no safe step: nothing to check"
    last_safe = safe_at[-1]
    assert {r["p"] for r in steps[: last_safe + 1]} == {base.controller.p_max}
    assert {r["p"] for r in steps[last_safe + 1 :]} <= {0.0}

    # the probability signal with the exact judge: the same run as canary, step for step
    def trace(method: str) -> list[tuple]:
        return [(r["step"], r["source"], r["p"]) for r in read_steps(run(method).steps_path)]

    assert trace("canary_probability") == trace("canary")
    assert [r["canary_risk"] for r in read_controller(run("canary_probability").controller_path)] == [
        r["canary_risk"] for r in read_controller(run("canary").controller_path)
    ]

    # P and PI: every controller row follows pi_update from the run's own r̂
    settings = base.controller
    kp, ki = proportional_gains(settings)
    for method, integral in (("canary_p", False), ("canary_pi", True)):
        state = 0.0
        rows = read_controller(run(method).controller_path)
        assert rows
        for row in rows:
            p, state = pi_update(row["risk_ema"], state, kp, ki if integral else 0.0, settings)
            assert row["p_after"] == pytest.approx(p)

    results = build_results(runs, tmp_path / "results")
    table2 = pd.read_csv(tmp_path / "results/table2.csv").set_index("method")
    assert {"canary_budget", "canary_probability", "canary_p", "canary_pi"} <= set(table2.index)
    assert table2.loc["canary_pi", "n_seeds"] == 1
    adaptive = set(results.frontier[results.frontier.kind == "adaptive"].method)
    assert {"canary_budget", "budget_front", "canary_p", "canary_pi", "canary_probability"} <= adaptive
    by_signal = json.loads((tmp_path / "results/correlation.json").read_text())["by_signal"]
    assert set(by_signal) == {"binary", "probability", "deficit"} and by_signal["binary"]["n"] == 8
    assert "Per canary risk signal" in results.summary

    # The tiny organism's canary risk stays 0, so nothing above moves p. With a scripted high risk the budget
    # binds (exactly Fixed 5%'s safe steps, then p = 0) and the PI rule raises p, through the same training loop.
    steps_of = {}
    for method in ("canary_budget", "canary_pi"):
        cfg = load_config([*PROFILE, ROOT / f"parameters/methods/{method}.yaml"], overrides)
        out = tmp_path / "scripted" / method
        train_from_config(cfg, out, canary_fn=ScriptedCanary([0.5], n_canary=10))
        steps_of[method] = read_steps(RunDir(out).steps_path)
    spent = [r for r in steps_of["canary_budget"] if r["source"] == "safe"]
    assert (
        len(spent) == fixed["n_safe_steps"] == RunDir(tmp_path / "scripted/canary_budget").read_metrics()["safe_budget"]
    )
    if spent:  # after the last safe step, every step is drawn with p = 0
        assert all(r["p"] == 0.0 for r in steps_of["canary_budget"] if r["step"] > spent[-1]["step"])
    assert max(r["p"] for r in steps_of["canary_pi"]) == pytest.approx(settings.p_max)
