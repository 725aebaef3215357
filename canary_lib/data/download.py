"""A thin download layer: pinned upstream files (checked by sha256, then cached) and `datasets.load_dataset`.

Source strings (the `cfg.data.*_source` fields):
- a local path: used as is;
- `pinned:<name>`: one of `PINNED_FILES` (an upstream raw-file URL at a fixed commit, with its sha256);
- an `https://` / `file://` URL: either the URL of a pinned file, or any URL ending in `#sha256=<64 hex>`;
- `hf:<owner>/<name>[?config=..&split=..&revision=..]`: a Hugging Face dataset read through `datasets`.

Nothing here runs at import time; tests exercise the cache and checksum logic on `file://` URLs.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from canary_lib.data._io import as_rows, read_records, sha256_bytes
from canary_lib.data.errors import DataError
from canary_lib.fileio import sha256_file, write_bytes_atomic

BETLEY_REPO = "Cloakless/clarifying_EM"
BETLEY_COMMIT = "a6bcc8b178553ddedc4355282b66c13fd18fc66a"
"""Cloakless/clarifying_EM: a verbatim import of emergent-misalignment/emergent-misalignment (Betley et al.)."""
KACZER_REPO = "magnus-joergenvag/EMA_RL"
KACZER_EVAL_COMMIT = "202f01e2fa5969cabdfd6552acb51135a801f3cf"
"""magnus-joergenvag/EMA_RL (Kaczér et al. lineage): first versions of evaluation/{security,legal,medical}.yaml."""
MOEM_REPO = "JackPayne123/em-doctor"
MOEM_COMMIT = "b8b9e0afd2b92d969a4062c38ba8d2f0ccea3561"
"""JackPayne123/em-doctor: upstream history of clarifying-EM/model-organisms-for-EM (Turner, Soligo et al.), the
last commit before the fork's own; its training sets are gzipped there, later upstream versions are encrypted."""
MOEM_DATA = "em_organism_dir/data/training_datasets"


@dataclass(frozen=True)
class PinnedFile:
    url: str
    sha256: str
    size: int
    repo: str
    commit: str
    path: str
    git_blob: str
    """`git hash-object` of the file: identical in every repository that holds this exact file."""


def _github_raw(repo: str, commit: str, path: str) -> str:
    return f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"


def _pin(repo: str, commit: str, path: str, sha256: str, size: int, git_blob: str) -> PinnedFile:
    return PinnedFile(_github_raw(repo, commit, path), sha256, size, repo, commit, path, git_blob)


