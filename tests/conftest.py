"""Test-session set-up and fixtures shared by the end-to-end tests (helpers in _e2e.py and _browser.py).

The whole test process runs pinned CPU numerics (canary_lib/numerics.py; set before torch is imported), so what
the tests compute does not depend on the CPU; the organism profile's `native` means "whatever the process runs",
so its runs here use the pinned kernels and the pinned base model (organism.pretrain.build_numerics).

    .venv/bin/pytest -m browser -q        # the browser tests only (Chromium: apt-get install chromium)
    .venv/bin/pytest -m slurm -q          # the single-node SLURM test (apt-get install slurm-wlm munge; root)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _browser import CHROMIUM_ARGS, REQUIRE_ENV, browser_problem
from _e2e import TINY_METHODS, TINY_SWEEP_ENV, TinySweep, need, run_sweep_in, used_artifacts, write_tiny_sweep
from canary_lib.image_export import find_browser
from canary_lib.numerics import pin_cpu_numerics

pin_cpu_numerics()  # none of the imports above imports torch

import torch  # noqa: E402  (after pinning)

# One intra-op thread, as pinned runs use: with two, MKL and OpenMP may split work differently on a busy machine,
# and two runs of the same seed in one test differed in the last bits of the loss (measured).
torch.set_num_threads(1)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001 (pytest's signature)
    for root in used_artifacts:
        terminalreporter.write_line(f"screenshots kept by the browser tests: {root.resolve()}")


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory: pytest.TempPathFactory) -> TinySweep:
    """The tiny organism's sweep (base row, TINY_METHODS, seed 42), run once per test session for every test
    that reads it, also under pytest-xdist: the first worker to ask runs it (under a file lock) and the others
    wait for it and read its exit status. (pytest-xdist's `--dist loadgroup` would keep these tests on one
    worker, but it does not group with pytest 9: measured, each worker ran its own sweep.)

    Under CANARY_TINY_SWEEP_DIR=<dir> the sweep runs in that directory instead of a fresh temporary one, so a
    session interrupted (or a run killed) half-way resumes there: only what is missing is run again, and the
    tests then check the whole sweep as usual."""
    from filelock import FileLock

    session = os.environ.get("PYTEST_XDIST_TESTRUNUID", "")  # the same in every worker of one session
    if os.environ.get(TINY_SWEEP_ENV):
        root = Path(os.environ[TINY_SWEEP_ENV])
    elif session:  # the workers' common base directory
        root = tmp_path_factory.getbasetemp().parent / "tiny_sweep"
    else:
        root = tmp_path_factory.mktemp("tiny_sweep")
    root.mkdir(parents=True, exist_ok=True)
    sweep_file = write_tiny_sweep(
        root, TINY_METHODS, {"kind": "local", "parallel": 2, "threads_per_job": 1, "poll_s": 0.5}
    )
    status_file = root / f".status-{session or os.getpid()}"
    with FileLock(str(root) + ".lock"):
        if not status_file.exists():
            status_file.write_text(str(run_sweep_in(root, sweep_file)))
        status = int(status_file.read_text())
    return TinySweep(root, sweep_file, status)


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """A headless Chromium (Playwright Browser), shared by the session's browser tests."""
    need(browser_problem(), REQUIRE_ENV)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=find_browser(), args=CHROMIUM_ARGS)
        yield browser
        browser.close()
