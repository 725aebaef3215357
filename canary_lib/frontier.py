"""The safe-data frontier: general misalignment against the share of safe steps actually taken.

Fixed-p runs trace a curve (one point per p and seed); each adaptive method is compared with that curve at its
own realized safe share, seed by seed. This separates *how much* safe data a method uses from *when* it uses
it: a method below the curve does better than a fixed ratio spending the same amount.

    frontier = frontier_table(runs, fixed_p={"fixed_5": 0.05, ...}, adaptive=["canary", ...])
    comparison = compare_to_fixed_curve(frontier)      # one row per adaptive method

Pure pandas/numpy, no torch. The choices (realized share, per-seed interpolation, the interval) are explained
in docs/decisions.md, "Safe-data frontier".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

FRONTIER_COLUMNS = [
    "method",
    "kind",
    "p",
    "seed",
    "safe_share",
    "general_misaligned_pct",
    "general_incoherent_pct",
    "run_dir",
]
COARSE_GAP = 0.05
"""Fixed levels further apart than this around an adaptive run's share make the interpolated curve unreliable:
misalignment falls convexly with p, so a straight line across a wide gap overstates the curve (measured on the
organism: 3 levels put Canary 2.0 points below a curve that 6 levels put it 0.8 above; docs/decisions.md)."""


def t_975(dof: int) -> float:
    """The two-sided 95% Student t quantile at `dof` degrees of freedom (n seeds - 1), for any dof >= 1
    (a table that fell back to the normal 1.96 made intervals over 11 seeds 12% too narrow)."""
    return float(stats.t.ppf(0.975, dof))


def frontier_method_name(p: float) -> str:
    """The frontier's name of the fixed level p (p = 0 is the No Defense schedule): "fixed_0", "fixed_2.5", ..."""
    return f"fixed_{100 * p:g}"


def frontier_table(runs: pd.DataFrame, fixed_p: dict[str, float], adaptive: list[str]) -> pd.DataFrame:
    """One row per evaluated run of a fixed level or an adaptive method (columns FRONTIER_COLUMNS).

    Args:
        runs: results.collect_runs' table (method, seed, eval_complete, n_steps, n_safe_steps, metrics).
        fixed_p: run-directory method name -> its constant p (include the p = 0 run, No Defense).
        adaptive: method names plotted as points against the fixed curve.
    """
    rows = []
    scored = runs.eval_complete & runs.general_misaligned_pct.notna()  # a seed without scored answers: no point
    for method, group in runs[scored].groupby("method", sort=False):
        if method in fixed_p:
            kind, p, name = "fixed", fixed_p[method], frontier_method_name(fixed_p[method])
        elif method in adaptive:
            kind, p, name = "adaptive", math.nan, method
        else:
            continue
        for run in group.itertuples():
            rows.append(
                {
                    "method": name,
                    "kind": kind,
                    "p": p,
                    "seed": int(run.seed),
                    "safe_share": run.n_safe_steps / run.n_steps,
                    "general_misaligned_pct": run.general_misaligned_pct,
                    "general_incoherent_pct": run.general_incoherent_pct,
                    "run_dir": run.run_dir,
                }
            )
    frame = pd.DataFrame(rows, columns=FRONTIER_COLUMNS)
    order = {"fixed": 0, "adaptive": 1}
    return frame.sort_values(
        ["kind", "p", "method", "seed"], key=lambda c: c.map(order) if c.name == "kind" else c, kind="stable"
    ).reset_index(drop=True)