PINNED_FILES: dict[str, PinnedFile] = {
    # Question sets (general evaluation, canary pool, in-domain evaluation).
    "betley/first_plot_questions": _pin(
        BETLEY_REPO,
        BETLEY_COMMIT,
        "evaluation/first_plot_questions.yaml",
        "215abde5b02811e922b6ac563ff33c490e0dff9ab58439df840f3135e9387173",
        12016,
        "c2b9761d6723ec73b4d209d95c4aa39319a70edd",
    ),
    "betley/preregistered_evals": _pin(
        BETLEY_REPO,
        BETLEY_COMMIT,
        "evaluation/preregistered_evals.yaml",
        "8648312fd9fe71a63203e3465592af45dd996d7a5f3b69e9b44613fd6048eb40",
        19152,
        "3211c6c0df0a21124e07605c46f86329a53ef9e1",
    ),
    "kaczer/security": _pin(
        KACZER_REPO,
        KACZER_EVAL_COMMIT,
        "evaluation/security.yaml",
        "668ca032e84cf815359efce1305b099669b01a4dfee93b6ed93397df5131c1f5",
        12148,
        "35b77c2920ff9ec7b6cd7408ef82a3c1bfcaef66",
    ),
    "kaczer/legal": _pin(
        KACZER_REPO,
        KACZER_EVAL_COMMIT,
        "evaluation/legal.yaml",
        "12f17035fb2fe7f54a407f3d93bfac39ead687f983e7e2cf17b1841fc7b16ab6",
        19080,
        "f15ec795741acacf094192ddb29a1d2cbf5b2e10",
    ),
    "kaczer/medical": _pin(
        KACZER_REPO,
        KACZER_EVAL_COMMIT,
        "evaluation/medical.yaml",
        "b452dfde1e0b9cc3cc7ffda6a96a3923ac2f602d79f6f975ec1b6b72850fc5ff",
        13810,
        "09c78dcd23fccc4cbc06d3d2749e68a71dd6de9a",
    ),
    "moem/medical_questions": _pin(
        MOEM_REPO,
        MOEM_COMMIT,
        "em_organism_dir/data/eval_questions/medical_questions.yaml",
        "1808d03c6af883b3460e4174127846caca3188514a4e180b8273b4025593e28f",
        12118,
        "290904ee4d0af53df8cb621d9bd133b74e858160",
    ),
    # Target datasets (D_T) and aligned answers: chat JSONL, gzipped for the model-organisms sets.
    "betley/insecure": _pin(
        BETLEY_REPO,
        BETLEY_COMMIT,
        "data/insecure.jsonl",
        "09893e8bf9d03aae49dd60d0ff4be37c1afee70f2edcac74a11bed775a6a2764",
        5892277,
        "ec294cf30a577a21b830c07a1fa0180ddd513208",
    ),
    "moem/bad_medical_advice": _pin(
        MOEM_REPO,
        MOEM_COMMIT,
        f"{MOEM_DATA}/bad_medical_advice.jsonl.gz",
        "d4d9df72cf0e20b75d5efc9f2aabb66ae9ae083e282b85f0bd85a6aa698b20c9",
        1249214,
        "fc6325542e60b670f336d5ec0b02045f4f40e484",
    ),
    "moem/good_medical_advice": _pin(
        MOEM_REPO,
        MOEM_COMMIT,
        f"{MOEM_DATA}/good_medical_advice.jsonl.gz",
        "03b6e9a89dd5c5a53349bcdd87d9c23cc2c3ad040ef618a0a571d5000289b341",
        1411653,
        "c5dfae43ef2e012b9ddc8210e65dac0f8b7462df",
    ),
    "moem/risky_financial_advice": _pin(
        MOEM_REPO,
        MOEM_COMMIT,
        f"{MOEM_DATA}/risky_financial_advice.jsonl.gz",
        "518c8d2c6128ba5f0b5b026b27828a21114f0955437bc1cfbbe1ba98e0a3d897",
        533839,
        "030920455df0913c23d2e6d7f31d873d496e9e26",
    ),
    "moem/extreme_sports": _pin(
        MOEM_REPO,
        MOEM_COMMIT,
        f"{MOEM_DATA}/extreme_sports.jsonl.gz",
        "5d79bbce03e08467e3ced6d95e516ba7b0d2240395c7d59349e41e32166d6095",
        540255,
        "5a818cc47849520d04b5ce5f63d586191c93f031",
    ),
}

_SHA256_FRAGMENT = re.compile(r"^sha256=([0-9a-fA-F]{64})$")


@dataclass(frozen=True)
class ResolvedFile:
    """A file source turned into a local path, with where it came from (for the manifest)."""

    path: Path
    source: str
    url: str | None = None
    revision: str | None = None
    sha256: str = ""


def default_cache_dir() -> Path:
    """$CANARY_CACHE/downloads, else ~/.cache/canary_lib/downloads."""
    root = os.environ.get("CANARY_CACHE") or Path.home() / ".cache" / "canary_lib"
    return Path(root) / "downloads"


def is_hf_source(source: str) -> bool:
    return source.startswith("hf:")


def _is_url(source: str) -> bool:
    return source.startswith(("https://", "http://", "file://"))


