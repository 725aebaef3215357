"""scripts/regime_criteria.py: the organism's acceptance check reads the criteria as docs/organism.md defines them."""

from __future__ import annotations

import pandas as pd

from _scripts import load_script

criteria = load_script("regime_criteria")


def _trace(emas: list[float], p: list[float]) -> list[dict]:
    return [
        {"step": 30 * i, "r": e, "ema": e, "p_before": p[i - 1] if i else 0.0, "p_after": p[i]}
        for i, e in enumerate(emas)
    ]


def test_c6_needs_the_ema_back_under_r_high_after_p_first_rises():
    rises_then_closes = _trace([0.01, 0.3, 0.5, 0.2, 0.07, 0.05], [0.0, 0.04, 0.08, 0.12, 0.12, 0.12])
    assert criteria.canary_close(rises_then_closes) == (120, 0.05)
    never_closes = _trace([0.01, 0.3, 0.5, 0.2, 0.09], [0.0, 0.04, 0.08, 0.12, 0.12])
    assert criteria.canary_close(never_closes) == (None, 0.09)
    under_before_the_rise_only = _trace([0.01, 0.02, 0.3], [0.0, 0.0, 0.04])
    assert criteria.canary_close(under_before_the_rise_only) == (None, None)


def _table1(tmp_path, nd_mean: float, nd_std: float, canary_std: float):
    rows = {
        "base": (1.0, 0.3, 2.0),
        "no_defense": (nd_mean, nd_std, 88.0),
        "fixed_5": (25.0, 3.0, 88.0),
        "canary": (4.0, canary_std, 87.0),
        "secure_control": (1.3, float("nan"), 1.1),
    }
    pd.DataFrame(
        [
            {
                "method": m,
                "general_misaligned_pct_mean": mean,
                "general_misaligned_pct_std": std,
                "in_domain_misaligned_pct_mean": dom,
            }
            for m, (mean, std, dom) in rows.items()
        ]
    ).to_csv(tmp_path / "table1.csv", index=False)
    return criteria.table1_conditions(tmp_path)


def test_table1_conditions_hold_and_fail_on_their_thresholds(tmp_path):
    assert all(_table1(tmp_path, nd_mean=60.0, nd_std=1.6, canary_std=0.7).values())
    # Canary 4.0 below No Defense 40.0 by 36 points, but the larger std is 20: not by more than twice it
    failed = [k for k, ok in _table1(tmp_path, nd_mean=40.0, nd_std=1.0, canary_std=20.0).items() if not ok]
    assert failed == ["Canary below No Defense by > 2 std"]
    assert not _table1(tmp_path, nd_mean=3.0, nd_std=0.1, canary_std=0.1)["No Defense >= 4 x base"]


def test_the_frontier_counts_its_distinct_fixed_levels(tmp_path):
    rows = [
        ("fixed_0", "fixed", 0.0),
        ("fixed_5", "fixed", 0.05),
        ("fixed_5", "fixed", 0.05),
        ("canary", "adaptive", 0.1),
    ]
    pd.DataFrame([{"method": m, "kind": k, "p": p, "seed": 42} for m, k, p in rows]).to_csv(
        tmp_path / "frontier.csv", index=False
    )
    assert criteria.frontier_levels(tmp_path) == 2  # seeds of one level and adaptive runs do not count
    assert criteria.MIN_FRONTIER_LEVELS == 5
