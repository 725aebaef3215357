"""The environment files stay in step (conda installs pyproject's dependencies with constraints.txt's pins), and
the package builds from its metadata without deprecation warnings."""

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import tomllib  # stdlib from Python 3.11 (the environment's); third-party for ruff's py310 target
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_installs_the_project_with_the_constraints():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-c constraints.txt" in pip and any(line.startswith("-e .") for line in pip)
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert Version(python.split("=")[1]) in __import__("packaging.specifiers").specifiers.SpecifierSet(requires)


def test_constraints_satisfy_every_declared_range():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#") and "==" in line:
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    specs = project["dependencies"] + extras["dev"]
    for spec in list(specs):  # the dev extra includes other extras of the package (tracking)
        if Requirement(spec).name == project["name"]:
            specs.remove(spec)
            specs += [s for extra in Requirement(spec).extras for s in extras[extra]]
    assert "tensorboard>=2.14" in specs, "the tests run every tracker: the dev extra must install them"
    for spec in specs:
        req = Requirement(spec)
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} outside {req.specifier}"


# The files a wheel build reads: pyproject.toml and what it names (readme, license-files, the package).
_BUILD_INPUTS = ["pyproject.toml", "README.md", "LICENSE", "canary_lib"]


def _build_wheel(src: Path, out: Path) -> tuple[str, list[Path]]:
    """pip wheel of a copy of the project (no build isolation: the environment's setuptools, no network);
    returns pip's output and the wheels it wrote."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(out),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"the wheel build failed:\n{output}"
    return output, sorted(out.glob("*.whl"))


def _copy_project(dest: Path) -> Path:
    """The build inputs copied (a build in place would rewrite canary_lib.egg-info under the running tests)."""
    dest.mkdir(parents=True)
    for name in _BUILD_INPUTS:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest / name)
    return dest


def _deprecations(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if re.search(r"deprecat", line, re.IGNORECASE)]


def test_wheel_builds_without_deprecation_warnings_from_the_metadata(tmp_path):
    output, wheels = _build_wheel(_copy_project(tmp_path / "src"), tmp_path / "dist")
    assert not _deprecations(output), "the build warns about the project's metadata:\n" + "\n".join(
        _deprecations(output)
    )
    assert [w.name for w in wheels] == ["canary_lib-0.1.0-py3-none-any.whl"]
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = wheel.namelist()
        metadata = wheel.read("canary_lib-0.1.0.dist-info/METADATA").decode()
    assert "License-Expression: MIT" in metadata.splitlines()
    assert "License-File: LICENSE" in metadata.splitlines()
    assert "canary_lib-0.1.0.dist-info/licenses/LICENSE" in names
    assert "canary_lib/sweep.py" in names and "canary_lib/organism/world.py" in names
    assert not [n for n in names if "/assets/" in n or n.startswith("assets/")]


def test_the_deprecation_check_sees_a_license_table(tmp_path):
    """The check above is not vacuous: the same build with the old `license = { text = "MIT" }` warns."""
    src = _copy_project(tmp_path / "src")
    pyproject = src / "pyproject.toml"
    text = pyproject.read_text()
    assert 'license = "MIT"\n' in text
    pyproject.write_text(
        text.replace('license = "MIT"\n', 'license = { text = "MIT" }\n').replace('license-files = ["LICENSE"]\n', "")
    )
    output, _ = _build_wheel(src, tmp_path / "dist")
    assert any("project.license" in line for line in _deprecations(output)), output


def test_no_package_data_for_missing_files():
    """package-data patterns must name files that exist (an `assets/` that never existed was packaged before)."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text()).get("tool", {}).get("setuptools", {})
    for package, patterns in setuptools.get("package-data", {}).items():
        folder = ROOT / package.replace(".", "/")
        for pattern in patterns:
            assert list(folder.glob(pattern)), f"package-data {package}: {pattern!r} matches no file"
