"""Plotly figures: Tables 1-2, Figure 2, the canary-vs-general scatter, the safe-data frontier and the controller
trace replay.

    from canary_lib.figures import write_results_figures
    paths = write_results_figures(results, "results/organism")     # standalone HTML + CSV of the plotted data

Every figure is saved as standalone HTML with plotly.js embedded (works offline) next to a CSV of exactly the
data it plots; PNG only where an image exporter (kaleido with a Chrome) works, never required. The interactive
trace replay (ipywidgets + FigureWidget) is built only on request (`trace_replay_widget`), so headless papermill
runs never wait on a widget; `trace_replay_figure` is its static twin (plotly frames + slider, no kernel needed).
This module imports no torch.
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
from canary_lib.methods import REFERENCE_METHOD, table2_methods

_ANSWER_CHARS = 160
"""Canary answers are cut to this many characters in the replay table (the full text is in the JSONL)."""
_ANSWER_COLUMNS = ["question_id", "sample", "answer", "aligned", "coherent", "status"]
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


# ---------------------------------------------------------------------------------------------- trace replay


def answers_at(answers: pd.DataFrame, step: int) -> pd.DataFrame:
    """The canary answers of the latest evaluation at or before `step` (empty before the first one)."""
    if answers.empty:
        return answers
    done = answers[answers.step <= step]
    if done.empty:
        return done
    return done[done.step == done.step.max()]


def replay_readout(steps: pd.DataFrame, controller: pd.DataFrame, step: int) -> str:
    """The numbers at a replay step, as the widget shows them under its slider: p_t of that step and r̂_t of the
    latest canary evaluation at or before it, e.g. "step 12 | p_t = 0.0400 | r̂_t = 0.1000 (evaluation at step 10)".
    """
    row = steps[steps.step == step]
    p_text = f"{float(row.p.iloc[0]):.4f}" if len(row) else "—"
    done = controller[controller.step <= step]
    if done.empty:
        r_text = "— (no canary evaluation yet)"
    else:
        last = done[done.step == done.step.max()].iloc[0]
        r_text = f"{float(last.risk_ema):.4f} (evaluation at step {int(last.step)})"
    return f"step {step} | p_t = {p_text} | r̂_t = {r_text}"


def _answer_cells(rows: pd.DataFrame) -> list[list[str]]:
    cells = []
    for column in _ANSWER_COLUMNS:
        values = rows[column].tolist() if column in rows else [""] * len(rows)
        if column == "answer":
            values = [str(v)[:_ANSWER_CHARS] for v in values]
        elif column in ("aligned", "coherent"):
            values = ["—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.0f}" for v in values]
        cells.append([str(v) for v in values])
    return cells


def _replay_layout(r_low: float, r_high: float, title: str) -> go.Figure:
    fig = make_subplots(
        rows=3,
        cols=1,
        vertical_spacing=0.1,
        row_heights=[0.25, 0.25, 0.5],
        specs=[[{"type": "xy"}], [{"type": "xy"}], [{"type": "table"}]],
        subplot_titles=("p_t", "r_t (canary risk) and r̂_t (EMA)", "canary answers and judge scores"),
    )
    _add_band(fig, r_low, r_high, row=2)
    fig.update_layout(title=title, height=900, showlegend=True)
    return fig


def _replay_traces(steps: pd.DataFrame, controller: pd.DataFrame, answers: pd.DataFrame, step: int) -> list:
    s, c = steps[steps.step <= step], controller[controller.step <= step]
    rows = answers_at(answers, step)
    return [
        go.Scatter(x=s.step, y=s.p, mode="lines", name="p_t", line={"color": "#1f77b4"}),
        go.Scatter(x=c.step, y=c.canary_risk, mode="markers", name="r_t", marker={"color": "#ff7f0e"}),
        go.Scatter(x=c.step, y=c.risk_ema, mode="lines+markers", name="r̂_t", line={"color": "#d62728"}),
        go.Table(
            header={"values": _ANSWER_COLUMNS},
            cells={"values": _answer_cells(rows), "align": "left"},
            columnwidth=[2, 1, 8, 1, 1, 1],
        ),
    ]


def trace_replay_figure(
    steps: pd.DataFrame,
    controller: pd.DataFrame,
    answers: pd.DataFrame,
    r_low: float,
    r_high: float,
    title: str = "Controller trace replay",
) -> go.Figure:
    """The static replay: one frame per canary evaluation, with a slider; works without a kernel.

    Args:
        steps: one run's steps.csv (columns step, p).
        controller: its controller.csv (step, canary_risk, risk_ema).
        answers: its canary_answers.jsonl as a frame (step, question_id, sample, answer, aligned, coherent, status).
        r_low, r_high: the band drawn on the risk panel.
    """
    eval_steps = sorted(controller.step.unique()) or [int(steps.step.max()) if len(steps) else 0]
    fig = _replay_layout(r_low, r_high, title)
    for trace, row in zip(_replay_traces(steps, controller, answers, eval_steps[-1]), (1, 2, 2, 3)):
        fig.add_trace(trace, row=row, col=1)
    x_max = max(int(steps.step.max()) if len(steps) else 0, eval_steps[-1])
    fig.update_xaxes(range=[0, x_max + 1], row=1, col=1)
    fig.update_xaxes(range=[0, x_max + 1], title_text="training step", row=2, col=1)
    fig.frames = [
        go.Frame(name=str(step), data=_replay_traces(steps, controller, answers, step), traces=[0, 1, 2, 3])
        for step in eval_steps
    ]
    fig.update_layout(
        sliders=[
            {
                "active": len(eval_steps) - 1,
                "currentvalue": {"prefix": "step "},
                "steps": [
                    {
                        "label": str(step),
                        "method": "animate",
                        "args": [
                            [str(step)],
                            {
                                "mode": "immediate",
                                "frame": {"duration": 0, "redraw": True},
                                "transition": {"duration": 0},
                            },
                        ],
                    }
                    for step in eval_steps
                ],
            }
        ]
    )
    return fig


def trace_replay_widget(
    steps: pd.DataFrame, controller: pd.DataFrame, answers: pd.DataFrame, r_low: float, r_high: float
) -> Any:
    """The interactive replay for JupyterLab: an IntSlider over training steps driving a FigureWidget.

    Only call this when a person is at the notebook (the notebooks' INTERACTIVE parameter): a widget waits for a
    front end that a headless papermill run does not have. Needs ipywidgets and anywidget (FigureWidget).

    Returns:
        An ipywidgets.VBox to display: the slider, a line with the step's p_t and r̂_t, the figure.
    """
    import ipywidgets as widgets

    last = int(max(steps.step.max() if len(steps) else 0, controller.step.max() if len(controller) else 0))
    fig = go.FigureWidget(_replay_layout(r_low, r_high, "Controller trace replay (drag the slider)"))
    for trace, row in zip(_replay_traces(steps, controller, answers, last), (1, 2, 2, 3)):
        fig.add_trace(trace, row=row, col=1)
    fig.update_xaxes(range=[0, last + 1], row=1, col=1)
    fig.update_xaxes(range=[0, last + 1], row=2, col=1)
    slider = widgets.IntSlider(
        value=last,
        min=0,
        max=last,
        step=1,
        description="step",
        continuous_update=False,
        layout=widgets.Layout(width="90%"),
    )
    readout = widgets.HTML(replay_readout(steps, controller, last))

    def update(change: dict) -> None:
        readout.value = replay_readout(steps, controller, change["new"])
        new = _replay_traces(steps, controller, answers, change["new"])
        with fig.batch_update():  # one message to the front end instead of one per property
            for i in range(3):
                fig.data[i].x, fig.data[i].y = new[i].x, new[i].y
            fig.data[3].cells.values = new[3].cells.values

    slider.observe(update, names="value")
    return widgets.VBox([slider, readout, fig])


def read_answers(path: str | Path) -> pd.DataFrame:
    """A run's canary_answers.jsonl as a frame (empty, with the expected columns, when there is none)."""
    from canary_lib.artifacts import read_jsonl

    rows = read_jsonl(path)
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=["step", *_ANSWER_COLUMNS])


