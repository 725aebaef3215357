"""The environment files stay in step: conda installs pyproject's dependencies with constraints.txt's pins."""

import tomllib
from pathlib import Path

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
