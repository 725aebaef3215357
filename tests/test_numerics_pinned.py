"""Pinned CPU numerics (canary_lib/numerics.py): the organism's bits do not depend on the machine.

The slow test rebuilds a short pre-training and a tiny training run through the `canary` command (fresh
processes, a clean environment) and compares their hashes with tests/data/pinned_hashes.json, which was written
on another machine's run of the same command (scripts/pinned_hashes.py): equal hashes are the claim.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECORDED = json.loads((ROOT / "tests" / "data" / "pinned_hashes.json").read_text())


def _script():
    spec = importlib.util.spec_from_file_location("pinned_hashes", ROOT / "scripts" / "pinned_hashes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_loading_an_organism_config_pins_the_numerics_of_a_fresh_process():
    code = (
        "import os, sys; from canary_lib.config import load_config;"
        "load_config(['parameters/organism.yaml'], ['model.cpu_numerics=pinned']);"
        "import torch; from canary_lib.numerics import is_pinned;"
        "print(is_pinned(), os.environ['MKL_CBWR'], torch.backends.cpu.get_cpu_capability())"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "COMPATIBLE", "AVX2"]


def test_the_organism_profile_runs_native_numerics_and_its_pinned_sweep_pins():
    """Since 2026-12-03 the profile runs the CPU's own kernels (docs/lean_path.md, "Native numerics"); pinned is
    one override away, which parameters/sweeps/organism_pinned.yaml sets."""
    from canary_lib.sweep_plan import load_sweep

    code = (
        "import os; from canary_lib.config import load_config; load_config(['parameters/organism.yaml']);"
        "import torch; from canary_lib.numerics import is_pinned; print(is_pinned(), os.environ.get('MKL_CBWR'))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "None"]
    assert "model.cpu_numerics=pinned" in load_sweep(ROOT / "parameters/sweeps/organism_pinned.yaml").overrides
    assert "model.cpu_numerics=pinned" in load_sweep(ROOT / "parameters/sweeps/organism_standard.yaml").overrides


def test_a_process_that_imported_torch_first_refuses_to_cache_a_pinned_organism(tmp_path):
    code = (
        "import torch; from canary_lib.config import load_config; from canary_lib.organism import "
        f"ensure_base_model; ensure_base_model(load_config(['parameters/organism.yaml', "
        f"'parameters/organism_tiny.yaml'], ['organism.cache_dir={tmp_path}', 'model.cpu_numerics=pinned']))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "runs native CPU numerics" in out.stderr
    assert not any(p.name.startswith("base-") for p in tmp_path.iterdir())


@pytest.mark.slow
def test_pinned_organism_reproduces_the_recorded_bits(tmp_path):
    import torch

    if torch.__version__ != RECORDED["torch"]:  # the bits belong to the pinned stack of constraints.txt
        pytest.skip(f"hashes recorded with torch {RECORDED['torch']}, this is {torch.__version__}")
    assert _script().fingerprints(tmp_path) == RECORDED
