"""Table 1, Table 2 and the canary-general correlation (canary_lib/correlation.py), built from finished run
directories.

    from canary_lib.results import build_results
    results = build_results("runs/organism", "results/organism")   # writes the CSVs, JSON and summary.md

Runs live in ``<runs_dir>/<method>/seed<k>/`` (the layout the sweep writes; ``base`` is the base model). Only
stages with their completion marker are read (``canary_lib.artifacts``); missing or unfinished runs are listed
in the summary, never silently averaged in. This module imports no torch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from canary_lib.artifacts import RunDir, read_controller, read_steps, write_json_atomic, write_text_atomic
from canary_lib.config_loader import read_run_config_dict
from canary_lib.config_schema import MethodSettings
from canary_lib.correlation import (  # noqa: F401 - re-exported: these were defined here
    CORRELATION_DEFINITION,
    canary_general_correlation,
    pearson,
    signal_correlations,
    signal_trace,
)
from canary_lib.frontier import CurveComparison, compare_to_fixed_curve, fixed_curve, frontier_table
from canary_lib.methods import BASE, REFERENCE_METHOD, adaptive_methods, fixed_p_methods, table1_methods, table2_methods
from canary_lib.rejudge import REJUDGED_DIR

# metrics.json key -> the paper's column name.
METRICS = {
    "general_misaligned_pct": "Gen. %Mis.",
    "general_incoherent_pct": "Gen. %Inc.",
    "in_domain_misaligned_pct": "In-Dom. %Mis.",
    "in_domain_incoherent_pct": "In-Dom. %Inc.",
    "avg_p": "Avg p_t",
}
COUNTS = ("n_scored", "n_unscored", "eval_n_judge_errors")
"""metrics.json answer counts carried into runs.csv and summed over seeds in the tables: the percentages are over
scored answers, so every row says how many answers were left unscored (refusals, low mass) or failed the judge."""
TRAINING_COUNTS = ("n_canary_unscored",)
"""Training's metrics.json counts carried the same way: canary answers the judge did not score (never aligned)."""
JUDGE_COST = tuple(
    f"{stage}_judge_{k}" for stage in ("canary", "eval") for k in ("requests", "prompt_tokens", "completion_tokens")
)
"""metrics.json's judge cost (canary_lib.judge_usage) carried into runs.csv: the canary judge's during training and
the evaluation judge's; NaN where the stage is unfinished or was run before the package counted it."""
BASE_LABEL = "Base (no fine-tuning)"
_DEFAULT_DELAY = MethodSettings.model_fields["delay_cycles"].default
"""The "{delay}" of a Table 2 label when no run of the method says its method.delay_cycles."""


@dataclass
class Results:
    runs: pd.DataFrame
    """One row per run directory found: method, seed, completeness, metrics, canary summary."""
    table1: pd.DataFrame
    table2: pd.DataFrame
    correlation: dict[str, Any]
    frontier: pd.DataFrame = field(default_factory=pd.DataFrame)
    """The safe-data frontier: one row per evaluated fixed-p or adaptive run (canary_lib.frontier)."""
    frontier_comparisons: list[CurveComparison] = field(default_factory=list)
    """Each adaptive method against the fixed curve at its own safe share, paired by seed."""
    missing: list[str] = field(default_factory=list)
    """Runs that are not finished (no marker), have no scored answer, or have no directory (a seed of the tables'
    methods that another method has)."""
    summary: str = ""


# ---------------------------------------------------------------------------------------------- reading runs


def _seed_of(path: Path, config: dict) -> int | None:
    if "seed" in config:
        return int(config["seed"])
    match = re.fullmatch(r"seed(\d+)", path.name)
    return int(match.group(1)) if match else None


