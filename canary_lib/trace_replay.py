"""The controller trace replay: p_t, r̂_t and the canary answers at any step of a run (or of each ablation).

    from canary_lib.trace_replay import read_answers, trace_replay_figure, trace_replay_widget

`trace_replay_figure` is a static plotly figure with frames and a step slider (standalone HTML, no kernel);
`trace_replay_widget` is its interactive twin (ipywidgets + FigureWidget), built only on request so headless
papermill runs never wait on a widget. The shared figure pieces (saving, the r_low / r_high band, seed colours)
are canary_lib/figures.py's. This module imports no torch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from canary_lib.figures import _BAND, _add_band, _seed_colors, save_figure
from canary_lib.methods import REFERENCE_METHOD, table2_methods

_ANSWER_CHARS = 160
"""Canary answers are cut to this many characters in the replay table (the full text is in the JSONL)."""
_ANSWER_COLUMNS = ["question_id", "sample", "answer", "aligned", "coherent", "status"]


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
