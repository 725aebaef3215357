"""Pictures of figures never fail a run: without an exporter (no kaleido, no browser, a browser that does not
start) nothing is written and one line says why. The README-images command, asked for explicitly, fails clearly.
(Real PNGs through Chromium are checked in test_browser_figures.py.)

    .venv/bin/pytest tests/test_image_export.py -q
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from canary_lib.cli import main
from canary_lib.figures import save_figure, table_figure
from canary_lib.image_export import exporter_problem, write_images


def _figure():
    return table_figure(pd.DataFrame({"a": [1]}), ["a"], "t")


def test_no_browser_means_no_png_and_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-chrome"))
    assert "BROWSER_PATH" in exporter_problem()
    assert save_figure(_figure(), tmp_path / "t.html", png=True) == [tmp_path / "t.html"]
    assert not (tmp_path / "t.png").exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no PNG/SVG copies" in err


def test_a_browser_that_does_not_start_means_no_png(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("kaleido")  # a dependency of the package; absent only in a hand-made environment
    fake = tmp_path / "chrome"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("BROWSER_PATH", str(fake))
    assert write_images([(_figure(), tmp_path / "t.png")]) == []
    assert list(tmp_path.glob("*.png")) == []  # no partial picture left behind
    assert "no PNG/SVG copies" in capsys.readouterr().err


def test_readme_images_need_a_finished_reproduction(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["readme-images", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "img")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("canary: ") and "table1.csv: not found" in err and "make reproduce" in err
