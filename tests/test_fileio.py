"""canary_lib.fileio: the one atomic writer (whole file or none, a plain file's mode, no temporary left), file
digests and the git commit."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from canary_lib import fileio
from canary_lib.fileio import git_commit, sha256_file, write_bytes_atomic, write_text_atomic

ROOT = Path(__file__).resolve().parents[1]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_writes_the_bytes_creates_parents_and_returns_the_path(tmp_path):
    target = tmp_path / "a" / "b" / "file.bin"
    assert write_bytes_atomic(target, b"\x00\x01data") == target
    assert target.read_bytes() == b"\x00\x01data"
    assert write_text_atomic(str(target), "grüße\n") == target  # str paths too; text is UTF-8
    assert target.read_bytes() == "grüße\n".encode()
    assert _leftovers(target.parent) == []


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077, 0o002])
def test_mode_is_a_plain_writes_under_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        plain = tmp_path / "plain.txt"
        with open(plain, "w") as fh:
            fh.write("x")
        atomic = write_text_atomic(tmp_path / "atomic.txt", "x")
        replaced = tmp_path / "replaced.txt"
        replaced.write_text("old")
        os.chmod(replaced, 0o600)  # an existing file's mode does not carry over: the new file is a new file
        write_text_atomic(replaced, "new")
    finally:
        os.umask(old)
    assert _mode(plain) == 0o666 & ~umask
    assert _mode(atomic) == _mode(plain) and _mode(replaced) == _mode(plain)
    assert _mode(atomic) != 0o600 or umask == 0o077  # not mkstemp's 0600


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    target.write_text('{"old": 1}\n')

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space left"):
        write_text_atomic(target, '{"new": 2}\n')
    assert target.read_text() == '{"old": 1}\n'
    assert _leftovers(tmp_path) == []


def test_an_error_while_writing_removes_the_temporary(tmp_path):
    target = tmp_path / "data.bin"
    with pytest.raises(TypeError):
        write_bytes_atomic(target, "not bytes")  # type: ignore[arg-type]
    assert not target.exists() and _leftovers(tmp_path) == []


def test_an_interrupt_during_the_rename_removes_the_temporary(tmp_path, monkeypatch):
    target = tmp_path / "steps.csv"
    target.write_text("step\n1\n")

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(fileio.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):  # BaseException too: Ctrl-C must not leave a temporary behind
        write_text_atomic(target, "step\n1\n2\n")
    assert target.read_text() == "step\n1\n" and _leftovers(tmp_path) == []


def test_a_directory_in_the_way_fails_cleanly(tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(OSError):
        write_text_atomic(tmp_path / "taken", "x")
    assert (tmp_path / "taken").is_dir() and _leftovers(tmp_path) == []


def test_the_temporary_is_a_hidden_tmp_beside_the_target(tmp_path, monkeypatch):
    """`.<name>.<random>.tmp` in the target's folder: same file system (the rename is atomic), and the name
    RunDir's clean-up of a killed process's leftovers matches."""
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append((Path(src), Path(dst), Path(src).read_bytes()))
        real_replace(src, dst)

    monkeypatch.setattr(fileio.os, "replace", spy)
    write_text_atomic(tmp_path / "config.yaml", "a: 1\n")
    [(src, dst, content)] = seen
    assert src.parent == dst.parent == tmp_path and content == b"a: 1\n"
    assert re.fullmatch(r"\.config\.yaml\.[0-9a-f]{8}\.tmp", src.name)


def test_fsync_unless_asked_not_to(tmp_path, monkeypatch):
    calls = []
    real_fsync = os.fsync
    monkeypatch.setattr(fileio.os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd)))
    write_text_atomic(tmp_path / "durable", "x")
    assert len(calls) == 1
    write_text_atomic(tmp_path / "progress", "x", fsync=False)
    assert len(calls) == 1 and (tmp_path / "progress").read_text() == "x"


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, (5 << 19) + 7])
def test_sha256_file_equals_hashlib(tmp_path, size):
    data = os.urandom(size)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert sha256_file(str(path)) == sha256_file(path)


def test_the_package_writes_and_hashes_through_fileio():
    """One writer and one digest: the modules that had their own now use these very functions."""
    from canary_lib import artifacts, config_loader, job_progress, train
    from canary_lib.data import _io, download, prepare, questions
    from canary_lib.organism import prepare as organism_prepare

    assert artifacts.write_text_atomic is write_text_atomic and config_loader.git_commit is git_commit
    assert not hasattr(artifacts, "git_commit")  # one home: fileio
    for module in (_io, questions, prepare, organism_prepare, job_progress):
        assert module.write_text_atomic is write_text_atomic, module.__name__
    assert download.write_bytes_atomic is write_bytes_atomic
    for module in (prepare, download, train):
        assert module.sha256_file is sha256_file, module.__name__
    # no other temporary-file writer in the package
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "canary_lib").rglob("*.py")
        if p.name != "fileio.py" and re.search(r"mkstemp|NamedTemporaryFile", p.read_text())
    ]
    assert offenders == []


def test_artifacts_writers_use_it(tmp_path):
    from canary_lib.artifacts import CONTROLLER_COLUMNS, write_csv_atomic, write_json_atomic

    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "m.json", {"b": 1, "a": 2.5})
        write_csv_atomic(tmp_path / "c.csv", [], CONTROLLER_COLUMNS)
    finally:
        os.umask(old)
    assert (tmp_path / "m.json").read_text() == '{\n  "a": 2.5,\n  "b": 1\n}\n'
    assert _mode(tmp_path / "m.json") == _mode(tmp_path / "c.csv") == 0o644  # was mkstemp's 0600
    assert _leftovers(tmp_path) == []


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_commit(tmp_path):
    def git(*args):
        return subprocess.run(
            ["git", "-C", str(tmp_path), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    assert git_commit(tmp_path) == "unknown"  # not a repository
    git("init", "-q")
    git("config", "user.email", "t@example.invalid")
    git("config", "user.name", "t")
    (tmp_path / "f.txt").write_text("1\n")
    git("add", "f.txt")
    git("commit", "-q", "-m", "one")
    sha = git("rev-parse", "HEAD")
    assert re.fullmatch(r"[0-9a-f]{40}", sha)
    assert git_commit(tmp_path) == sha
    (tmp_path / "untracked.txt").write_text("ignored\n")
    assert git_commit(tmp_path) == sha  # untracked files do not make it dirty
    (tmp_path / "f.txt").write_text("2\n")
    assert git_commit(str(tmp_path)) == sha + "+dirty"


def test_git_commit_without_git(monkeypatch, tmp_path):
    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(fileio.subprocess, "run", no_git)
    assert git_commit(tmp_path) == "unknown"
