"""Plotly figures: Tables 1-2, Figure 2, the canary-vs-general scatter and the safe-data frontier (the controller
trace replay is canary_lib/trace_replay.py).

    from canary_lib.figures import write_results_figures
    paths = write_results_figures(results, "results/organism")     # standalone HTML + CSV of the plotted data

Every figure is saved as standalone HTML with plotly.js embedded (works offline) next to a CSV of exactly the
data it plots; PNG only where an image exporter (kaleido with a Chrome) works, never required. This module
imports no torch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from canary_lib.artifacts import write_text_atomic
from canary_lib.config_schema import ControllerSettings
from canary_lib.methods import REFERENCE_METHOD

_BAND = ControllerSettings()
"""The default [r_low, r_high] band, drawn when a run's configuration does not say its own."""
_TABLE_PNG_WIDTH = 1100
_PNG_SCALE = 1.5
"""PNGs at 1.5x pixel density: sharp on high-density screens, still tens of kB."""


# ---------------------------------------------------------------------------------------------- saving


def save_figure(fig: go.Figure, path: str | Path, data: pd.DataFrame | None = None, png: bool = False) -> list[Path]:
    """Write fig as standalone HTML (plotly.js embedded), its data as CSV beside it, and a PNG if asked and possible.

    Args:
        fig: the figure.
        path: the .html path (the CSV and PNG take the same stem).
        data: the plotted data, written as ``<stem>.csv``.
        png: also write ``<stem>.png`` (canary_lib.image_export); skipped with one printed line where no
            exporter works. To picture several figures, pass png=False and hand them to `write_pngs` at once
            (one browser start instead of one per figure).

    Returns:
        The paths written.
    """
    path = Path(path)
    # auto_play off: a replay opens on its last frame, where its slider stands, instead of playing every frame
    write_text_atomic(path, fig.to_html(include_plotlyjs=True, full_html=True, auto_play=False))
    written = [path]
    if data is not None:
        csv_path = path.with_suffix(".csv")
        write_text_atomic(csv_path, data.to_csv(index=False))
        written.append(csv_path)
    if png:
        written += write_pngs({path.with_suffix(".png"): fig})
    return written


def write_pngs(figures: dict[Path, go.Figure]) -> list[Path]:
    """Each figure as a PNG at its path (the key), all rendered in one browser; [] where no exporter works.
    Tables are pictured wider than plotly's default 700 px so their columns do not wrap."""
    from canary_lib.image_export import write_images

    items = []
    for png_path, fig in figures.items():
        is_table = any(isinstance(trace, go.Table) for trace in fig.data)
        picture = go.Figure(fig).update_layout(width=fig.layout.width or (_TABLE_PNG_WIDTH if is_table else None))
        items.append((picture, Path(png_path)))
    return write_images(items, scale=_PNG_SCALE)


# ---------------------------------------------------------------------------------------------- tables


def table_figure(table: pd.DataFrame, columns: list[str], title: str) -> go.Figure:
    """A results table (e.g. Table 1) as a plotly table with the given display columns."""
    fig = go.Figure(
        go.Table(
            header={"values": [f"<b>{c}</b>" for c in columns], "align": "left"},
            cells={"values": [table[c].astype(str).tolist() for c in columns], "align": "left"},
        )
    )
    fig.update_layout(title=title, height=120 + 32 * len(table), margin={"t": 60, "b": 10, "l": 10, "r": 10})
    return fig


# ---------------------------------------------------------------------------------------------- Figure 2


def figure2(
    steps: pd.DataFrame,
    controller: pd.DataFrame,
    r_low: float,
    r_high: float,
    title: str = "Figure 2: controller behaviour across seeds",
) -> go.Figure:
    """(a) p_t over training steps, one line per seed; (b) r̂_t with the r_low / r_high band.

    Args:
        steps: columns seed, step, p (from each run's steps.csv).
        controller: columns seed, step, risk_ema (from each run's controller.csv).
        r_low, r_high: the hysteresis band of Eq. 3.
    """
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08,
        subplot_titles=("(a) interleaving ratio p_t", "(b) EMA canary risk r̂_t"),
    )
    colors = _seed_colors(sorted(set(steps.seed) | set(controller.seed)))
    for seed, color in colors.items():
        s = steps[steps.seed == seed]
        fig.add_trace(
            go.Scatter(
                x=s.step, y=s.p, mode="lines", name=f"seed {seed}", legendgroup=str(seed), line={"color": color}
            ),
            row=1,
            col=1,
        )
        c = controller[controller.seed == seed]
        fig.add_trace(
            go.Scatter(
                x=c.step,
                y=c.risk_ema,
                mode="lines+markers",
                name=f"seed {seed}",
                legendgroup=str(seed),
                showlegend=False,
                line={"color": color},
            ),
            row=2,
            col=1,
        )
    _add_band(fig, r_low, r_high, row=2)
    fig.update_yaxes(title_text="p_t", row=1, col=1)
    fig.update_yaxes(title_text="r̂_t", row=2, col=1)
    fig.update_xaxes(title_text="training step", row=2, col=1)
    fig.update_layout(title=title, height=650)
    return fig


