"""JupyterLab as a researcher uses it: a real server on 127.0.0.1 (free port, token), 02_train_controller opened
in Chromium on the tiny organism with INTERACTIVE = True, Run > Run All Cells, then the replay slider dragged with
the mouse; the step, p_t and r̂_t the widget shows must be the run's (steps.csv, controller.csv) at that step, and
so must the last points of its plot. Screenshots: tests/artifacts/jupyterlab/ (or $CANARY_TEST_ARTIFACTS).

    .venv/bin/pytest tests/test_browser_jupyterlab.py -q        # needs Chromium: apt-get install chromium
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from _browser import open_page, settled_plot
from _e2e import ROOT, TinySweep, artifacts_dir

pytestmark = [pytest.mark.browser, pytest.mark.slow]
SERVER_START_S = 180
RUN_ALL_S = 900  # training the tiny organism with canary evaluations takes about a minute on 2 busy cores
# p_t starts at 0.2 and falls by 0.05 at each canary evaluation while r̂_t is under r_low (the tiny model's canary
# risk stays near 0), so the slider has different p_t values to show.
LAB_OVERRIDES = ["controller.p_init=0.2", "controller.delta_down=0.05"]
READOUT = re.compile(r"step (\d+) \| p_t = ([0-9.]+|—) \| r\S*_t = ([0-9.]+|—)")  # trace_replay.replay_readout
# JupyterLab's own network wishes (news feed, update check, extension manager's PyPI index) are off: the test
# runs offline, and a prompt on top of the notebook is not what it tests.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False}
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def jupyterlab(root: Path, home: Path) -> Iterator[tuple[str, str]]:
    """A JupyterLab server serving root, with its configuration, settings and runtime files under home.

    Yields:
        (base URL, token). The server and its kernels are stopped on exit.
    """
    port, token = _free_port(), secrets.token_hex(16)
    for name, values in LAB_SETTINGS.items():
        path = home / "settings" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
        "OMP_NUM_THREADS": "1",
    }
    log = (home / "jupyterlab.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter",
            "lab",
            "--no-browser",
            "--allow-root",
            "--ip=127.0.0.1",
            f"--port={port}",
            "--port-retries=0",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            assert server.poll() is None, f"jupyter lab exited: {(home / 'jupyterlab.log').read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"jupyter lab did not answer in {SERVER_START_S} s"
            time.sleep(1)
        yield base, token
    finally:
        server.terminate()  # jupyter server shuts its kernels down on SIGTERM
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _notebook_with_parameters(values: dict, path: Path) -> None:
    """02_train_controller with values set in a cell right after its parameters cell (as papermill does)."""
    nb = nbformat.read(ROOT / "notebooks" / "02_train_controller.ipynb", as_version=4)
    index = next(i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", []))
    source = "# set by the test\n" + "\n".join(f"{name} = {value!r}" for name, value in values.items())
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(source))
    nbformat.write(nb, path)


def _value_at(steps: pd.DataFrame, controller: pd.DataFrame, step: int) -> tuple[float, float | None, int]:
    """The run's p_t at step, r̂_t of the latest evaluation at or before it, and how many evaluations that is."""
    p = float(steps.loc[steps.step == step, "p"].iloc[0])
    done = controller[controller.step <= step]
    return p, (float(done.risk_ema.iloc[-1]) if len(done) else None), len(done)


def _drag_slider_to(page, fraction: float) -> None:
    """Press the slider's handle and drag it to `fraction` of the track's width, as a person would."""
    track = page.locator(".widget-slider .noUi-base").bounding_box()
    handle = page.locator(".widget-slider .noUi-handle").bounding_box()
    y = handle["y"] + handle["height"] / 2
    page.mouse.move(handle["x"] + handle["width"] / 2, y)
    page.mouse.down()
    page.mouse.move(track["x"] + fraction * track["width"], y, steps=15)
    page.mouse.up()


def test_replay_slider_in_jupyterlab_shows_the_trace_values(chromium, tiny_sweep: TinySweep, tmp_path: Path) -> None:
    assert tiny_sweep.status == 0  # its prepared data and cached base organism are used here
    lab_root, run_dir = tmp_path / "lab", tmp_path / "lab" / "run"
    lab_root.mkdir()
    _notebook_with_parameters(
        {
            "PARAMS": [
                str(ROOT / p)
                for p in ("parameters/organism.yaml", "parameters/organism_tiny.yaml", "parameters/methods/canary.yaml")
            ],
            "OVERRIDES": tiny_sweep.overrides + LAB_OVERRIDES,
            "RUN_DIR": str(run_dir),
            "INTERACTIVE": True,
        },
        lab_root / "02_train_controller.ipynb",
    )
    shots = artifacts_dir("jupyterlab")

    with jupyterlab(lab_root, tmp_path / "home") as (base, token):
        page, watched = open_page(chromium, allowed=(base, "data:", "blob:"), offline=False, viewport=(1400, 1000))
        try:
            page.goto(f"{base}/lab/tree/02_train_controller.ipynb?token={token}")
            page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=SERVER_START_S * 1000)
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-item[data-command='runmenu:run-all']").click()
            page.locator(".widget-slider .noUi-handle").wait_for(timeout=RUN_ALL_S * 1000)
            widget = page.locator(".widget-vbox:has(.widget-slider)")
            widget.evaluate("(el) => el.scrollIntoView({block: 'start'})")  # the replay at the top of the view
            page.screenshot(path=str(shots / "02_after_run_all.png"))

            steps, controller = pd.read_csv(run_dir / "steps.csv"), pd.read_csv(run_dir / "controller.csv")
            last = int(steps.step.max())
            readout = page.locator(".widget-html-content", has_text="p_t =")
            seen = []
            for fraction in (0.15, 0.5, 0.85):
                before = readout.text_content()
                _drag_slider_to(page, fraction)
                page.wait_for_function(
                    "([el, old]) => el.textContent !== old", arg=[readout.element_handle(), before], timeout=30_000
                )
                step_shown, p_shown, r_shown = READOUT.search(readout.text_content()).groups()
                step = int(step_shown)
                assert page.locator(".widget-slider .widget-readout").text_content().strip() == step_shown
                assert abs(step - fraction * last) <= max(2, 0.1 * last), (step, fraction, last)
                p, r_hat, n_evals = _value_at(steps, controller, step)
                assert float(p_shown) == pytest.approx(p, abs=5e-5)
                assert (r_shown == "—") if r_hat is None else float(r_shown) == pytest.approx(r_hat, abs=5e-5)
                plot = settled_plot(page, ".widget-vbox:has(.widget-slider)")  # the widget's live figure
                p_trace, _, r_hat_trace, _ = plot["traces"]  # p_t, r_t, r̂_t, the answers table
                assert p_trace["length"] == int((steps.step <= step).sum())
                assert r_hat_trace["length"] == n_evals
                page.screenshot(path=str(shots / f"02_slider_step{step}.png"))
                seen.append((step, p))
        finally:
            page.context.close()

    assert len({step for step, _ in seen}) == 3, f"the slider did not move to three steps: {seen}"
    assert len({p for _, p in seen}) >= 2, f"p_t shown did not change along the trace: {seen}"
    assert watched.errors == [], f"console errors: {watched.errors}"
    assert watched.refused == [], f"JupyterLab tried to reach the network: {watched.refused}"
