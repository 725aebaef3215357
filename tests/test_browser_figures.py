"""Every HTML figure the reproduction writes, opened in a real Chromium over file:// with the network closed:
it renders (an SVG), draws the traces and points of its CSV, logs no console error and fetches nothing. A
screenshot of each is kept (tests/artifacts/figures/, or $CANARY_TEST_ARTIFACTS). Also the PNG copies.

    .venv/bin/pytest tests/test_browser_figures.py -q        # needs Chromium: apt-get install chromium
"""

from __future__ import annotations

import shutil
import struct
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from _browser import open_page, settled_plot
from _e2e import TinySweep, artifacts_dir
from canary_lib.artifacts import read_jsonl

pytestmark = [pytest.mark.browser, pytest.mark.slow]
# Per figure, what its CSV (and run directory) says must be drawn. A new figure needs an entry here.
FIGURES = ("table1", "table2", "figure2", "correlation", "frontier", "ablation_p_traces", "trace_replay_seed42")
PICTURED = ("table1", "table2", "figure2", "correlation", "frontier")


def _trace(type_: str, name: str, mode: str | None, length: int | None, markers: int | None = 0) -> tuple:
    """A trace as compared: type, name, mode, points laid out, markers drawn (None for tables)."""
    return (type_, name, mode, length, markers)


def _plotted(rows: pd.DataFrame) -> int:
    """How many of a frontier's rows have both coordinates (a point is drawn for each)."""
    return int((rows.safe_share.notna() & rows.general_misaligned_pct.notna()).sum())


def _expected(name: str, data: pd.DataFrame, sweep: TinySweep) -> dict:
    """The traces (type, name, mode, points, markers drawn), table rows and slider steps the CSV implies."""
    if name in ("table1", "table2"):
        return {"traces": [_trace("table", "trace 0", None, None, None)], "table_labels": sorted(data.label)}
    if name == "figure2":
        traces = []
        for seed, rows in data.groupby("seed"):
            traces.append(_trace("scatter", f"seed {seed}", "lines", int(rows.p.notna().sum())))
            n = int(rows.risk_ema.notna().sum())
            traces.append(_trace("scatter", f"seed {seed}", "lines+markers", n, n))
        return {"traces": traces}
    if name == "correlation":
        return {"traces": [_trace("scatter", m, "markers", len(rows), len(rows)) for m, rows in data.groupby("method")]}
    if name == "frontier":  # the tiny sweep's fixed levels: no_defense (p = 0) and fixed_5; adaptive: the others
        fixed, adaptive = data[data.kind == "fixed"], data[data.kind == "adaptive"]
        n_levels = fixed.p.nunique()
        traces = [
            _trace("scatter", "fixed p, per seed", "markers", len(fixed), _plotted(fixed)),
            _trace("scatter", "fixed p (mean ± std)", "lines+markers+text", n_levels, n_levels),
        ]
        for method, rows in adaptive.groupby("method", sort=False):
            traces.append(_trace("scatter", f"{method}, per seed", "markers", len(rows), _plotted(rows)))
            traces.append(_trace("scatter", method, "markers", 1, min(1, _plotted(rows))))
        return {"traces": traces}
    if name == "ablation_p_traces":
        groups = data.groupby(["method", "seed"])
        return {"traces": [_trace("scatter", method, "lines", len(rows)) for (method, _), rows in groups]}
    if name == "trace_replay_seed42":  # the CSV is the run's controller trace; the frame shown is the last one
        run = sweep.runs / "canary" / "seed42"
        steps = pd.read_csv(run / "steps.csv")
        last = int(data.step.max())
        answers = [a for a in read_jsonl(run / "canary_answers.jsonl") if a["step"] == last]
        n = len(data)
        return {
            "traces": [
                _trace("scatter", "p_t", "lines", int((steps.step <= last).sum())),
                _trace("scatter", "r_t", "markers", n, n),
                _trace("scatter", "r̂_t", "lines+markers", n, n),
                _trace("table", "trace 3", None, None, None),
            ],
            "table_rows": len(answers),
            "slider_steps": n,
        }
    raise AssertionError(f"no expectation for figure {name!r}: add one to {__file__}")


def test_every_figure_the_reproduction_writes_is_checked_here(tiny_sweep: TinySweep) -> None:
    written = sorted(p.stem for p in (tiny_sweep.results / "figures").glob("*.html"))
    assert written == sorted(FIGURES)


