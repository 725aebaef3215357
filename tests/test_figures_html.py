"""Figures: standalone HTML with plotly.js embedded, CSVs of the plotted data, the trace replay (static and widget).

.venv/bin/pytest tests/test_figures_html.py -q
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

from canary_lib.figures import save_figure, table_figure, write_results_figures
from canary_lib.results import build_results
from canary_lib.trace_replay import answers_at, read_answers, trace_replay_figure, trace_replay_widget
from test_results_tables import _m, write_synthetic_run


@pytest.fixture
def results(tmp_path: Path):
    runs = tmp_path / "runs" / "organism"
    for seed in (42, 123):
        write_synthetic_run(runs, "base", seed, _m(2.0))
        for method, gen in (
            ("no_defense", 20.0),
            ("fixed_5", 10.0),
            ("canary", 5.0),
            ("fixed_mean", 7.0),
            ("delayed", 8.0),
            ("shuffled", 6.0),
            ("no_ema", 7.5),
        ):
            write_synthetic_run(runs, method, seed, _m(gen + seed / 100), risks=[0.0, 0.1, 0.05], p=0.1)
    return build_results(runs, tmp_path / "results" / "organism")


def _replay_data() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    steps = pd.DataFrame({"step": range(10), "p": [0.0, 0.0, 0.0, 0.04, 0.04, 0.04, 0.08, 0.08, 0.08, 0.08]})
    controller = pd.DataFrame(
        {"step": [0, 3, 6, 9], "canary_risk": [0.0, 0.2, 0.1, 0.0], "risk_ema": [0.0, 0.1, 0.1, 0.05]}
    )
    answers = pd.DataFrame(
        [
            {
                "step": s,
                "question_id": f"q{i}",
                "sample": 0,
                "answer": f"answer {i} at step {s}",
                "aligned": 10.0 if i == 0 and s == 3 else 90.0,
                "coherent": 80.0,
                "status": "scored",
            }
            for s in (0, 3, 6, 9)
            for i in range(2)
        ]
    )
    return steps, controller, answers


def test_results_figures_are_standalone_html_with_csv(results, tmp_path: Path) -> None:
    paths = write_results_figures(results, tmp_path / "results" / "organism")
    assert set(paths) == {"table1", "table2", "figure2", "correlation", "frontier"}  # two fixed levels: a frontier
    for name, path in paths.items():
        html = path.read_text()
        assert path.stat().st_size > 1_000_000, name  # plotly.js (several MB) is embedded: works offline
        assert 'src="https://cdn.plot.ly' not in html, name
        assert path.with_suffix(".csv").is_file(), name
    fig2 = pd.read_csv(paths["figure2"].with_suffix(".csv"))
    assert sorted(fig2.seed.unique()) == [42, 123]
    assert {"step", "p", "risk_ema"} <= set(fig2.columns)
    corr = pd.read_csv(paths["correlation"].with_suffix(".csv"))
    assert len(corr) == 14  # 7 trained methods x 2 seeds, base left out
    assert "Pearson r =" in paths["correlation"].read_text()


def test_png_is_optional(tmp_path: Path) -> None:
    fig = table_figure(pd.DataFrame({"a": [1]}), ["a"], "t")
    written = save_figure(fig, tmp_path / "t.html", png=True)
    if importlib.util.find_spec("kaleido") is None:
        assert written == [tmp_path / "t.html"]
    assert (tmp_path / "t.html").is_file()


def test_answers_at_takes_the_latest_evaluation_at_or_before_a_step() -> None:
    _, _, answers = _replay_data()
    assert answers_at(answers, 2).step.unique().tolist() == [0]
    assert answers_at(answers, 3).step.unique().tolist() == [3]
    assert answers_at(answers, -1).empty


def test_static_trace_replay_has_one_frame_per_evaluation(tmp_path: Path) -> None:
    steps, controller, answers = _replay_data()
    fig = trace_replay_figure(steps, controller, answers, r_low=0.02, r_high=0.08)
    assert [f.name for f in fig.frames] == ["0", "3", "6", "9"]
    frame3 = fig.frames[1]
    assert max(frame3.data[0].x) == 3  # p_t only up to the frame's step
    assert list(frame3.data[2].y) == [0.0, 0.1]  # r̂_t of the evaluations so far
    cells = frame3.data[3].cells.values
    assert list(cells[2]) == ["answer 0 at step 3", "answer 1 at step 3"] and cells[3][0] == "10"
    assert len(fig.layout.sliders[0].steps) == 4
    save_figure(fig, tmp_path / "replay.html")
    assert "answer 1 at step 9" in (tmp_path / "replay.html").read_text()


def test_trace_replay_widget_slider_updates_the_figure() -> None:
    steps, controller, answers = _replay_data()
    box = trace_replay_widget(steps, controller, answers, r_low=0.02, r_high=0.08)
    slider, readout, fig = box.children
    assert slider.continuous_update is False and slider.max == 9
    assert readout.value == "step 9 | p_t = 0.0800 | r̂_t = 0.0500 (evaluation at step 9)"
    slider.value = 4
    assert readout.value == "step 4 | p_t = 0.0400 | r̂_t = 0.1000 (evaluation at step 3)"
    assert max(fig.data[0].x) == 4
    assert list(fig.data[2].x) == [0, 3]
    assert list(fig.data[3].cells.values[2]) == ["answer 0 at step 3", "answer 1 at step 3"]


def test_replay_readout_before_the_first_evaluation() -> None:
    from canary_lib.trace_replay import replay_readout

    steps, controller, _ = _replay_data()
    shown = replay_readout(steps, controller.iloc[1:], 2)  # the first evaluation is at step 3
    assert shown == "step 2 | p_t = 0.0000 | r̂_t = — (no canary evaluation yet)"


def test_read_answers_without_file_is_empty(tmp_path: Path) -> None:
    frame = read_answers(tmp_path / "canary_answers.jsonl")
    assert frame.empty and "step" in frame.columns


def test_ablation_traces_and_trace_replays_from_runs(results, tmp_path: Path) -> None:
    from canary_lib.trace_replay import ablation_traces_figure, write_trace_replays

    fig, data = ablation_traces_figure(results.runs)
    assert set(data.method) == {"canary", "fixed_mean", "delayed", "shuffled", "no_ema"}
    assert sorted(data.seed.unique()) == [42, 123]
    assert len(fig.data) == 10  # 5 methods x 2 seeds
    paths = write_trace_replays(results, tmp_path / "out")
    assert sorted(paths) == ["trace_replay_seed123", "trace_replay_seed42"]
    assert all(p.is_file() and p.with_suffix(".csv").is_file() for p in paths.values())
