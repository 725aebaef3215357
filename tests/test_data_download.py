"""Pinned downloads: checksum verification and the cache, on file:// URLs (no network)."""

from __future__ import annotations

import hashlib
import sys
import types
from pathlib import Path

import pytest

from canary_lib.data import DataError
from canary_lib.data import download as dl
from canary_lib.data.download import PinnedFile, fetch_verified, load_hf_dataset, parse_hf_source, resolve_file


def _served(tmp_path: Path, content: bytes = b"- id: a\n") -> tuple[str, str]:
    path = tmp_path / "upstream" / "questions.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path.as_uri(), hashlib.sha256(content).hexdigest()


def test_fetch_verifies_and_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url, digest = _served(tmp_path)
    cached = fetch_verified(url, digest, tmp_path / "cache")
    assert cached.read_bytes() == b"- id: a\n" and cached.is_relative_to(tmp_path / "cache")
    monkeypatch.setattr(dl, "_fetch_bytes", lambda url, what: pytest.fail("cache hit expected"))
    assert fetch_verified(url, digest, tmp_path / "cache") == cached


def test_corrupt_cache_is_refetched(tmp_path: Path) -> None:
    url, digest = _served(tmp_path)
    cached = fetch_verified(url, digest, tmp_path / "cache")
    cached.write_bytes(b"tampered")
    assert fetch_verified(url, digest, tmp_path / "cache").read_bytes() == b"- id: a\n"


def test_checksum_mismatch(tmp_path: Path) -> None:
    url, _ = _served(tmp_path)
    with pytest.raises(DataError, match=f"checksum mismatch for {url}: expected sha256 {'0' * 64}"):
        fetch_verified(url, "0" * 64, tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("questions.yaml"))


def test_download_failure_is_explained(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="could not download .*offline"):
        fetch_verified((tmp_path / "absent.yaml").as_uri(), "0" * 64, tmp_path / "cache")


def test_resolve_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url, digest = _served(tmp_path)
    monkeypatch.setenv("CANARY_CACHE", str(tmp_path / "cc"))
    got = resolve_file(f"{url}#sha256={digest}")
    assert got.sha256 == digest and got.path.is_relative_to(tmp_path / "cc" / "downloads")
    with pytest.raises(DataError, match="is not pinned: append '#sha256="):
        resolve_file(url)
    pin = PinnedFile(url=url, sha256=digest, size=8, repo="someone/repo", commit="c" * 40, path="q.yaml", git_blob="b")
    monkeypatch.setitem(dl.PINNED_FILES, "test/q", pin)
    by_name = resolve_file("pinned:test/q")
    assert by_name.path.read_bytes() == b"- id: a\n" and by_name.revision == f"someone/repo@{'c' * 40}"
    assert resolve_file(url).revision == by_name.revision  # a pinned URL needs no fragment
    with pytest.raises(DataError, match="unknown pinned file 'nope'"):
        resolve_file("pinned:nope")
    with pytest.raises(DataError, match="local file .* not found"):
        resolve_file(str(tmp_path / "none.yaml"))
    local = resolve_file(str(tmp_path / "upstream" / "questions.yaml"))
    assert local.sha256 == digest and local.url is None


def test_pinned_table_is_well_formed() -> None:
    for name, pin in dl.PINNED_FILES.items():
        assert pin.url.startswith("https://raw.githubusercontent.com/") and pin.commit in pin.url, name
        assert len(pin.sha256) == 64 and len(pin.commit) == 40 and pin.url.endswith(pin.path)


def test_parse_hf_source() -> None:
    src = parse_hf_source("hf:allenai/wildguardmix?config=wildguardtrain&revision=abc", default_split="train")
    assert (src.repo, src.config, src.split, src.revision) == ("allenai/wildguardmix", "wildguardtrain", "train", "abc")
    assert parse_hf_source(str(src)) == src
    assert parse_hf_source("hf:a/b", default_config="security").config == "security"
    with pytest.raises(DataError, match="unknown parameter"):
        parse_hf_source("hf:a/b?subset=x")
    with pytest.raises(DataError, match="expected hf:<owner>/<name>"):
        parse_hf_source("hf:justaname")


@pytest.mark.parametrize(
    "message, pattern",
    [
        ("GatedRepoError: 403 Client Error", "access denied: accept the dataset's terms"),
        ("DatasetNotFoundError: Dataset 'a/b' doesn't exist on the Hub", "dataset not found"),
        ("RevisionNotFoundError: Invalid rev id: zzz", "revision 'zzz' not found"),
        ("ConnectionError: no route", "offline"),
    ],
)
def test_hf_errors_are_explained(monkeypatch: pytest.MonkeyPatch, message: str, pattern: str) -> None:
    fake = types.ModuleType("datasets")

    def load_dataset(*args, **kwargs):
        raise RuntimeError(message)

    fake.load_dataset = load_dataset  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", fake)
    monkeypatch.setenv("TOK", "x")
    with pytest.raises(DataError, match=pattern):
        load_hf_dataset(parse_hf_source("hf:a/b?revision=zzz"), token_env="TOK", gated=True)