@pytest.mark.parametrize("name", FIGURES)
def test_figure_renders_offline_with_the_data_of_its_csv(chromium, tiny_sweep: TinySweep, name: str) -> None:
    assert tiny_sweep.status == 0
    html = tiny_sweep.results / "figures" / f"{name}.html"
    data = pd.read_csv(html.with_suffix(".csv"))
    expected = _expected(name, data, tiny_sweep)
    page, watched = open_page(chromium)
    try:
        page.goto(html.as_uri(), wait_until="load")
        shown = settled_plot(page)
        page.screenshot(path=str(artifacts_dir("figures") / f"{name}.png"), full_page=True)
        labels = page.evaluate("""() => Array.from(document.querySelectorAll('.table .y-column'))
            .slice(0, 1).flatMap(c => Array.from(c.querySelectorAll('.cell-text')).map(t => t.textContent))""")
    finally:
        page.context.close()

    assert shown["svg"] >= 1, "no SVG: the figure did not render"
    drawn = [_trace(t["type"], t["name"], t["mode"], t.get("length"), t.get("markers")) for t in shown["traces"]]
    assert Counter(drawn) == Counter(expected["traces"])
    if "table_labels" in expected:  # the first column shows every row of the CSV, under its header
        columns = shown["tables"][0]["columns"]
        assert shown["tables"][0]["cells"] == columns * (len(data) + 1)
        assert sorted(labels) == sorted(expected["table_labels"] + ["label"])
    if "table_rows" in expected:
        table = shown["tables"][0]
        assert table["cells"] == table["columns"] * (expected["table_rows"] + 1)
    if "slider_steps" in expected:
        assert shown["sliderSteps"] == expected["slider_steps"]
    assert watched.errors == [], f"console errors: {watched.errors}"
    assert watched.refused == [], f"tried to reach the network: {watched.refused}"


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


def test_png_copies_are_written_next_to_the_html(chromium, tiny_sweep: TinySweep) -> None:
    """Kaleido with the system Chromium: a picture of each results figure (the one `chromium` proves there)."""
    figures = tiny_sweep.results / "figures"
    for name in PICTURED:
        png = figures / f"{name}.png"
        assert png.is_file(), f"{png} missing"
        width, height = _png_size(png)
        assert width >= 1000 and height >= 150, (name, width, height)
        assert 5_000 < png.stat().st_size < 500_000, name  # a picture with content, small enough to commit
        shutil.copy(png, artifacts_dir("pictures") / png.name)


def test_readme_images_are_rebuilt_from_the_results_alone(chromium, tiny_sweep: TinySweep, tmp_path: Path) -> None:
    from canary_lib.cli import main

    results = tmp_path / "results"
    shutil.copytree(tiny_sweep.results, results)  # only results/: the run directories are not needed
    assert main(["readme-images", "--results", str(results), "--out", str(tmp_path / "images")]) == 0
    for name in ("table1", "figure2"):
        width, _ = _png_size(tmp_path / "images" / f"{name}.png")
        assert width >= 1000
    assert not list((tmp_path / "images").glob("*.html"))


def test_static_trace_replay_slider_moves_the_trace(chromium, tiny_sweep: TinySweep) -> None:
    """Clicking a step of the replay's slider shows that canary evaluation: p_t up to its step, r_t and r̂_t of the
    evaluations so far, and the answers judged there."""
    html = tiny_sweep.results / "figures" / "trace_replay_seed42.html"
    run = tiny_sweep.runs / "canary" / "seed42"
    steps, evals = pd.read_csv(run / "steps.csv"), pd.read_csv(html.with_suffix(".csv")).step.tolist()
    answers = pd.DataFrame(read_jsonl(run / "canary_answers.jsonl"))
    page, watched = open_page(chromium)
    try:
        page.goto(html.as_uri(), wait_until="load")
        assert settled_plot(page)["sliderValue"] == f"step {evals[-1]}"  # opens on the last evaluation
        for index in (0, len(evals) // 2):
            label = page.query_selector_all(".slider-labels .slider-label")[index].bounding_box()
            rail = page.query_selector(".slider-rail-touch-rect").bounding_box()
            page.mouse.click(label["x"] + label["width"] / 2, rail["y"] + rail["height"] / 2)
            shown = settled_plot(page)
            step = evals[index]
            assert shown["sliderValue"] == f"step {step}"
            p_t, r_t, r_hat, _ = shown["traces"]
            assert p_t["length"] == int((steps.step <= step).sum())
            assert r_t["length"] == r_t["markers"] == r_hat["length"] == r_hat["markers"] == index + 1
            table = shown["tables"][0]
            assert table["cells"] == table["columns"] * (int((answers.step == step).sum()) + 1)
            page.screenshot(path=str(artifacts_dir("figures") / f"trace_replay_seed42_step{step}.png"))
    finally:
        page.context.close()
    assert watched.errors == [] and watched.refused == []
