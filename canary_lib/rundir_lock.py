"""One owner per run directory: an exclusive lock held for the whole of a training or an evaluation.

    with hold_run_directory(run.path, "training"):   # RunDirectoryBusyError names the holder if another has it
        ...

Two processes on one run directory (a double-submitted sweep, a notebook and a terminal) would resume from each
other's checkpoints while they are being replaced and append the same answers twice. The lock is `filelock`'s
FileLock on `RUN/.canary.lock` (an OS lock: flock on POSIX), so the kernel releases it when its holder dies in any
way (SIGKILL, a crash, a lost node): a dead holder's lock is never stale, the next run simply takes it. filelock
does not say who holds a lock, so the holder also writes `RUN/.canary.lock.json` (pid, host, what, command,
since), which a refused second process reads for its one-line error. Nested holds in one process (evaluation
inside a notebook that already holds the directory) count up instead of deadlocking. No torch here.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from canary_lib.artifacts import write_json_atomic
from canary_lib.errors import CanaryError

LOCK_NAME = ".canary.lock"
HOLDER_NAME = ".canary.lock.json"

_held: dict[Path, int] = {}
_guard = threading.Lock()


class RunDirectoryBusyError(CanaryError, RuntimeError):
    """Another process holds the run directory (training or evaluating it)."""


def holder_record(what: str) -> dict:
    """Who holds the directory: what this process can say about itself."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "what": what,
        "command": " ".join(sys.argv)[:300],
        "since": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }


def describe_holder(path: Path) -> str:
    """ "process 123 on host h (training since ..., command ...)" from the holder record, or what is known."""
    try:
        record = json.loads((path / HOLDER_NAME).read_text(encoding="utf-8"))
        return (
            f"process {record['pid']} on {record['host']} ({record['what']} since {record['since']}: "
            f"{record['command']})"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (it has not recorded itself yet)"


@contextlib.contextmanager
def hold_run_directory(path: str | Path, what: str) -> Iterator[None]:
    """Hold `path` exclusively for the block (created if missing; removed again if the block left it empty).

    Args:
        path: the run directory.
        what: what the holder does ("training", "evaluation"), for the message another process sees.

    Raises:
        RunDirectoryBusyError: another process holds it; the message names that process.
    """
    path = Path(path).resolve()
    with _guard:
        if path in _held:  # this process holds it already (a nested call)
            _held[path] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield
        finally:
            with _guard:
                _held[path] -= 1
        return
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunDirectoryBusyError(
            f"{path} is in use by {describe_holder(path)}; wait for it to finish or stop it, or use another "
            "directory (one process per run directory)"
        ) from None
    except NotImplementedError as exc:  # a file system without locks (filelock says which)
        raise RunDirectoryBusyError(f"{path}: cannot lock the run directory ({exc})") from None
    try:
        write_json_atomic(path / HOLDER_NAME, holder_record(what))
        with _guard:
            _held[path] = 1
        yield
    finally:
        with _guard:
            _held.pop(path, None)
        with contextlib.suppress(OSError):
            (path / HOLDER_NAME).unlink(missing_ok=True)
        lock.release()  # the lock file stays: removing it could let two processes lock two different files
        if created and [p.name for p in path.iterdir()] == [LOCK_NAME]:
            with contextlib.suppress(OSError):  # a refusal before any work leaves no directory behind
                (path / LOCK_NAME).unlink()
                path.rmdir()
