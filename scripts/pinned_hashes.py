"""Fingerprints of the organism under pinned CPU numerics: a short pre-training and a tiny training run.

    .venv/bin/python scripts/pinned_hashes.py              # print them
    .venv/bin/python scripts/pinned_hashes.py --write      # update tests/data/pinned_hashes.json

Everything runs through the `canary` command in fresh processes (which pins the numerics before torch starts),
on the tiny profile (parameters/organism_tiny.yaml). tests/test_numerics_pinned.py recomputes them and compares
with the committed file: on any x86-64 CPU with AVX2 they must be the same bits (docs/organism.md,
"Reproducibility across CPUs"). Regenerate after a deliberate change of the world, the tiny profile, the
training code or the pinned packages (constraints.txt).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from canary_lib.fileio import sha256_file  # the standard library only: torch is not imported here

ROOT = Path(__file__).resolve().parents[1]
TINY = ["parameters/organism.yaml", "parameters/organism_tiny.yaml"]
HASHES = ROOT / "tests" / "data" / "pinned_hashes.json"
PINNED_KEYS = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _without_column(path: Path, column: str) -> str:
    import csv
    import io

    rows = list(csv.reader(io.StringIO(path.read_text())))
    keep = [i for i, name in enumerate(rows[0]) if name != column]
    return "\n".join(",".join(row[i] for i in keep) for row in rows)


def canary(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "canary_lib", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800
    )
    if done.returncode:
        raise RuntimeError(f"canary {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def fingerprints(work: Path) -> dict[str, str]:
    """Build the tiny base and train a tiny canary run in `work`; hash what they produced."""
    # a clean environment: the command line must pin the numerics by itself
    env = {k: v for k, v in os.environ.items() if k not in PINNED_KEYS}
    # pinned explicitly: the organism profile runs native numerics since 2026-12-03 (docs/lean_path.md)
    sets = [f"organism.cache_dir={work / 'cache'}", f"data.dir={work / 'data'}", "model.cpu_numerics=pinned"]
    overrides = [arg for s in sets for arg in ("--set", s)]
    canary("prep-data", *TINY, *overrides, env=env)
    base = Path(canary("organism", "build", *TINY, *overrides, env=env).strip().splitlines()[-1])
    run = work / "run"
    # The standard step and sampler: the recorded hashes were made on another machine with them (before the organism
    # moved to the lean path, 2026-12-03), so the cross-machine claim stays checked; the lean path runs the same
    # pinned kernels (F.linear / matrix products) on differently grouped operands.
    standard = ["--set", "train.step=standard", "--set", "canary.sampler=standard"]
    canary("train", *TINY, "parameters/methods/canary.yaml", *overrides, *standard, "--out", str(run), env=env)
    import torch

    return {
        "torch": torch.__version__,
        "base_model": sha256_file(base / "model.safetensors"),
        "adapter": sha256_file(run / "adapter" / "adapter_model.safetensors"),
        "steps_csv": sha256_file(run / "steps.csv"),
        "controller_csv": _sha256_text(_without_column(run / "controller.csv", "seconds")),  # timing varies
        "canary_answers": sha256_file(run / "canary_answers.jsonl"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help=f"write {HASHES.relative_to(ROOT)}")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        hashes = fingerprints(Path(tmp))
    print(json.dumps(hashes, indent=2))
    if args.write:
        HASHES.parent.mkdir(parents=True, exist_ok=True)
        HASHES.write_text(json.dumps(hashes, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
