"""The sweep's progress line: counts, elapsed time and the ETA from the jobs that executed.

    .venv/bin/pytest tests/test_sweep_progress.py -q
"""

from __future__ import annotations

from canary_lib.sweep import JobOutcome
from canary_lib.sweep_progress import SweepProgress, format_duration


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_format_duration() -> None:
    assert format_duration(0) == "0:00"
    assert format_duration(61.4) == "1:01"
    assert format_duration(3725) == "1:02:05"


def test_progress_counts_jobs_and_estimates_from_executed_ones() -> None:
    clock = Clock()
    progress = SweepProgress(total=6, parallel=2, clock=clock)
    assert progress.line() == "[0/6 jobs] 0 ok, 0 failed, 0 running, 6 waiting | elapsed 0:00 | ETA ?"
    progress.finished(JobOutcome("prepare", ok=True))  # found complete: takes no time, says nothing about the rest
    progress.started("a")
    progress.started("b")
    assert progress.eta_seconds() is None
    clock.now += 100
    progress.finished(JobOutcome("a", ok=True, seconds=100.0, executed=["train", "evaluate"]))
    # 4 jobs left, 2 at a time, 100 s each: two rounds.
    assert progress.line() == "[2/6 jobs] 2 ok, 0 failed, 1 running, 3 waiting | elapsed 1:40 | ETA ~3:20"
    progress.finished(JobOutcome("b", ok=False, seconds=300.0, executed=[], error="boom"))
    progress.finished(JobOutcome("c", ok=False, error="skipped: reference run failed"))  # never started
    assert progress.failed == 2 and progress.running == set()
    assert progress.eta_seconds() == 100.0  # 2 jobs left: one round
