"""The safe-data frontier: fixed runs as a curve, adaptive methods compared with it at their own safe share."""

import math

import pandas as pd
import pytest

from canary_lib.frontier import compare_to_fixed_curve, fixed_curve, frontier_method_name, frontier_table


def runs_frame(rows):
    base = {"eval_complete": True, "general_incoherent_pct": 5.0}
    return pd.DataFrame([{**base, "run_dir": f"runs/{r['method']}/seed{r['seed']}", **r} for r in rows])


def fixed_rows(seed, offset=0.0):
    # fixed p -> (steps, safe steps, General %Mis.): misalignment falls linearly with the realized safe share
    levels = {"no_defense": (0.0, 100, 0, 60.0), "fixed_5": (0.05, 100, 5, 40.0), "fixed_20": (0.2, 100, 20, 10.0)}
    return [
        {"method": m, "seed": seed, "n_steps": n, "n_safe_steps": s, "general_misaligned_pct": y + offset}
        for m, (_, n, s, y) in levels.items()
    ]


FIXED_P = {"no_defense": 0.0, "fixed_5": 0.05, "fixed_20": 0.2}


def test_names_of_fixed_levels():
    assert [frontier_method_name(p) for p in (0, 0.025, 0.05, 0.1, 0.15, 0.2)] == [
        "fixed_0",
        "fixed_2.5",
        "fixed_5",
        "fixed_10",
        "fixed_15",
        "fixed_20",
    ]


def test_table_has_one_row_per_finished_run_and_the_realized_share():
    rows = fixed_rows(42) + [
        {"method": "canary", "seed": 42, "n_steps": 200, "n_safe_steps": 25, "general_misaligned_pct": 20.0},
        {
            "method": "canary",
            "seed": 123,
            "n_steps": 10,
            "n_safe_steps": 1,
            "general_misaligned_pct": math.nan,
            "eval_complete": False,
        },
        {"method": "delayed", "seed": 42, "n_steps": 100, "n_safe_steps": 2, "general_misaligned_pct": 50.0},
    ]
    table = frontier_table(runs_frame(rows), FIXED_P, adaptive=["canary"])
    assert list(table.method) == ["fixed_0", "fixed_5", "fixed_20", "canary"]  # unfinished and unlisted left out
    assert list(table.kind) == ["fixed"] * 3 + ["adaptive"]
    assert table.loc[table.method == "canary", "safe_share"].item() == 0.125
    assert table.loc[table.method == "fixed_20", "p"].item() == 0.2


def test_adaptive_method_compared_seed_by_seed_at_its_own_share():
    rows = fixed_rows(42) + fixed_rows(123, offset=10.0) + fixed_rows(456, offset=-5.0)
    # per seed: the curve through (0, 60+o), (0.05, 40+o), (0.2, 10+o); canary at share 0.1 -> curve 30 + o
    rows += [
        {"method": "canary", "seed": s, "n_steps": 100, "n_safe_steps": 10, "general_misaligned_pct": 30 + o + d}
        for s, o, d in ((42, 0.0, -2.0), (123, 10.0, -4.0), (456, -5.0, -3.0))
    ]
    frontier = frontier_table(runs_frame(rows), FIXED_P, adaptive=["canary"])
    [cmp] = compare_to_fixed_curve(frontier)
    assert cmp.per_seed == pytest.approx({42: -2.0, 123: -4.0, 456: -3.0})
    assert cmp.difference_mean == pytest.approx(-3.0)
    half = 4.303 * 1.0 / math.sqrt(3)  # std of (-2, -4, -3) is 1; t(0.975, 2 dof) = 4.303 in printed tables
    assert (cmp.ci_low, cmp.ci_high) == pytest.approx((-3.0 - half, -3.0 + half), abs=1e-3)
    assert cmp.curve_at_share_mean == pytest.approx((30 + 40 + 25) / 3)
    assert "below the fixed curve" in cmp.sentence() and "42: -2.00" in cmp.sentence()