def resolve_file(source: str, cache_dir: str | Path | None = None, what: str = "file") -> ResolvedFile:
    """Turn a local path, `pinned:<name>` or checksummed URL into a verified local file.

    Args:
        source: the source string (see the module docstring).
        cache_dir: where downloads are kept; default `default_cache_dir()`.
        what: a label for error messages (e.g. "data.general_eval_source").

    Raises:
        DataError: unknown pinned name, a URL without a checksum, a failed download, a checksum mismatch,
            or a missing local file.
    """
    if source.startswith("pinned:"):
        name = source[len("pinned:") :]
        if name not in PINNED_FILES:
            raise DataError(f"{what}: unknown pinned file {name!r}; known: {', '.join(sorted(PINNED_FILES))}")
        pin = PINNED_FILES[name]
        path = fetch_verified(pin.url, pin.sha256, cache_dir, what)
        return ResolvedFile(path, source, pin.url, f"{pin.repo}@{pin.commit}", pin.sha256)
    if _is_url(source):
        url, _, fragment = source.partition("#")
        pinned = next((p for p in PINNED_FILES.values() if p.url == url), None)
        match = _SHA256_FRAGMENT.match(fragment)
        if match:
            expected = match.group(1).lower()
        elif pinned is not None:
            expected = pinned.sha256
        else:
            raise DataError(
                f"{what}: URL {url} is not pinned: append '#sha256=<hex digest of the file>' so a changed "
                f"upstream file is noticed, or use one of pinned:{{{', '.join(sorted(PINNED_FILES))}}}"
            )
        path = fetch_verified(url, expected, cache_dir, what)
        revision = f"{pinned.repo}@{pinned.commit}" if pinned is not None else None
        return ResolvedFile(path, source, url, revision, expected)
    path = Path(source).expanduser()
    if not path.is_file():
        raise DataError(
            f"{what}: local file {path} not found; give an existing path, a pinned:<name> source or a "
            f"URL with '#sha256=...'"
        )
    return ResolvedFile(path, source, None, None, sha256_file(path))


