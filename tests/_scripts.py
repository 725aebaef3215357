"""Load a script of benchmarks/ or scripts/ as a module, so tests call its functions (they are not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark(name: str, folder: str = "benchmarks") -> ModuleType:
    """<folder>/<name>.py as the module `name` (registered in sys.modules, as its dataclasses need)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_script(name: str) -> ModuleType:
    """scripts/<name>.py as the module `name`."""
    return load_benchmark(name, folder="scripts")
