"""Time the README's first command (`make reproduce`) end to end: wall time and peak memory.

    .venv/bin/python benchmarks/reproduce_bench.py                  # runs `make reproduce` in the repo root
    .venv/bin/python benchmarks/reproduce_bench.py --fresh          # first removes runs/ and results/ of the profile
    .venv/bin/python benchmarks/reproduce_bench.py -- canary sweep parameters/sweeps/organism_tiny.yaml

Peak memory is sampled every 0.2 s with psutil over the command's whole process tree (make, the sweep, submitit
jobs, papermill kernels): "peak_tree_rss_mb" is the largest sum of resident memory seen at one moment, and
"peak_process_rss_mb" the largest single process. ru_maxrss of the children (what /usr/bin/time -v reports
for one process) is given too, with the load average before and after (other work on the machine inflates
wall time; CPU seconds of the command's own processes do not include it). The report goes to stdout and
benchmarks/out/reproduce_<profile>.json.

`make reproduce` first (re)creates .venv when pyproject.toml or constraints.txt is newer than it; to time only
the pipeline in an existing environment, pass `-- .venv/bin/canary reproduce --profile organism`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def _tree_rss(proc: psutil.Process) -> tuple[int, int]:
    """(sum of RSS over the process and its descendants, largest single RSS), in bytes."""
    total = largest = 0
    try:
        members = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    for member in members:
        try:
            rss = member.memory_info().rss
        except psutil.Error:
            continue
        total += rss
        largest = max(largest, rss)
    return total, largest


def measure(command: list[str], cwd: Path) -> dict:
    """Run command, sampling memory of its process tree until it exits."""
    load_before = os.getloadavg()
    start = time.perf_counter()
    proc = psutil.Popen(command, cwd=cwd)
    peak_tree = peak_proc = 0
    while proc.poll() is None:
        tree, largest = _tree_rss(proc)
        peak_tree, peak_proc = max(peak_tree, tree), max(peak_proc, largest)
        time.sleep(0.2)
    wall = time.perf_counter() - start
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "command": " ".join(command),
        "returncode": proc.returncode,
        "wall_seconds": round(wall, 1),
        "peak_tree_rss_mb": round(peak_tree / 2**20, 1),
        "peak_process_rss_mb": round(peak_proc / 2**20, 1),
        "children_ru_maxrss_mb": round(children.ru_maxrss / 1024, 1),
        "cpu_user_seconds": round(children.ru_utime, 1),
        "cpu_system_seconds": round(children.ru_stime, 1),
        "load_average_1_5_15_before": [round(x, 2) for x in load_before],
        "load_average_1_5_15_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
        "python": platform.python_version(),
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="organism", help="whose runs/results --fresh removes")
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="remove runs/<profile> and results/<profile> first (the cached base organism and prepared data stay)",
    )
    parser.add_argument("command", nargs="*", default=["make", "reproduce"], help="default: make reproduce")
    args = parser.parse_args()
    if args.fresh:
        for folder in (ROOT / "runs" / args.profile, ROOT / "results" / args.profile):
            shutil.rmtree(folder, ignore_errors=True)
    report = measure(args.command, ROOT)
    report["fresh"] = args.fresh
    out = ROOT / "benchmarks" / "out" / f"reproduce_{args.profile}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report["returncode"]


if __name__ == "__main__":
    sys.exit(main())