def ablation_traces_figure(
    runs: pd.DataFrame, methods: tuple[str, ...] | None = None
) -> tuple[go.Figure, pd.DataFrame]:
    """p_t per training step of the canary run and its ablations, one panel per seed (for notebook 04).

    Args:
        runs: `canary_lib.results.collect_runs` output.
        methods: the methods to draw (default: Table 2's, canary_lib.methods); those without a trained run are
            skipped.

    Returns:
        (figure, the plotted data with columns method, seed, step, p).
    """
    from canary_lib.results import controller_traces

    methods = tuple(table2_methods()) if methods is None else methods
    frames = []
    for method in methods:
        steps, _ = controller_traces(runs, method)
        frames.append(steps.assign(method=method))
    data = (
        pd.concat(frames, ignore_index=True)[["method", "seed", "step", "p"]]
        if frames
        else pd.DataFrame(columns=["method", "seed", "step", "p"])
    )
    seeds = sorted(data.seed.unique()) or [None]
    fig = make_subplots(
        rows=len(seeds), cols=1, shared_xaxes=True, vertical_spacing=0.06, subplot_titles=[f"seed {s}" for s in seeds]
    )
    colors = _seed_colors(list(methods))
    for row, seed in enumerate(seeds, start=1):
        for method in methods:
            d = data[(data.method == method) & (data.seed == seed)]
            if len(d):
                fig.add_trace(
                    go.Scatter(
                        x=d.step,
                        y=d.p,
                        mode="lines",
                        name=method,
                        legendgroup=method,
                        showlegend=row == 1,
                        line={"color": colors[method]},
                    ),
                    row=row,
                    col=1,
                )
        fig.update_yaxes(title_text="p_t", row=row, col=1)
    fig.update_xaxes(title_text="training step", row=len(seeds), col=1)
    fig.update_layout(title="p_t of the canary run and its ablations", height=260 * len(seeds) + 120)
    return fig, data


def write_trace_replays(results: Any, results_dir: str | Path, method: str = REFERENCE_METHOD) -> dict[str, Path]:
    """The static trace replay (frames + slider) of every trained run of `method`, one HTML per seed.

    Returns:
        "trace_replay_seed<k>" -> HTML path (a CSV of the run's controller trace beside each).
    """
    from canary_lib.artifacts import RunDir

    out = Path(results_dir) / "figures"
    paths: dict[str, Path] = {}
    chosen = results.runs[(results.runs.method == method) & results.runs.training_complete]
    for _, row in chosen.iterrows():
        run = RunDir(row.run_dir)
        steps, controller = pd.read_csv(run.steps_path), pd.read_csv(run.controller_path)
        r_low = row.r_low if pd.notna(row.r_low) else _BAND.r_low
        r_high = row.r_high if pd.notna(row.r_high) else _BAND.r_high
        fig = trace_replay_figure(
            steps,
            controller,
            read_answers(run.canary_answers_path),
            r_low,
            r_high,
            title=f"Controller trace replay: {method}, seed {int(row.seed)}",
        )
        name = f"trace_replay_seed{int(row.seed)}"
        paths[name] = save_figure(fig, out / f"{name}.html", controller)[0]
    return paths


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
