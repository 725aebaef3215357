"""The README's pictures: Table 1 and Figure 2 of a finished reproduction, as PNGs under docs/images/.

    canary readme-images                                   # results/organism -> docs/images/{table1,figure2}.png
    canary readme-images --results results/organism --out docs/images

Only the results directory is read (``table1.csv``, ``runs.csv`` and ``figures/figure2.csv``, all written by
notebook 05); nothing is rerun, so regenerating the pictures after a new reproduction takes seconds. Unlike the
PNG copies a sweep writes next to its HTML (a convenience, skipped where no exporter works), this command is
asked for explicitly, so a missing exporter is an error. This module imports no torch.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from canary_lib.errors import CanaryError
from canary_lib.figures import figure2, table1_figure, write_pngs
from canary_lib.image_export import exporter_problem
from canary_lib.methods import REFERENCE_METHOD

DEFAULT_RESULTS = "results/organism"
DEFAULT_OUT = "docs/images"


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise CanaryError(f"{path}: not found; run the reproduction first (make reproduce)")
    return pd.read_csv(path)


def figure2_from_results(results_dir: str | Path) -> go.Figure:
    """Figure 2 rebuilt from ``figures/figure2.csv`` (p_t and r̂_t per seed and step) and the band in ``runs.csv``."""
    results_dir = Path(results_dir)
    merged = _read(results_dir / "figures" / "figure2.csv")
    runs = _read(results_dir / "runs.csv")
    steps = merged.loc[merged.p.notna(), ["seed", "step", "p"]]
    controller = merged.loc[merged.risk_ema.notna(), ["seed", "step", "risk_ema"]]
    canary = runs[runs.method == REFERENCE_METHOD]
    if canary.empty or canary.r_low.isna().all():
        raise CanaryError(f"{results_dir / 'runs.csv'}: no {REFERENCE_METHOD} run with its r_low / r_high band")
    return figure2(steps, controller, float(canary.r_low.dropna().iloc[0]), float(canary.r_high.dropna().iloc[0]))


def write_readme_images(results_dir: str | Path = DEFAULT_RESULTS, out_dir: str | Path = DEFAULT_OUT) -> list[Path]:
    """Write ``table1.png`` and ``figure2.png`` of results_dir into out_dir.

    Raises:
        CanaryError: a results file is missing, or no PNG exporter works here (the message says what to install).
    """
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    figures = {
        out_dir / "table1.png": table1_figure(_read(results_dir / "table1.csv")),
        out_dir / "figure2.png": figure2_from_results(results_dir),
    }
    if problem := exporter_problem():
        raise CanaryError(f"cannot write PNGs: {problem}")
    written = write_pngs(figures)
    if not written:
        raise CanaryError("PNG export failed (the reason is printed above)")
    return written
