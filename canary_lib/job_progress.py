"""Where a running job is, for the sweep's status line: each long loop writes a small progress file.

    progress = ProgressFile("train", total=1014)      # writes to $CANARY_PROGRESS_FILE, if set
    progress.update(340)                              # at most every `every_s` seconds, and at the end
    describe_job("canary/seed42", read_progress(path), now)   # 'canary/seed42 train 340/1014 ETA 2:10'

A sweep's jobs run notebooks in kernels whose output lands in the executed notebook, not in the terminal of
`make reproduce`. The sweep runner therefore gives each job its own file (`PROGRESS_ENV`), and the loops that
take minutes (pre-training, training, generating the evaluation's answers) write their stage, step and total
there; the runner reads the files of the running jobs into its status line (canary_lib.sweep_progress). Without
the variable nothing is written. No torch here.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from canary_lib.fileio import write_text_atomic
from canary_lib.sweep_progress import format_duration

PROGRESS_ENV = "CANARY_PROGRESS_FILE"
"""The file a job's loops report to (set by the sweep runner for each job)."""


class ProgressFile:
    """One loop's progress (stage, done of total, when it started), rewritten atomically as it advances."""

    def __init__(
        self,
        stage: str,
        total: int,
        *,
        initial: int = 0,
        path: str | Path | None = None,
        every_s: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        where = path if path is not None else os.environ.get(PROGRESS_ENV)
        self.path = Path(where) if where else None
        self.stage, self.total, self.every_s, self.clock = stage, total, every_s, clock
        self.initial = initial
        """Already done when this process started (a resumed run): the pace counts only what it does itself."""
        self.started = clock()
        self._written = float("-inf")

    def update(self, done: int) -> None:
        """Record `done` of `total`; written when `every_s` has passed since the last write, or at the end."""
        now = self.clock()
        if self.path is None or (done < self.total and now - self._written < self.every_s):
            return
        self._written = now
        record = {
            "stage": self.stage,
            "done": done,
            "total": self.total,
            "initial": self.initial,
            "started": self.started,
            "updated": now,
        }
        try:  # no fsync: only a person watching reads it, and it is rewritten every few seconds
            write_text_atomic(self.path, json.dumps(record), fsync=False)
        except OSError:  # progress is for a person watching: never a reason for the job to fail
            pass


def read_progress(path: str | Path) -> dict | None:
    """The last record a job wrote, or None (not started yet, or unreadable)."""
    try:
        record = json.loads(Path(path).read_text())
        return record if {"stage", "done", "total", "started"} <= set(record) else None
    except (OSError, ValueError, TypeError):
        return None


def describe_job(name: str, record: dict | None, now: float) -> str:
    """'name stage done/total ETA m:ss' (ETA from this process's mean pace so far), or just the name."""
    if record is None:
        return name
    done, total, initial = int(record["done"]), int(record["total"]), int(record.get("initial", 0))
    text = f"{name} {record['stage']} {done}/{total}"
    if initial < done < total:
        left = (now - float(record["started"])) / (done - initial) * (total - done)
        text += f" ETA {format_duration(left)}"
    return text
