"""Files written whole or not at all, file digests, and the git commit of the source tree.

The one place the package writes a file atomically: the bytes go to a temporary file in the same directory
(`.<name>.<random>.tmp`, which `RunDir` cleans up after a killed process), are flushed and fsynced, and the
temporary file is renamed over the target with `os.replace`. A reader sees the old file or the new one, never half
of one; on any error the temporary file is removed and an existing target is left as it was. The file gets the
permissions a plain `open(path, "w")` would give (0666 less the umask), not mkstemp's 0600.

This module is the bottom of the package: it imports nothing of canary_lib.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
from pathlib import Path

_CHUNK = 1 << 20


def write_bytes_atomic(path: str | Path, data: bytes, *, fsync: bool = True) -> Path:
    """Write `data` to `path` atomically (module docstring), creating the parent directories; returns the path.

    `fsync=False` skips the flush to disk, for files only a person watching reads (a job's progress), where losing
    the last write in a power cut does not matter but an fsync every few seconds would cost.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str, *, fsync: bool = True) -> Path:
    """`text` as UTF-8, written atomically (`write_bytes_atomic`); returns the path."""
    return write_bytes_atomic(path, text.encode("utf-8"), fsync=fsync)


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new, exclusively created `.<name>.<random>.tmp` beside `path`, opened for writing.

    Created with mode 0666 so the kernel applies the umask, as for any plain open(); reading the umask instead
    (os.umask) would briefly change it for every thread of the process.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


def sha256_file(path: str | Path) -> str:
    """The hex SHA-256 of a file's bytes, read in 1 MiB blocks (a model's weights never sit in memory twice)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def git_commit(start: str | Path | None = None) -> str:
    """The commit of the checkout holding `start` (default: the package's own directory), with "+dirty" when
    tracked files have uncommitted changes; "unknown" outside git or without a git executable."""
    where = str(start or Path(__file__).resolve().parent)
    try:
        sha = subprocess.run(
            ["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