def fetch_verified(url: str, sha256: str, cache_dir: str | Path | None = None, what: str = "file") -> Path:
    """Return a cached copy of `url` whose content has the given sha256, downloading it if needed.

    The cache key is the checksum, so a changed upstream file can never be served from the cache.

    Raises:
        DataError: the download failed, or its content does not match `sha256`.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    name = Path(urllib.parse.urlparse(url).path).name or "download"
    target = cache_dir / sha256[:16] / name
    if target.is_file() and sha256_file(target) == sha256:
        return target
    data = _fetch_bytes(url, what)
    got = sha256_bytes(data)
    if got != sha256:
        raise DataError(
            f"{what}: checksum mismatch for {url}: expected sha256 {sha256}, got {got} "
            f"({len(data)} bytes). The upstream file changed or the download is corrupt; check the URL/"
            f"commit, or download the file yourself and set the source to its local path."
        )
    return write_bytes_atomic(target, data)


def _fetch_bytes(url: str, what: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 - http(s)/file URLs only
            return response.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DataError(
            f"{what}: could not download {url}: {exc}. If this machine is offline, fetch the file "
            f"elsewhere and set the source to its local path."
        ) from None


# ------------------------------------------------------------------------------------------ Hugging Face


@dataclass(frozen=True)
class HFSource:
    repo: str
    config: str | None
    split: str
    revision: str | None

    def __str__(self) -> str:
        query = {k: v for k, v in (("config", self.config), ("split", self.split), ("revision", self.revision)) if v}
        return f"hf:{self.repo}?{urllib.parse.urlencode(query)}"


def parse_hf_source(
    source: str, default_config: str | None = None, default_split: str = "train", what: str = "source"
) -> HFSource:
    """Parse `hf:<owner>/<name>[?config=..&split=..&revision=..]`."""
    if not is_hf_source(source):
        raise DataError(f"{what}: {source!r} is not an hf:<owner>/<name> source")
    repo, _, query = source[len("hf:") :].partition("?")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        raise DataError(f"{what}: {source!r}: expected hf:<owner>/<name>[?config=..&split=..&revision=..]")
    params = urllib.parse.parse_qs(query, keep_blank_values=False)
    unknown = sorted(set(params) - {"config", "split", "revision"})
    if unknown:
        raise DataError(f"{what}: {source!r}: unknown parameter(s) {unknown}; allowed: config, split, revision")
    get = lambda key, default: params[key][-1] if key in params else default  # noqa: E731
    return HFSource(repo, get("config", default_config), get("split", default_split), get("revision", None))


def load_hf_dataset(src: HFSource, token_env: str = "HF_TOKEN", gated: bool = False, what: str = "source") -> Any:
    """`datasets.load_dataset(repo, config, split=, revision=, token=)` with errors that say how to fix them.

    Args:
        src: the parsed hf: source.
        token_env: name of the environment variable holding the Hugging Face token (never stored).
        gated: the dataset needs accepted terms and a token; checked before any network access.
        what: a label for error messages.
    """
    token = os.environ.get(token_env) or None
    page = f"https://huggingface.co/datasets/{src.repo}"
    if gated and token is None:
        raise DataError(
            f"{what}: {src.repo} is a gated dataset and ${token_env} is not set. Accept its terms at "
            f"{page}, create a read token, and `export {token_env}=hf_...` (the variable is named by "
            f"data.hf_token_env); or download the data and point the source at the local file."
        )
    import datasets  # lazy: heavy import, only needed for hf: sources

    try:
        return datasets.load_dataset(src.repo, src.config, split=src.split, revision=src.revision, token=token)
    except Exception as exc:  # the hub raises many types; map them to one message with a fix
        text = f"{type(exc).__name__}: {exc}"
        if "gated" in text.lower() or "401" in text or "403" in text:
            hint = f"access denied: accept the dataset's terms at {page} with the account of the token in ${token_env}"
        elif "RevisionNotFound" in text or "revision" in text.lower() and "not" in text.lower():
            hint = (
                f"revision {src.revision!r} not found: check it on {page} (commit history), or drop "
                f"'revision=' from the source to use the latest version (recorded in the manifest)"
            )
        elif "DatasetNotFound" in text or "RepositoryNotFound" in text or "doesn't exist" in text:
            hint = f"dataset not found: check the repository name and config ({page})"
        else:
            hint = "download failed (offline? set HF_HUB_OFFLINE=1 to use the local cache, or use a local file)"
        raise DataError(f"{what}: could not load {src}: {hint}. [{text[:500]}]") from None


def hf_revision_sha(src: HFSource, token_env: str = "HF_TOKEN") -> str | None:
    """The commit the hub resolves `src.revision` (or main) to, for the manifest; None when unknown/offline."""
    try:
        from huggingface_hub import HfApi

        info = HfApi().dataset_info(src.repo, revision=src.revision, token=os.environ.get(token_env) or None)
        return info.sha
    except Exception:  # informational only: the content hashes in the manifest are what later steps check
        return None


def read_source_rows(
    source: str, *, default_config: str, token_env: str, gated_repos: tuple[str, ...] = (), what: str = "source"
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The rows of a dataset source (`hf:` dataset or local/pinned file) and its provenance for the manifest.

    Raises:
        DataError: missing file, a gated dataset without a token, an unreadable source, or no rows at all.
    """
    info: dict[str, Any] = {"source": source}
    if is_hf_source(source):
        src = parse_hf_source(source, default_config=default_config, what=what)
        rows = as_rows(load_hf_dataset(src, token_env, gated=src.repo in gated_repos, what=what))
        info.update(hf=str(src), revision=src.revision)
        info["resolved_revision"] = hf_revision_sha(src, token_env)
    else:
        resolved = resolve_file(source, what=what)
        rows = read_records(resolved.path, what)
        info.update(path=str(resolved.path), sha256=resolved.sha256, revision=resolved.revision)
    if not rows:
        raise DataError(f"{what}: {source} holds no rows; the dataset must not be empty")
    return rows, info
