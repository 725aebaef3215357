"""A sweep's progress for a person at the terminal: after every finished job, one status line.

    progress = SweepProgress(total=24, parallel=2)
    progress.started("canary/seed42"); ...; progress.finished(outcome)
    print(progress.line())   # [ 5/24 jobs] 4 ok, 1 failed, 2 running, 17 waiting | elapsed 3:12 | ETA ~9:40
    print(progress.line(["canary/seed42 train 340/1014 ETA 2:10"]))   # every STATUS_EVERY_S while jobs run

A line per event rather than a redrawn bar, because sweeps run in terminals, SLURM logs and CI logs alike,
where carriage-return redraws turn into noise. The ETA is the mean duration of the jobs that executed
something in this invocation (jobs found complete take no time and say nothing about the others) times the
rounds of `parallel` jobs still to go; it is a rough guide and is shown as "?" until one job has executed.
This module imports no torch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

STATUS_EVERY_S = 30.0
"""While jobs run, a status line at least this often, with each running job's stage and step."""


def format_duration(seconds: float) -> str:
    """h:mm:ss, or m:ss under an hour."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class SweepProgress:
    """Counts of a sweep's jobs (ok, failed, running, waiting), the elapsed time and an ETA."""

    def __init__(self, total: int, parallel: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.parallel, self.clock = total, max(1, parallel), clock
        self.start = clock()
        self.ok = self.failed = 0
        self.running: set[str] = set()
        self.durations: list[float] = []
        self.last_line = self.start

    def started(self, name: str) -> None:
        self.running.add(name)

    def finished(self, outcome: Any) -> None:
        """Count a JobOutcome (also one that never ran, e.g. skipped because its reference run failed)."""
        self.running.discard(outcome.name)
        if outcome.ok:
            self.ok += 1
        else:
            self.failed += 1
        if outcome.executed:
            self.durations.append(outcome.seconds)

    @property
    def done(self) -> int:
        return self.ok + self.failed

    def eta_seconds(self) -> float | None:
        """Rough seconds left: mean executed-job duration x rounds of `parallel` jobs left; None before any."""
        left = self.total - self.done
        if left <= 0:
            return 0.0
        if not self.durations:
            return None
        return sum(self.durations) / len(self.durations) * math.ceil(left / self.parallel)

    def line(self, jobs: list[str] | None = None) -> str:
        """The status line; `jobs`: where each running job is (canary_lib.job_progress.describe_job), appended."""
        self.last_line = self.clock()
        waiting = max(0, self.total - self.done - len(self.running))
        eta = self.eta_seconds()
        width = len(str(self.total))
        return (
            f"[{self.done:>{width}}/{self.total} jobs] {self.ok} ok, {self.failed} failed, "
            f"{len(self.running)} running, {waiting} waiting | elapsed {format_duration(self.clock() - self.start)}"
            f" | ETA {'?' if eta is None else '~' + format_duration(eta)}" + "".join(f" | {job}" for job in jobs or [])
        )

    def line_due(self, every_s: float | None = None) -> bool:
        """True when no status line was printed for `every_s` (default STATUS_EVERY_S) seconds, so that a long
        job never means minutes of silence."""
        return self.clock() - self.last_line >= (STATUS_EVERY_S if every_s is None else every_s)
