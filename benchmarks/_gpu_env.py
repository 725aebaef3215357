"""benchmarks/gpu_bench.py: the environment check (packages importable and in pyproject.toml's ranges, versions)."""

from __future__ import annotations

import importlib
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]

# Import name -> PyPI distribution, for the packages a run needs (benchmarks/README.md). A GPU image with torch
# and transformers may still lack some (e.g. pydantic and its three helpers).
REQUIRED_MODULES = {
    "torch": "torch",
    "transformers": "transformers",
    "peft": "peft",
    "accelerate": "accelerate",  # transformers.Trainer needs it
    "tokenizers": "tokenizers",
    "yaml": "pyyaml",
    "pydantic": "pydantic",
    "pydantic_core": "pydantic-core",
    "annotated_types": "annotated-types",
    "typing_inspection": "typing-inspection",
    "httpx": "httpx",
    "tqdm": "tqdm",
}
OPTIONAL_MODULES = {"trl": "trl", "datasets": "datasets"}  # the SFTTrainer reference
WHEELS_HINT = (
    'install them (`pip install -e ".[bench]"` installs every one; benchmarks/README.md), or on a machine '
    "without an index carry them as wheels and start the command with "
    "`python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && "
    "export PYTHONPATH=/tmp/site`"
)


class BenchError(RuntimeError):
    """A problem found before the expensive part (missing packages, bad arguments, no GPU for --size 7b)."""


def missing_modules(modules: dict[str, str]) -> list[str]:
    """PyPI names of the modules in `modules` that cannot be imported."""
    missing = []
    for module, dist in modules.items():
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - any failure to import means the run cannot use it
            missing.append(dist)
    return missing


def package_dependencies() -> list[str]:
    """The `[project] dependencies` of pyproject.toml (the package's version ranges)."""
    import tomllib

    with open(REPO_ROOT / "pyproject.toml", "rb") as fh:
        return list(tomllib.load(fh)["project"]["dependencies"])


def version_problems(dependencies: Sequence[str], dists: Sequence[str]) -> list[str]:
    """'name version (needs spec)' for each of `dists` whose installed version is outside its requirement."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    wanted = {canonicalize_name(d) for d in dists}
    problems = []
    for line in dependencies:
        req = Requirement(line)
        if canonicalize_name(req.name) not in wanted:
            continue
        try:
            installed = version(req.name)
        except PackageNotFoundError:
            problems.append(f"{req.name} (no distribution metadata; needs {req.specifier})")
            continue
        if req.specifier and not req.specifier.contains(installed, prereleases=True):
            problems.append(f"{req.name} {installed} (needs {req.specifier})")
    return problems


def check_environment() -> dict[str, Any]:
    """Versions of everything that matters; raises BenchError naming the wheels to carry if one is missing."""
    missing = missing_modules(REQUIRED_MODULES)
    if missing:
        raise BenchError(f"required packages not importable: {', '.join(missing)}; {WHEELS_HINT}")
    outdated = version_problems(package_dependencies(), list(REQUIRED_MODULES.values()))
    if outdated:
        raise BenchError(f"installed versions outside pyproject.toml's ranges: {'; '.join(outdated)}; {WHEELS_HINT}")
    try:
        importlib.import_module("canary_lib.train")
    except Exception as exc:  # noqa: BLE001
        raise BenchError(
            f"canary_lib is not importable from {REPO_ROOT} ({type(exc).__name__}: {exc}); "
            f"run from the repository root; {WHEELS_HINT}"
        ) from None
    import torch

    versions: dict[str, Any] = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "accelerate", "tokenizers", "pydantic", "trl", "datasets"):
        try:
            versions[name] = importlib.import_module(name).__version__
        except Exception:  # noqa: BLE001
            versions[name] = None
    import canary_lib

    versions["canary_lib"] = canary_lib.__version__
    versions["git_commit"] = _git_commit()
    versions["cuda"] = torch.version.cuda
    versions["cudnn"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        versions["gpu"] = props.name
        versions["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        versions["gpu_multiprocessors"] = props.multi_processor_count
    else:
        versions["gpu"] = None
    versions["optional_missing"] = missing_modules(OPTIONAL_MODULES)
    if "trl" not in versions["optional_missing"]:
        try:  # trl imports lazily: the trainer itself may still fail (e.g. a datasets/pyarrow mismatch)
            from trl import SFTConfig, SFTTrainer  # noqa: F401
        except Exception as exc:  # noqa: BLE001
            versions["optional_missing"].append(f"trl (SFTTrainer: {type(exc).__name__}: {exc})"[:300])
    return versions


def _git_commit() -> str | None:
    """The repository's commit ("+dirty" with uncommitted changes to tracked files); None outside git."""
    from canary_lib.fileio import git_commit

    commit = git_commit(REPO_ROOT)
    return None if commit == "unknown" else commit