def fixed_curve(frontier: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds of each fixed level: p, safe_share_mean, general_misaligned_pct_mean/_std, n_seeds."""
    fixed = frontier[frontier.kind == "fixed"]
    curve = fixed.groupby("p").agg(
        safe_share_mean=("safe_share", "mean"),
        general_misaligned_pct_mean=("general_misaligned_pct", "mean"),
        general_misaligned_pct_std=("general_misaligned_pct", "std"),
        n_seeds=("seed", "count"),
    )
    return curve.reset_index()


@dataclass(frozen=True)
class CurveComparison:
    method: str
    n_seeds: int
    safe_share_mean: float
    general_misaligned_pct_mean: float
    curve_at_share_mean: float
    """The fixed curve interpolated at each seed's safe share, averaged over seeds."""
    difference_mean: float
    """Mean over seeds of (method - curve at its share), in percentage points; negative = below the curve."""
    ci_low: float
    ci_high: float
    """95% Student t interval of the per-seed differences (NaN with one seed)."""
    per_seed: dict[int, float]
    outside: list[int]
    """Seeds whose safe share lies outside the range of their fixed runs' shares (no interpolation there)."""
    bracket: tuple[float, float] | None = None
    """The widest pair of neighbouring fixed levels (p) that any seed's share was interpolated between."""

    @property
    def coarse(self) -> bool:
        return self.bracket is not None and self.bracket[1] - self.bracket[0] > COARSE_GAP + 1e-12

    def sentence(self) -> str:
        """One line for summary.md."""
        if not self.per_seed:
            return f"{self.method}: no seed lies inside the fixed curve's range of safe shares; no comparison."
        seeds = ", ".join(f"{s}: {d:+.2f}" for s, d in self.per_seed.items())
        interval = (
            "" if math.isnan(self.ci_low) else f", 95% t-interval over seeds [{self.ci_low:+.2f}, {self.ci_high:+.2f}]"
        )
        where = (
            ("below" if self.ci_high < 0 else "above" if self.ci_low > 0 else "not distinguishable from")
            if not math.isnan(self.ci_low)
            else "compared with"
        )
        skipped = f"; seeds outside the curve's range: {self.outside}" if self.outside else ""
        bracket = self.bracket  # not None when coarse
        caveat = (
            f" Caution: the curve is a straight line between fixed p = {bracket[0]:g} and "
            f"{bracket[1]:g} there, which overstates a convex curve; run fixed levels in between "
            f"before reading this difference."
            if self.coarse and bracket is not None
            else ""
        )
        return (
            f"{self.method}: {self.general_misaligned_pct_mean:.2f}% general misaligned at a mean safe share "
            f"of {self.safe_share_mean:.3f}, against {self.curve_at_share_mean:.2f}% for the fixed curve at the "
            f"same shares: a difference of {self.difference_mean:+.2f} points (per seed {seeds}{interval}), "
            f"{where} the fixed curve{skipped}.{caveat}"
        )


def compare_to_fixed_curve(frontier: pd.DataFrame) -> list[CurveComparison]:
    """Each adaptive method against the fixed curve, paired by seed.

    For seed s, the curve is the piecewise-linear interpolation through that seed's fixed runs (realized safe
    share -> General %Mis.), read at the adaptive run's own realized share. Pairing by seed keeps the data order
    and sampling seeds common to both sides of the difference.
    """
    fixed = frontier[frontier.kind == "fixed"]
    out = []
    for method, runs in frontier[frontier.kind == "adaptive"].groupby("method", sort=False):
        per_seed, curve_values, shares, values, outside = {}, [], [], [], []
        bracket: tuple[float, float] | None = None
        for run in runs.itertuples():
            curve = fixed[fixed.seed == run.seed].sort_values("safe_share")
            xs, ys = curve.safe_share.to_numpy(), curve.general_misaligned_pct.to_numpy()
            if len(xs) < 2 or not xs[0] <= run.safe_share <= xs[-1]:
                outside.append(int(run.seed))
                continue
            right = min(int(np.searchsorted(xs, run.safe_share, side="left")), len(xs) - 1)
            ps = curve.p.to_numpy()
            seed_bracket = (float(ps[max(right - 1, 0)]), float(ps[max(right, 1)]))
            if bracket is None or seed_bracket[1] - seed_bracket[0] > bracket[1] - bracket[0]:
                bracket = seed_bracket
            at_share = float(np.interp(run.safe_share, xs, ys))
            per_seed[int(run.seed)] = run.general_misaligned_pct - at_share
            curve_values.append(at_share)
            shares.append(run.safe_share)
            values.append(run.general_misaligned_pct)
        diffs = np.array(list(per_seed.values()))
        n = len(diffs)
        mean = float(diffs.mean()) if n else math.nan
        half = t_975(n - 1) * float(diffs.std(ddof=1)) / math.sqrt(n) if n > 1 else math.nan
        out.append(
            CurveComparison(
                method=method,
                n_seeds=n,
                safe_share_mean=float(np.mean(shares)) if n else math.nan,
                general_misaligned_pct_mean=float(np.mean(values)) if n else math.nan,
                curve_at_share_mean=float(np.mean(curve_values)) if n else math.nan,
                difference_mean=mean,
                ci_low=mean - half,
                ci_high=mean + half,
                per_seed=per_seed,
                outside=outside,
                bracket=bracket,
            )
        )
    return out