def adapter_norm_figure(
    norms: pd.DataFrame,
    controller: pd.DataFrame,
    r_low: float | None = None,
    r_high: float | None = None,
    title: str = "LoRA update norm per layer and r̂_t",
) -> go.Figure:
    """(a) the norm of the LoRA update of each decoder layer at each kept snapshot; (b) r_t and r̂_t of the same
    run: where the adapter grows fastest against where the canaries start to say misaligned.

    Args:
        norms: columns step, layer, norm (canary_lib.snapshots.snapshot_norms).
        controller: columns step, canary_risk, risk_ema (the run's controller.csv).
        r_low, r_high: the hysteresis band, drawn when given.
    """
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08,
        subplot_titles=("(a) ||scale · B A||_F of each layer's LoRA update", "(b) canary risk"),
    )
    layers = sorted(norms.layer.unique()) if len(norms) else []
    for i, layer in enumerate(layers):
        rows = norms[norms.layer == layer].sort_values("step")
        fig.add_trace(
            go.Scatter(
                x=rows.step,
                y=rows.norm,
                mode="lines+markers",
                name=f"layer {layer}",
                legendgroup="layers",
                line={"color": _layer_color(i, len(layers))},
            ),
            row=1,
            col=1,
        )
    if len(controller):
        fig.add_trace(
            go.Scatter(
                x=controller.step,
                y=controller.canary_risk,
                mode="markers",
                name="r_t",
                marker={"color": "gray", "size": 5},
            ),
            row=2,
            col=1,
        )
        fig.add_trace(
            go.Scatter(x=controller.step, y=controller.risk_ema, mode="lines", name="r̂_t", line={"color": "black"}),
            row=2,
            col=1,
        )
    if r_low is not None and r_high is not None:
        _add_band(fig, r_low, r_high, row=2)
    fig.update_yaxes(title_text="norm", row=1, col=1)
    fig.update_yaxes(title_text="r_t, r̂_t", row=2, col=1)
    fig.update_xaxes(title_text="training step", row=2, col=1)
    fig.update_layout(title=title, height=650)
    return fig


def _layer_color(i: int, n: int) -> str:
    """Shallow layers light, deep layers dark (one blue ramp), so the depth order reads off the colors."""
    shade = 0.25 + 0.65 * (i / max(1, n - 1))
    return f"rgb({int(255 * (1 - shade))}, {int(255 * (1 - 0.6 * shade))}, 255)"


def _add_band(fig: go.Figure, r_low: float, r_high: float, row: int) -> None:
    fig.add_hrect(y0=r_low, y1=r_high, fillcolor="gray", opacity=0.15, line_width=0, row=row, col=1)
    for y, name in ((r_low, "r_low"), (r_high, "r_high")):
        fig.add_hline(
            y=y,
            line_dash="dash",
            line_color="gray",
            annotation_text=f"{name} = {y:g}",
            annotation_position="top left",
            row=row,
            col=1,
        )


def _seed_colors(seeds: list[Any]) -> dict[Any, str]:
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
    return {seed: palette[i % len(palette)] for i, seed in enumerate(seeds)}


# ---------------------------------------------------------------------------------------------- correlation


def correlation_figure(correlation: dict[str, Any]) -> go.Figure:
    """Per-run mean canary risk (x) against General %Misaligned (y), coloured by method, with Pearson r in the title."""
    points = pd.DataFrame(
        correlation["points"],
        columns=["method", "seed", "canary_risk_mean", "canary_risk_last", "general_misaligned_pct"],
    )
    fig = go.Figure()
    for method, group in points.groupby("method", sort=True):
        fig.add_trace(
            go.Scatter(
                x=group.canary_risk_mean,
                y=group.general_misaligned_pct,
                mode="markers",
                name=str(method),
                text=[f"{method} seed {s}" for s in group.seed],
                marker={"size": 10},
            )
        )
    r = correlation.get("r", math.nan)
    r_text = "n/a" if r is None or (isinstance(r, float) and math.isnan(r)) else f"{r:.2f}"
    fig.update_layout(
        title=f"Canary risk vs General %Misaligned: Pearson r = {r_text} (n = {correlation['n']} runs)",
        xaxis_title="mean canary risk r_t over the run",
        yaxis_title="General %Misaligned (final model)",
        height=500,
    )
    return fig