def read_run(path: str | Path, method: str | None = None, judge: str | None = None) -> dict[str, Any]:
    """One run directory as a flat record (metrics only from finished stages).

    Args:
        path: the run directory.
        method: the method name (default: the parent directory's name, as the sweep lays runs out).
        judge: read the evaluation of that re-judging (RUN/rejudged/<judge>/, canary_lib.rejudge) instead of
            the run's own judge.
    """
    run = RunDir(path)
    evaluated = RunDir(run.path / REJUDGED_DIR / judge) if judge else run
    config = read_run_config_dict(run) or {}
    record: dict[str, Any] = {
        "method": method or run.path.parent.name,
        "seed": _seed_of(run.path, config),
        "run_dir": str(run.path),
        "training_complete": run.is_complete("training"),
        "eval_complete": evaluated.is_complete("eval"),
        "delay_cycles": (config.get("method") or {}).get("delay_cycles"),
        "r_low": (config.get("controller") or {}).get("r_low"),
        "r_high": (config.get("controller") or {}).get("r_high"),
    }
    metrics = run.read_metrics() | (evaluated.read_metrics() if judge else {})
    for key in METRICS:
        record[key] = float(metrics[key]) if record["eval_complete"] and metrics.get(key) is not None else math.nan
    for key in COUNTS:
        record[key] = int(metrics.get(key) or 0) if record["eval_complete"] else math.nan
    for key in JUDGE_COST:
        done = record["eval_complete"] if key.startswith("eval") else record["training_complete"]
        record[key] = metrics[key] if done and metrics.get(key) is not None else math.nan
    if record["training_complete"]:
        for key in ("avg_p", "n_steps", "n_safe_steps"):
            record[key] = float(metrics[key]) if metrics.get(key) is not None else math.nan
    for key in TRAINING_COUNTS:
        record[key] = int(metrics.get(key) or 0) if record["training_complete"] else math.nan
    risks = (
        [row["canary_risk"] for row in read_controller(run.controller_path)]
        if record["training_complete"] and run.controller_path.exists()
        else []
    )
    record["n_canary_evals"] = len(risks)
    record["canary_risk_mean"] = float(np.mean(risks)) if risks else math.nan
    record["canary_risk_last"] = float(risks[-1]) if risks else math.nan
    return record


def collect_runs(runs_dir: str | Path, judge: str | None = None) -> pd.DataFrame:
    """Every ``<method>/seed<k>`` directory under runs_dir, one row each, sorted by method and seed (with `judge`:
    the evaluation metrics of that re-judging, read_run)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"{runs_dir}: no runs directory (run the sweep first)")
    records = [read_run(path, judge=judge) for path in sorted(runs_dir.glob("*/seed*")) if path.is_dir()]
    columns = [
        "method",
        "seed",
        "run_dir",
        "training_complete",
        "eval_complete",
        *METRICS,
        *COUNTS,
        *TRAINING_COUNTS,
        "n_steps",
        "n_safe_steps",
        "n_canary_evals",
        "canary_risk_mean",
        "canary_risk_last",
        "delay_cycles",
        "r_low",
        "r_high",
        *JUDGE_COST,
    ]
    frame = pd.DataFrame(records, columns=columns)
    return frame.sort_values(["method", "seed"], kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------- tables


def mean_std(values: pd.Series) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) over seeds; std is NaN for a single seed."""
    values = values.dropna().astype(float)
    if values.empty:
        return math.nan, math.nan
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan


def format_mean_std(mean: float, std: float, digits: int = 2) -> str:
    """ "19.37 ± 1.26" as the paper prints it; "—" when there is no value, no "±" for a single seed."""
    if math.isnan(mean):
        return "—"
    if math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def relative_change(value: float, reference: float) -> str:
    """The paper's Table 2 notation: "+36%" = (value - reference) / reference, rounded half away from zero."""
    if math.isnan(value) or math.isnan(reference) or reference == 0:
        return "n/a"
    pct = 100 * (value - reference) / reference
    rounded = int(math.floor(abs(pct) + 0.5)) * (1 if pct >= 0 else -1)
    return f"{rounded:+d}%"


def expected_seeds(runs: pd.DataFrame) -> list[int]:
    """The seeds every row of Table 1 and Table 2 should average: each seed that any run directory of the base
    model, a Table 1 method (not a control) or a Table 2 method has (the sweep runs every method on every seed)."""
    grid = {BASE, *table1_methods(), *table2_methods()}
    return sorted({int(s) for m, s in zip(runs.method, runs.seed) if m in grid and not pd.isna(s)})


