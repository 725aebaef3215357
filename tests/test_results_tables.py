"""Table 1, Table 2 and the correlation from synthetic run directories written here.

.venv/bin/pytest tests/test_results_tables.py -q
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from canary_lib.artifacts import CONTROLLER_COLUMNS, STEPS_COLUMNS, RunDir, write_csv_atomic
from canary_lib.results import (
    build_results,
    build_table1,
    build_table2,
    canary_general_correlation,
    collect_runs,
    controller_traces,
    format_mean_std,
    relative_change,
)


def write_synthetic_run(
    runs_dir: Path,
    method: str,
    seed: int,
    metrics: dict,
    risks: list[float] = (),
    p: float = 0.0,
    n_steps: int = 12,
    K: int = 4,
    trained: bool = True,
    evaluated: bool = True,
    delay_cycles: int = 5,
) -> Path:
    """A run directory with the files of the contract (docs/architecture.md), values chosen by the test."""
    run = RunDir(runs_dir / method / f"seed{seed}")
    run.path.mkdir(parents=True, exist_ok=True)
    config = {
        "seed": seed,
        "method": {"name": method, "delay_cycles": delay_cycles},
        "controller": {"r_low": 0.02, "r_high": 0.08},
    }
    run.config_path.write_text(yaml.safe_dump(config))
    if method != "base":
        steps = [
            {
                "step": t,
                "source": "safe" if t % 5 == 4 else "target",
                "p": p,
                "target_remaining": n_steps - t,
                "loss": 1.0 / (t + 1),
                "lr": 1e-4,
            }
            for t in range(n_steps)
        ]
        write_csv_atomic(run.steps_path, steps, STEPS_COLUMNS)
        ema, rows = 0.0, []
        for i, r in enumerate(risks):
            ema = 0.5 * r + 0.5 * ema
            rows.append(
                {
                    "step": i * K,
                    "canary_risk": r,
                    "risk_ema": ema,
                    "p_before": p,
                    "p_after": p,
                    "n_canary": 20,
                    "n_misaligned": round(20 * r),
                    "seconds": 0.1,
                }
            )
        write_csv_atomic(run.controller_path, rows, CONTROLLER_COLUMNS)
        metrics = {"avg_p": p, "n_steps": n_steps, "n_safe_steps": n_steps // 5, **metrics}
    run.update_metrics(**metrics)
    if trained and method != "base":
        run.mark_complete("training")
    if evaluated:
        run.mark_complete("eval")
    return run.path


def _m(gen: float, inc: float = 1.0, ind: float = 80.0, ind_inc: float = 5.0) -> dict:
    return {
        "general_misaligned_pct": gen,
        "general_incoherent_pct": inc,
        "in_domain_misaligned_pct": ind,
        "in_domain_incoherent_pct": ind_inc,
    }


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    runs = tmp_path / "runs" / "organism"
    seeds = (42, 123, 456)
    for seed, gen in zip(seeds, (2.0, 3.0, 4.0)):
        write_synthetic_run(runs, "base", seed, _m(gen))
    for seed, gen in zip(seeds, (18.0, 20.0, 22.0)):
        write_synthetic_run(runs, "no_defense", seed, _m(gen), risks=[0.1, 0.3, 0.4])
    for seed, gen in zip(seeds, (9.0, 10.0, 11.0)):
        write_synthetic_run(runs, "fixed_5", seed, _m(gen), risks=[0.1, 0.15, 0.2], p=0.05)
    # Table 2: means chosen so the relative changes against 5.0 are +36%, +59%, +9%, +45%.
    for method, gen, p in (
        ("canary", 5.0, 0.15),
        ("fixed_mean", 6.8, 0.15),
        ("delayed", 7.95, 0.045),
        ("shuffled", 5.45, 0.15),
        ("no_ema", 7.25, 0.056),
    ):
        for seed, delta in zip(seeds, (-0.1, 0.0, 0.1)):
            write_synthetic_run(runs, method, seed, _m(gen + delta), risks=[0.05, 0.1 + delta, 0.05], p=p)
    # Unfinished runs must be listed, never averaged in.
    write_synthetic_run(runs, "canary", 7, _m(99.0), risks=[0.9], evaluated=False)
    write_synthetic_run(runs, "no_ema", 8, _m(99.0), trained=False, evaluated=False)
    return runs


def test_table1_shows_the_control_row_only_when_its_runs_exist(runs_dir: Path) -> None:
    write_synthetic_run(runs_dir, "secure_control", 42, _m(2.5))
    table = build_table1(collect_runs(runs_dir)).set_index("method")
    assert list(table.index)[-1] == "secure_control"
    assert table.loc["secure_control", "Gen. %Mis."].startswith("2.50")


def test_table1_mean_std_over_finished_seeds(runs_dir: Path) -> None:
    table = build_table1(collect_runs(runs_dir)).set_index("method")
    assert list(table.index) == ["base", "no_defense", "fixed_5", "canary"]
    assert table.loc["no_defense", "Gen. %Mis."] == "20.00 ± 2.00"
    assert table.loc["fixed_5", "Avg p_t"] == "0.050 ± 0.000"
    assert table.loc["base", "Avg p_t"] == "—"  # the base model has no training steps
    assert table.loc["canary", "n_seeds"] == 3  # the unfinished seed 7 is left out
    assert table.loc["canary", "general_misaligned_pct_mean"] == pytest.approx(5.0)
    assert table.loc["canary", "general_misaligned_pct_std"] == pytest.approx(0.1)
    assert table.loc["base", "seeds"] == "42 123 456"


def test_table2_relative_change_as_the_paper_prints_it(runs_dir: Path) -> None:
    table = build_table2(collect_runs(runs_dir)).set_index("method")
    assert list(table.relative_change) == ["", "+36%", "+59%", "+9%", "+45%"]
    assert table.loc["fixed_mean", "Gen. %Mis."] == "6.80 ± 0.10 (+36%)"
    assert table.loc["delayed", "label"] == "Delayed (D=5)"
    assert table.loc["canary", "tests"] == "Reference"
    assert table.loc["delayed", "Avg p_t"] == "0.045 ± 0.000"


def test_relative_change_and_formatting_edge_cases() -> None:
    assert relative_change(1.365, 1.0) == "+37%"  # half away from zero, not banker's rounding
    assert relative_change(0.9, 1.0) == "-10%"
    assert relative_change(1.0, 0.0) == "n/a"
    assert relative_change(math.nan, 1.0) == "n/a"
    assert format_mean_std(5.0, math.nan) == "5.00"  # a single seed: no spread to print
    assert format_mean_std(math.nan, math.nan) == "—"


def test_correlation_is_per_run_mean_canary_risk_vs_general_misaligned(runs_dir: Path) -> None:
    runs = collect_runs(runs_dir)
    corr = canary_general_correlation(runs)
    trained = runs[(runs.method != "base") & runs.eval_complete]
    assert corr["n"] == len(trained) == 21
    expected = np.corrcoef(trained.canary_risk_mean, trained.general_misaligned_pct)[0, 1]
    assert corr["r"] == pytest.approx(expected)
    assert corr["r"] > 0.5  # no_defense has both the highest canary risk and the highest general %
    assert {p["method"] for p in corr["points"]} == {
        "no_defense",
        "fixed_5",
        "canary",
        "fixed_mean",
        "delayed",
        "shuffled",
        "no_ema",
    }
    assert "mean of the raw canary risk" in corr["x"]


def test_build_results_writes_tables_summary_and_lists_unfinished_runs(runs_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "results" / "organism"
    res = build_results(runs_dir, out)
    for name in ("runs.csv", "table1.csv", "table2.csv", "correlation.json", "summary.md"):
        assert (out / name).is_file(), name
    assert pd.read_csv(out / "table1.csv").shape[0] == 4
    assert json.loads((out / "correlation.json").read_text())["n"] == 21
    summary = (out / "summary.md").read_text()
    assert "| No Defense | 3 | 20.00 ± 2.00 |" in summary
    assert "canary/seed7: evaluation not complete" in summary
    assert "no_ema/seed8: training not complete" in summary
    assert "Pearson r =" in summary and "n = 21" in summary
    # seeds 7 and 8 have runs of canary / no_ema, so every other row of the tables lacks them: named, not hidden
    assert len(res.missing) == 16 and "base/seed7: no run directory" in res.missing
    assert "no_ema/seed7: no run directory" in res.missing and "canary/seed8: no run directory" in res.missing
    # with the sweep's seeds given, only the two unfinished runs are left out
    assert len(build_results(runs_dir, tmp_path / "given", seeds=[42, 123, 456]).missing) == 2


def test_rows_never_average_fewer_seeds_than_they_name(runs_dir: Path, tmp_path: Path) -> None:
    """Issue 25, case 4: a seed whose evaluation scored nothing, or whose directory is absent, is left out of
    n_seeds, the seed list and the mean, and named in the row and in summary.md."""
    import shutil

    write_synthetic_run(
        runs_dir,
        "fixed_5",
        123,
        {**_m(10.0), "general_misaligned_pct": None, "in_domain_misaligned_pct": None, "n_scored": 0},
    )
    shutil.rmtree(runs_dir / "no_defense" / "seed456")
    res = build_results(runs_dir, tmp_path / "out", seeds=[42, 123, 456])
    table = res.table1.set_index("method")
    assert table.loc["fixed_5", "n_seeds"] == 2 and table.loc["fixed_5", "seeds"] == "42 456"
    assert table.loc["fixed_5", "general_misaligned_pct_mean"] == pytest.approx(10.0)  # (9 + 11) / 2
    assert table.loc["fixed_5", "seeds_left_out"] == "123: evaluation scored no answers"
    assert (
        table.loc["no_defense", "n_seeds"] == 2 and table.loc["no_defense", "seeds_left_out"] == "456: no run directory"
    )
    assert table.loc["canary", "seeds_left_out"] == "7: evaluation not complete"  # its own unfinished run
    assert "n_canary_unscored" in res.runs.columns and "n_canary_unscored" in res.table1.columns
    assert sorted(res.frontier[res.frontier.p == 0.05].seed) == [42, 456]  # no frontier point without a score
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "fixed_5/seed123: evaluation scored no answers" in summary
    assert "no_defense/seed456: no run directory" in summary
    assert (
        "| No Defense | 2 | 19.00 ± 1.41 | 1.00 ± 0.00 | 80.00 ± 0.00 | 5.00 ± 0.00 | 0.000 ± 0.000 | "
        "456: no run directory |" in summary
    )


def test_controller_traces_for_figure2(runs_dir: Path) -> None:
    steps, controller = controller_traces(collect_runs(runs_dir), "canary")
    assert sorted(steps.seed.unique()) == [7, 42, 123, 456]  # trained runs, evaluated or not
    assert len(steps[steps.seed == 42]) == 12
    assert list(controller[controller.seed == 42].step) == [0, 4, 8]
    assert controller[controller.seed == 42].risk_ema.iloc[0] == pytest.approx(0.025)


def test_missing_runs_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run the sweep first"):
        collect_runs(tmp_path / "nope")


def test_build_results_writes_the_safe_data_frontier(tmp_path: Path) -> None:
    runs = tmp_path / "runs" / "organism"
    # fixed levels: realized safe share -> General %Mis. falls linearly from 40 (share 0.05) to 10 (share 0.20)
    for seed, offset in zip((42, 123, 456), (-1.0, 0.0, 1.0)):
        for method, n_safe, gen in (("no_defense", 0, 60.0), ("fixed_5", 5, 40.0), ("fixed_20", 20, 10.0)):
            write_synthetic_run(
                runs, method, seed, _m(gen + offset) | {"n_steps": 100, "n_safe_steps": n_safe}, risks=[0.1, 0.2]
            )
        # at share 0.10 the curve reads 30 + offset; the canary run is 5 points below it in every seed
        write_synthetic_run(
            runs, "canary", seed, _m(25.0 + offset) | {"n_steps": 100, "n_safe_steps": 10}, risks=[0.1, 0.05]
        )
    res = build_results(runs, tmp_path / "results")
    frontier = pd.read_csv(tmp_path / "results" / "frontier.csv")
    assert {"method", "kind", "p", "seed", "safe_share", "general_misaligned_pct"} <= set(frontier.columns)
    assert list(frontier.drop_duplicates("method").method) == ["fixed_0", "fixed_5", "fixed_20", "canary"]
    assert frontier[frontier.method == "canary"].safe_share.tolist() == [0.1, 0.1, 0.1]
    (comparison,) = res.frontier_comparisons
    assert comparison.method == "canary" and comparison.difference_mean == pytest.approx(-5.0)
    assert "## Safe-data frontier" in res.summary and "-5.00 points" in res.summary


def test_no_frontier_without_two_fixed_levels(runs_dir: Path, tmp_path: Path) -> None:
    # the fixture has No Defense and Fixed 5%, whose synthetic runs share one safe share: still two levels of p
    res = build_results(runs_dir, tmp_path / "results")
    assert set(res.frontier.method) >= {"fixed_0", "fixed_5", "canary"}
    only_canary = tmp_path / "only"
    write_synthetic_run(only_canary, "canary", 42, _m(5.0), risks=[0.1])
    res = build_results(only_canary, tmp_path / "results2")
    assert res.frontier.empty and not (tmp_path / "results2" / "frontier.csv").exists()
    assert "Safe-data frontier" not in res.summary


def test_beyond_paper_rows_join_table2_only_when_their_runs_exist(runs_dir: Path) -> None:
    assert "canary_pi" not in set(build_table2(collect_runs(runs_dir)).method)  # the paper's Table 2 unchanged
    for seed in (42, 123):
        write_synthetic_run(runs_dir, "canary_pi", seed, _m(6.0), risks=[0.05, 0.1], p=0.1)
    table = build_table2(collect_runs(runs_dir)).set_index("method")
    assert list(table.index)[:5] == ["canary", "fixed_mean", "delayed", "shuffled", "no_ema"]
    assert table.loc["canary_pi", "label"] == "PI controller" and table.loc["canary_pi", "relative_change"] == "+20%"


def test_correlation_per_signal_is_recomputed_from_canary_answers(tmp_path: Path) -> None:
    from canary_lib.artifacts import append_jsonl

    runs = tmp_path / "runs"
    # per run: (general %, answers of its two canary evaluations as (aligned, coherent))
    plan = {
        ("no_defense", 1): (30.0, [[(5, 95)] * 3 + [(95, 95)], [(5, 95)] * 2 + [(60, 95)] * 2]),
        ("fixed_5", 1): (20.0, [[(5, 95)] * 2 + [(95, 95)] * 2, [(5, 95), (60, 95), (95, 95), (95, 95)]]),
        ("canary", 1): (5.0, [[(95, 95)] * 4, [(5, 40)] + [(95, 95)] * 3]),
    }
    for (method, seed), (general, evaluations) in plan.items():
        path = write_synthetic_run(runs, method, seed, _m(general), risks=[0.0, 0.0])
        for step, answers in zip((0, 4), evaluations):
            append_jsonl(
                RunDir(path).canary_answers_path,
                [{"aligned": a, "coherent": c, "status": "scored", "step": step} for a, c in answers],
            )
    by_signal = canary_general_correlation(collect_runs(runs))["by_signal"]
    assert set(by_signal) == {"binary", "probability", "deficit"}
    binary_x = [(0.75 + 0.5) / 2, (0.5 + 0.25) / 2, 0.0]
    assert by_signal["binary"]["n"] == 3
    assert by_signal["binary"]["r"] == pytest.approx(np.corrcoef(binary_x, [30.0, 20.0, 5.0])[0, 1])
    assert by_signal["probability"]["r"] == pytest.approx(by_signal["binary"]["r"])  # point scores: the same
    deficit_x = [
        (0.95 * 3 + 0.05) / 4 / 2 + (0.95 * 2 + 0.4 * 2) / 4 / 2,
        (0.95 * 2 + 0.1) / 4 / 2 + (0.95 + 0.4 + 0.1) / 4 / 2,
        (0.05 + 0.05) / 2,
    ]
    assert by_signal["deficit"]["r"] == pytest.approx(np.corrcoef(deficit_x, [30.0, 20.0, 5.0])[0, 1])
