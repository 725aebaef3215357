"""Ctrl-C (SIGINT) and SIGTERM (SLURM's preemption, `kill`) stop training between two steps, never inside one.

    stop = StopRequest.install()      # when training takes the run directory (model loading included)
    ...                               # after each step: if stop.signum is not None: checkpoint, raise stop.error(...)
    stop.uninstall()                  # the previous handlers again

The first signal only records itself and prints one line; the loop finishes the step (and its canary evaluation),
writes a checkpoint and raises `TrainingInterrupted`, which the command line prints as one line (exit 2). The
resumed run continues from that checkpoint exactly as an uninterrupted run would (tests/test_nothing_silently_
wrong_2.py). A second signal stops at once (KeyboardInterrupt), losing only the steps since the last checkpoint.
Handlers can only be installed in the main thread; elsewhere the signals keep their default behaviour.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

from canary_lib.errors import CanaryError

SIGNAL_AFTER_STEP_ENV = "CANARY_SIGNAL_AFTER_STEP"
"""Test hook: "STEP:NAME" sends signal NAME (e.g. SIGTERM) to this process right after step STEP."""
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(CanaryError, RuntimeError):
    """Training stopped on a signal after a whole step and a checkpoint; the same command resumes it."""


class StopRequest:
    """Which stop signal arrived (signum, None until one does)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @classmethod
    def install(cls) -> StopRequest:
        request = cls()
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                request._previous[sig] = signal.signal(sig, request._handle)
        return request

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:  # noqa: ARG002 (signal's signature)
        if self.signum is not None:  # asked twice: stop now
            raise KeyboardInterrupt
        self.signum = signum
        sys.stderr.write(
            f"\ncanary: {signal.Signals(signum).name} received: stopping after the current step, "
            "with a checkpoint (send it again to stop at once)\n"
        )
        sys.stderr.flush()

    def error(self, run_path: Any, step: int | None) -> TrainingInterrupted:
        """The one line: after which step the checkpoint was written (None: before the first step of this
        session, while loading, with nothing new to save)."""
        name = signal.Signals(self.signum).name if self.signum is not None else "a signal"
        if step is None:
            return TrainingInterrupted(
                f"{run_path}: stopped by {name} before the first step of this session; "
                "nothing new to save: run the same command again to resume"
            )
        return TrainingInterrupted(
            f"{run_path}: stopped by {name} after step {step}; checkpoint written: run the same command again to resume"
        )


def maybe_send_test_signal(step: int) -> None:
    """The SIGNAL_AFTER_STEP_ENV test hook."""
    value = os.environ.get(SIGNAL_AFTER_STEP_ENV, "")
    at, _, name = value.partition(":")
    if at == str(step):
        os.kill(os.getpid(), getattr(signal, name or "SIGINT"))