def test_a_share_outside_the_curve_is_not_extrapolated():
    rows = fixed_rows(42) + [
        {"method": "canary", "seed": 42, "n_steps": 100, "n_safe_steps": 30, "general_misaligned_pct": 5.0}
    ]
    [cmp] = compare_to_fixed_curve(frontier_table(runs_frame(rows), FIXED_P, adaptive=["canary"]))
    assert cmp.outside == [42] and cmp.per_seed == {} and "no comparison" in cmp.sentence()


def test_fixed_curve_means_over_seeds():
    rows = fixed_rows(42) + fixed_rows(123, offset=10.0)
    curve = fixed_curve(frontier_table(runs_frame(rows), FIXED_P, adaptive=[]))
    assert list(curve.p) == [0.0, 0.05, 0.2]
    assert list(curve.general_misaligned_pct_mean) == [65.0, 45.0, 15.0]
    assert list(curve.n_seeds) == [2, 2, 2]


def test_a_share_between_distant_fixed_levels_is_flagged_and_a_close_pair_is_not():
    # share 0.1 lies between fixed 5% and fixed 20%: 0.15 apart, more than COARSE_GAP
    rows = fixed_rows(42) + [
        {"method": "canary", "seed": 42, "n_steps": 100, "n_safe_steps": 10, "general_misaligned_pct": 25.0}
    ]
    [cmp] = compare_to_fixed_curve(frontier_table(runs_frame(rows), FIXED_P, adaptive=["canary"]))
    assert cmp.bracket == (0.05, 0.2) and cmp.coarse
    assert "straight line between fixed p = 0.05 and 0.2" in cmp.sentence()
    # share 0.03 lies between p = 0 and 0.05 (0.05 apart: not coarse), also exactly on a level
    for safe_steps, bracket in ((3, (0.0, 0.05)), (5, (0.0, 0.05)), (0, (0.0, 0.05))):
        rows = fixed_rows(42) + [
            {"method": "canary", "seed": 42, "n_steps": 100, "n_safe_steps": safe_steps, "general_misaligned_pct": 45.0}
        ]
        [cmp] = compare_to_fixed_curve(frontier_table(runs_frame(rows), FIXED_P, adaptive=["canary"]))
        assert cmp.bracket == bracket and not cmp.coarse and "Caution" not in cmp.sentence()


@pytest.mark.parametrize("n_seeds, quantile", [(3, 4.303), (11, 2.228), (12, 2.201), (31, 2.042)])
def test_interval_uses_the_t_quantile_for_any_number_of_seeds(n_seeds, quantile):
    # 11 or more seeds once fell back to the normal 1.96: intervals 12% too narrow at 10 degrees of freedom
    seeds = list(range(1, n_seeds + 1))
    deltas = [(-1.0 if s % 2 else -5.0) + 0.1 * s for s in seeds]
    rows = [r for s in seeds for r in fixed_rows(s)]
    rows += [
        {"method": "canary", "seed": s, "n_steps": 100, "n_safe_steps": 10, "general_misaligned_pct": 30 + d}
        for s, d in zip(seeds, deltas)
    ]
    [cmp] = compare_to_fixed_curve(frontier_table(runs_frame(rows), FIXED_P, adaptive=["canary"]))
    mean = sum(deltas) / n_seeds
    std = math.sqrt(sum((d - mean) ** 2 for d in deltas) / (n_seeds - 1))
    half = quantile * std / math.sqrt(n_seeds)  # printed t tables, 3 decimals
    assert cmp.n_seeds == n_seeds and cmp.difference_mean == pytest.approx(mean)
    assert (cmp.ci_low, cmp.ci_high) == pytest.approx((mean - half, mean + half), rel=1e-3)
    assert cmp.ci_high - cmp.ci_low > 2 * 1.96 * std / math.sqrt(n_seeds) * 1.04  # wider than the normal's