# ---------------------------------------------------------------------------------------------- frontier


def frontier_figure(frontier: pd.DataFrame) -> go.Figure:
    """General %Misaligned against the realized safe share: the fixed-p curve (mean ± std over seeds, each seed's
    run as a faint dot) and each adaptive method's seeds as points with their mean."""
    from canary_lib.frontier import fixed_curve

    fig = go.Figure()
    fixed = frontier[frontier.kind == "fixed"]
    curve = fixed_curve(frontier)
    fig.add_trace(
        go.Scatter(
            x=fixed.safe_share,
            y=fixed.general_misaligned_pct,
            mode="markers",
            name="fixed p, per seed",
            marker={"color": "lightgray", "size": 7},
            text=[f"{m} seed {s}" for m, s in zip(fixed.method, fixed.seed)],
        )
    )
    fig.add_trace(
        go.Scatter(
            x=curve.safe_share_mean,
            y=curve.general_misaligned_pct_mean,
            mode="lines+markers+text",
            name="fixed p (mean ± std)",
            line={"color": "black"},
            text=[f"p={p:g}" for p in curve.p],
            textposition="top right",
            error_y={"type": "data", "array": curve.general_misaligned_pct_std.fillna(0)},
        )
    )
    adaptive = frontier[frontier.kind == "adaptive"]
    palette = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    for i, (method, group) in enumerate(adaptive.groupby("method", sort=False)):
        color = palette[i % len(palette)]
        fig.add_trace(
            go.Scatter(
                x=group.safe_share,
                y=group.general_misaligned_pct,
                mode="markers",
                name=f"{method}, per seed",
                marker={"color": color, "size": 8, "symbol": "circle-open"},
                legendgroup=method,
                text=[f"{method} seed {s}" for s in group.seed],
            )
        )
        fig.add_trace(
            go.Scatter(
                x=[group.safe_share.mean()],
                y=[group.general_misaligned_pct.mean()],
                mode="markers",
                name=method,
                marker={"color": color, "size": 14, "symbol": "diamond"},
                legendgroup=method,
            )
        )
    fig.update_layout(
        title="Safe-data frontier: General %Misaligned against the share of safe steps taken",
        xaxis_title="realized safe share (n_safe_steps / n_steps)",
        yaxis_title="General %Misaligned (final model)",
        height=520,
    )
    return fig


# ---------------------------------------------------------------------------------------------- all at once


def table1_figure(table1: pd.DataFrame) -> go.Figure:
    """Table 1 (results.table1) as a figure: label, n_seeds and the paper's five columns."""
    from canary_lib.results import METRICS

    return table_figure(table1, ["label", "n_seeds", *METRICS.values()], "Table 1: main results")


def table2_figure(table2: pd.DataFrame) -> go.Figure:
    """Table 2 (results.table2) as a figure, with the relative change of each ablation."""
    return table_figure(
        table2, ["label", "n_seeds", "Gen. %Mis.", "Gen. %Inc.", "Avg p_t", "tests"], "Table 2: ablations"
    )


def write_results_figures(results: Any, results_dir: str | Path, png: bool = True) -> dict[str, Path]:
    """Tables 1-2, Figure 2, the correlation scatter and the safe-data frontier of a `canary_lib.results.Results`,
    into results_dir/figures.

    Args:
        png: also write a PNG of each next to its HTML, all in one browser (skipped, with one printed line,
            where no exporter works).

    Returns:
        Figure name -> HTML path.
    """
    from canary_lib.results import controller_traces

    out = Path(results_dir) / "figures"
    steps, controller = controller_traces(results.runs)
    canary_runs = results.runs[results.runs.method == REFERENCE_METHOD]
    r_low = float(canary_runs.r_low.dropna().iloc[0]) if canary_runs.r_low.notna().any() else _BAND.r_low
    r_high = float(canary_runs.r_high.dropna().iloc[0]) if canary_runs.r_high.notna().any() else _BAND.r_high
    merged = steps.merge(controller, on=["seed", "step"], how="outer").sort_values(["seed", "step"])
    figures = {
        "table1": (table1_figure(results.table1), results.table1),
        "table2": (table2_figure(results.table2), results.table2),
        "figure2": (figure2(steps, controller, r_low, r_high), merged),
        "correlation": (correlation_figure(results.correlation), pd.DataFrame(results.correlation["points"])),
    }
    if not results.frontier.empty:  # only where at least two fixed levels finished
        figures["frontier"] = (frontier_figure(results.frontier), results.frontier)
    paths = {name: save_figure(fig, out / f"{name}.html", data)[0] for name, (fig, data) in figures.items()}
    if png:
        write_pngs({paths[name].with_suffix(".png"): fig for name, (fig, _) in figures.items()})
    return paths
