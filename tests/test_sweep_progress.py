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


def test_status_line_is_due_without_events_and_lists_running_jobs() -> None:
    from canary_lib.sweep_progress import STATUS_EVERY_S

    clock = Clock()
    progress = SweepProgress(total=3, parallel=2, clock=clock)
    assert not progress.line_due()
    clock.now += STATUS_EVERY_S
    assert progress.line_due()  # a long job: a line even though nothing finished
    progress.started("prepare")
    line = progress.line(["prepare pre-training 120/600 ETA 8:00"])
    assert line.endswith("| ETA ? | prepare pre-training 120/600 ETA 8:00")
    assert not progress.line_due()  # printing a line resets the clock


def test_progress_file_round_trip_throttle_and_eta(tmp_path, monkeypatch) -> None:
    from canary_lib.job_progress import PROGRESS_ENV, ProgressFile, describe_job, read_progress

    clock = Clock()
    path = tmp_path / "jobs" / "canary_seed42.json"
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    ProgressFile("train", 10, clock=clock).update(10)  # no file named: nothing written, no error
    monkeypatch.setenv(PROGRESS_ENV, str(path))
    progress = ProgressFile("train", 1014, every_s=2.0, clock=clock)
    assert not list(tmp_path.iterdir()) and read_progress(path) is None
    assert describe_job("canary/seed42", None, clock.now) == "canary/seed42"
    clock.now += 100
    progress.update(340)
    clock.now += 1
    progress.update(341)  # within every_s: not written
    record = read_progress(path)
    assert record["done"] == 340 and record["total"] == 1014 and record["stage"] == "train"
    # 340 steps in the 101 s since the loop started: the 674 left at that pace take 200 s
    assert describe_job("canary/seed42", record, clock.now) == "canary/seed42 train 340/1014 ETA 3:20"
    progress.update(1014)  # the end is always written
    assert read_progress(path)["done"] == 1014
    assert describe_job("x", read_progress(path), clock.now) == "x train 1014/1014"
    resumed = ProgressFile("train", 1014, initial=900, clock=clock)  # a resumed run: its own pace only
    clock.now += 57
    resumed.update(957)
    assert describe_job("x", read_progress(path), clock.now) == "x train 957/1014 ETA 0:57"
    path.write_text("{not json")
    assert read_progress(path) is None