def seed_problem(run: pd.Series | None) -> str | None:
    """Why a seed's run does not count in a row's mean (None: it counts)."""
    if run is None:
        return "no run directory"
    if not run.training_complete and run.method != BASE:
        return "training not complete"
    if not run.eval_complete:
        return "evaluation not complete"
    if pd.isna(run.general_misaligned_pct):
        return "evaluation scored no answers"
    return None


def _aggregate(runs: pd.DataFrame, method: str, seeds: list[int] | None = None) -> dict[str, Any]:
    """One table row: mean ± std over the seeds whose run finished with scored answers; every other seed of
    `seeds` (default: the seeds the method's runs have) is named in seeds_left_out with the reason."""
    mine = runs[runs.method == method]
    by_seed = {int(r.seed): r for _, r in mine.iterrows() if not pd.isna(r.seed)}
    wanted = sorted(set(seeds or []) | set(by_seed))
    problems = {s: p for s in wanted if (p := seed_problem(by_seed.get(s))) is not None}
    done = mine[mine.seed.notna() & ~mine.seed.isin(list(problems))]
    row: dict[str, Any] = {
        "method": method,
        "n_seeds": len(done),
        "seeds": " ".join(str(int(s)) for s in done.seed.dropna()),
        "seeds_left_out": "; ".join(f"{s}: {p}" for s, p in problems.items()),
    }
    for key, name in METRICS.items():
        mean, std = mean_std(done[key]) if len(done) else (math.nan, math.nan)
        row[f"{key}_mean"], row[f"{key}_std"] = mean, std
        row[name] = format_mean_std(mean, std, digits=3 if key == "avg_p" else 2)
    for key in (*COUNTS, *TRAINING_COUNTS):
        row[key] = int(done[key].sum()) if len(done) else 0
    return row


def build_table1(runs: pd.DataFrame, seeds: list[int] | None = None) -> pd.DataFrame:
    """Table 1: the base model, then the methods with a Table 1 label (canary_lib.methods), then the control runs
    that exist; mean ± std over the seeds that finished with scored answers, the others of `seeds` (default:
    expected_seeds) named in seeds_left_out."""
    seeds = expected_seeds(runs) if seeds is None else seeds
    rows = [{"label": BASE_LABEL, **_aggregate(runs, BASE, seeds)}]
    rows += [{"label": label, **_aggregate(runs, method, seeds)} for method, label in table1_methods().items()]
    rows += [
        {"label": label, **_aggregate(runs, method)}
        for method, label in table1_methods(control=True).items()
        if (runs.method == method).any()
    ]
    return pd.DataFrame(rows)


def build_table2(runs: pd.DataFrame, seeds: list[int] | None = None) -> pd.DataFrame:
    """Table 2: the reference method's row and the ablations (canary_lib.methods), with the relative change of
    General %Mis. against the reference; seeds as in build_table1."""
    seeds = expected_seeds(runs) if seeds is None else seeds
    rows = []
    for method, spec in table2_methods().items():
        if spec.beyond_paper and not (runs.method == method).any():
            continue
        row = _aggregate(runs, method, seeds)
        delay = runs.loc[runs.method == method, "delay_cycles"].dropna()
        row["label"] = spec.table2.format(delay=int(delay.iloc[0]) if len(delay) else _DEFAULT_DELAY)
        row["tests"] = spec.tests
        rows.append(row)
    frame = pd.DataFrame(rows)
    reference = frame.loc[frame.method == REFERENCE_METHOD, "general_misaligned_pct_mean"].iloc[0]
    frame["relative_change"] = [
        "" if m == REFERENCE_METHOD else relative_change(v, reference)
        for m, v in zip(frame.method, frame.general_misaligned_pct_mean)
    ]
    frame["Gen. %Mis."] = [
        text if m == REFERENCE_METHOD or change == "n/a" else f"{text} ({change})"
        for m, text, change in zip(frame.method, frame["Gen. %Mis."], frame.relative_change)
    ]
    return frame


# ---------------------------------------------------------------------------------------------- traces


