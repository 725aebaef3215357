"""The canary-general correlation: does a run's canary risk predict its final General %Misaligned?

    from canary_lib.correlation import canary_general_correlation
    correlation = canary_general_correlation(runs)     # runs: canary_lib.results.collect_runs(...)

One point per trained run (method x seed); CORRELATION_DEFINITION says exactly what is correlated, and the same
correlation is recomputed per risk signal (canary_lib.metrics.RISK_SIGNALS) from each run's canary answers.
canary_lib/results.py writes it as correlation.json. This module imports no torch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from canary_lib.artifacts import RunDir, read_jsonl
from canary_lib.metrics import RISK_SIGNALS, canary_risk

CORRELATION_DEFINITION = {
    "x": "canary_risk_mean: mean of the raw canary risk r_t (Eq. 1) over all canary evaluations of a run "
    "(controller.csv, column canary_risk)",
    "y": "general_misaligned_pct: General %Misaligned of the run's final model (metrics.json)",
    "unit": "one trained run (method x seed) with canary evaluations and a finished evaluation; "
    "the base model has no canary trace and is left out",
    "statistic": "Pearson r over runs (numpy.corrcoef); NaN with fewer than 3 runs or a constant variable",
    "secondary": "r_last: the same with the run's last canary evaluation (canary_risk_last) instead of the mean",
    "by_signal": "r and r_last with x recomputed from the run's canary answers under each risk signal "
    "(canary_lib.metrics.RISK_SIGNALS), whichever signal its controller acted on",
}


def pearson(x: list[float] | np.ndarray, y: list[float] | np.ndarray) -> float:
    """Pearson r; NaN with fewer than 3 pairs or when either variable is constant."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def signal_trace(run_dir: str | Path, signal: str) -> list[float]:
    """A run's canary risk under `signal`, one value per canary evaluation, recomputed from its recorded canary
    answers (canary_answers.jsonl), whichever signal its controller acted on."""
    by_step: dict[int, list[dict]] = {}
    for record in read_jsonl(RunDir(run_dir).canary_answers_path):
        by_step.setdefault(int(record["step"]), []).append(record)
    return [canary_risk(rows, signal) for _, rows in sorted(by_step.items())]


def signal_correlations(usable: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """The canary-general correlation once per risk signal (canary_lib.metrics.RISK_SIGNALS): x = the mean of the
    run's signal over its canary evaluations, recomputed from its canary answers; same runs and y as `r`."""
    out = {}
    for signal in RISK_SIGNALS:
        x, x_last, y = [], [], []
        for run_dir, general in zip(usable.run_dir, usable.general_misaligned_pct):
            values = signal_trace(run_dir, signal) if RunDir(run_dir).canary_answers_path.exists() else []
            if values:
                x.append(float(np.mean(values)))
                x_last.append(values[-1])
                y.append(general)
        out[signal] = {"n": len(x), "r": pearson(x, y), "r_last": pearson(x_last, y)}
    return out


def canary_general_correlation(runs: pd.DataFrame) -> dict[str, Any]:
    """Pearson r between each run's mean canary risk and its final General %Misaligned (see CORRELATION_DEFINITION),
    and the same per risk signal (by_signal).

    Returns:
        The definition, n, r, r_last, by_signal and the (method, seed, x, y) points used.
    """
    usable = runs[runs.eval_complete & (runs.n_canary_evals > 0) & runs.general_misaligned_pct.notna()]
    points = [
        {"method": m, "seed": int(s), "canary_risk_mean": x, "canary_risk_last": xl, "general_misaligned_pct": y}
        for m, s, x, xl, y in zip(
            usable.method, usable.seed, usable.canary_risk_mean, usable.canary_risk_last, usable.general_misaligned_pct
        )
    ]
    return {
        **CORRELATION_DEFINITION,
        "n": len(points),
        "r": pearson(usable.canary_risk_mean, usable.general_misaligned_pct),
        "r_last": pearson(usable.canary_risk_last, usable.general_misaligned_pct),
        "by_signal": signal_correlations(usable),
        "points": points,
    }