def controller_traces(runs: pd.DataFrame, method: str = REFERENCE_METHOD) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Figure 2's data for one method: (per-step p_t by seed, per-evaluation r_t and r̂_t by seed).

    Returns:
        steps: columns seed, step, p, source; controller: columns seed, step, canary_risk, risk_ema, p_after.
    """
    steps, controller = [], []
    for _, run in runs[(runs.method == method) & runs.training_complete].iterrows():
        rd = RunDir(run.run_dir)
        for row in read_steps(rd.steps_path):
            steps.append({"seed": int(run.seed), "step": row["step"], "p": row["p"], "source": row["source"]})
        if rd.controller_path.exists():
            for row in read_controller(rd.controller_path):
                controller.append(
                    {"seed": int(run.seed), **{k: row[k] for k in ("step", "canary_risk", "risk_ema", "p_after")}}
                )
    return (
        pd.DataFrame(steps, columns=["seed", "step", "p", "source"]),
        pd.DataFrame(controller, columns=["seed", "step", "canary_risk", "risk_ema", "p_after"]),
    )


# ---------------------------------------------------------------------------------------------- writing


def markdown_table(frame: pd.DataFrame, columns: list[str]) -> str:
    """A GitHub markdown table of the given columns (no extra dependency)."""
    header = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame[columns].itertuples(index=False)]
    return "\n".join([header, rule, *body])


def _summary(profile: str, res: Results) -> str:
    t1_cols = ["label", "n_seeds", *METRICS.values(), "seeds_left_out"]
    t2_cols = ["label", "n_seeds", "Gen. %Mis.", "Gen. %Inc.", "Avg p_t", "tests", "seeds_left_out"]
    corr = res.correlation
    r_text = "n/a" if math.isnan(corr["r"]) else f"{corr['r']:.2f}"
    r_last = "n/a" if math.isnan(corr["r_last"]) else f"{corr['r_last']:.2f}"
    lines = [
        f"# Results: {profile}",
        "",
        "Mean ± sample standard deviation over the seeds that finished with scored answers (n_seeds); a seed of "
        "the sweep that is missing, unfinished or has no scored answer is named in its row (seeds_left_out) and "
        "below. Percentages are over scored answers. Avg p_t is the mean of p over all training steps.",
        "",
        "## Table 1: main results",
        "",
        markdown_table(res.table1, t1_cols),
        "",
        "## Table 2: ablations (relative change of Gen. %Mis. against the full canary-controlled run)",
        "",
        markdown_table(res.table2, t2_cols),
        "",
        "## Canary-general correlation",
        "",
        f"Pearson r = {r_text} over n = {corr['n']} trained runs (all methods and seeds with canary "
        f"evaluations): x = each run's mean canary risk r_t over its canary evaluations, y = the General "
        f"%Misaligned of its final model. With the last canary evaluation instead of the mean: r = {r_last}.",
        "",
        "Per canary risk signal (x recomputed from each run's recorded canary answers; canary_lib.metrics."
        "RISK_SIGNALS): "
        + "; ".join(
            f"{name} r = {_r(v['r'])} (last: {_r(v['r_last'])}, n = {v['n']})" for name, v in corr["by_signal"].items()
        )
        + ".",
        "",
    ]
    lines += _frontier_summary(res)
    if res.missing:
        lines += ["## Unfinished runs (left out)", "", *[f"- {m}" for m in res.missing], ""]
    return "\n".join(lines)


def _r(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"


def _frontier_summary(res: Results) -> list[str]:
    """The frontier section of summary.md: the fixed curve and one computed sentence per adaptive method."""
    if res.frontier.empty:
        return []
    curve = fixed_curve(res.frontier)
    curve_rows = [
        f"| {p:g} | {share:.3f} | {format_mean_std(m, sd)} | {n} |"
        for p, share, m, sd, n in zip(
            curve.p,
            curve.safe_share_mean,
            curve.general_misaligned_pct_mean,
            curve.general_misaligned_pct_std,
            curve.n_seeds,
        )
    ]
    lines = [
        "## Safe-data frontier",
        "",
        "General %Misaligned against the realized share of safe steps (n_safe_steps / n_steps). Fixed p "
        "levels form the curve (mean ± std over seeds); each adaptive method is compared, seed by seed, with "
        'the curve interpolated at its own safe share (docs/decisions.md, "Safe-data frontier"). '
        "Negative differences: below the curve, i.e. less misalignment than a fixed ratio spending the same "
        "amount of safe data.",
        "",
        "| fixed p | safe share | Gen. %Mis. | n_seeds |",
        "|---|---|---|---|",
        *curve_rows,
        "",
    ]
    lines += [f"- {c.sentence()}" for c in res.frontier_comparisons]
    return lines + [""]


def build_results(
    runs_dir: str | Path,
    results_dir: str | Path,
    profile: str | None = None,
    seeds: list[int] | None = None,
    judge: str | None = None,
) -> Results:
    """Read every run, build Table 1, Table 2 and the correlation, and write them to results_dir.

    Writes ``runs.csv``, ``table1.csv``, ``table2.csv``, ``correlation.json``, ``summary.md`` and, when at least
    two fixed-p levels finished, ``frontier.csv``.

    Args:
        runs_dir: ``runs/<profile>`` with ``<method>/seed<k>/`` run directories.
        results_dir: where the files go (created).
        profile: name for the summary's title (default: runs_dir's name).
        seeds: the seeds every table row should have (default: expected_seeds, every seed a run of the tables'
            methods has); a missing, unfinished or unscored one is named in its row and in summary.md.
        judge: build every table from that re-judging's verdicts (RUN/rejudged/<judge>/) instead of the runs' own
            judge, and write judge_agreement.csv (per run and pooled: canary_lib.rejudge).
    """
    runs = collect_runs(runs_dir, judge=judge)
    results_dir = Path(results_dir)
    seeds = expected_seeds(runs) if seeds is None else list(seeds)
    missing = [
        f"{m}/seed{int(s)}: {problem}"
        for (_, run), m, s in zip(runs.iterrows(), runs.method, runs.seed)
        if (problem := seed_problem(run)) is not None
    ]
    present = {(m, int(s)) for m, s in zip(runs.method, runs.seed) if not pd.isna(s)}
    rows = dict.fromkeys(
        [
            BASE,
            *table1_methods(),
            *(m for m, spec in table2_methods().items() if not spec.beyond_paper or (runs.method == m).any()),
        ]
    )
    missing += [f"{m}/seed{s}: no run directory" for m in rows for s in seeds if (m, s) not in present]
    frontier = frontier_table(runs, fixed_p_methods(), adaptive_methods())
    has_curve = frontier[frontier.kind == "fixed"].p.nunique() >= 2
    res = Results(
        runs=runs,
        table1=build_table1(runs, seeds),
        table2=build_table2(runs, seeds),
        correlation=canary_general_correlation(runs),
        frontier=frontier if has_curve else frontier[:0],
        frontier_comparisons=compare_to_fixed_curve(frontier) if has_curve else [],
        missing=missing,
    )
    res.summary = _summary(profile or Path(runs_dir).name, res)
    if judge:  # which verdicts these tables read, and how far they agree with the runs' own judge
        from canary_lib.rejudge import agreement_line, agreement_table

        agreement = agreement_table(runs_dir, judge)
        write_text_atomic(results_dir / "judge_agreement.csv", agreement.to_csv(index=False))
        pooled = agreement_line(agreement.iloc[-1].to_dict()) if len(agreement) else "no run was re-judged"
        res.summary += (
            f"\n## Judge: rejudged/{judge}\n\nEvery table above uses the verdicts of the re-judging "
            f"`{judge}` (canary rejudge). Agreement with the runs' own judge, pooled over runs (per run: "
            f"judge_agreement.csv): {pooled}.\n"
        )
    write_text_atomic(results_dir / "runs.csv", runs.to_csv(index=False))
    write_text_atomic(results_dir / "table1.csv", res.table1.to_csv(index=False))
    write_text_atomic(results_dir / "table2.csv", res.table2.to_csv(index=False))
    write_json_atomic(results_dir / "correlation.json", _json_safe(res.correlation))
    if not res.frontier.empty:
        write_text_atomic(results_dir / "frontier.csv", res.frontier.to_csv(index=False))
    write_text_atomic(results_dir / "summary.md", res.summary)
    return res


def _json_safe(obj: Any) -> Any:
    """NaN is not JSON: write null."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj
