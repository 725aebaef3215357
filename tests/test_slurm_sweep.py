"""`canary sweep` with `executor.kind: slurm` on a real single-node SLURM cluster (munged, slurmctld and slurmd
started for the session by scripts/local_slurm.py, everything under a temporary directory): a 2-run sweep of the
tiny organism goes through submitit and SLURM to the end with one run failing, and a second invocation
submits and finishes only that run.

    .venv/bin/pytest tests/test_slurm_sweep.py -q      # as root, with: apt-get install slurm-wlm munge

Skipped (one line) where SLURM cannot start; under CANARY_REQUIRE_SLURM=1 (.ci/run) that is a failure.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _e2e import need, run_sweep_in, write_tiny_sweep
from _scripts import load_script
from canary_lib.artifacts import RunDir

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
REQUIRE_ENV = "CANARY_REQUIRE_SLURM"
EXECUTOR = {"kind": "slurm", "parallel": 2, "cpus_per_job": 1, "threads_per_job": 1, "poll_s": 1.0, "timeout_min": 60}


@pytest.fixture(scope="module")
def slurm_cluster() -> Iterator[Any]:
    """A started single-node cluster (scripts/local_slurm.py); its daemons are stopped after the module."""
    local_slurm = load_script("local_slurm")
    need(local_slurm.problem(), REQUIRE_ENV)
    # Not under pytest's private (0700) temporary directory: munged wants every parent of its socket searchable.
    root = Path(tempfile.mkdtemp(prefix="canary-slurm-"))
    try:
        try:
            cluster = local_slurm.start(root)
        except RuntimeError as exc:
            need(f"SLURM did not start here: {str(exc).splitlines()[0]}", REQUIRE_ENV)
        yield cluster
    finally:
        local_slurm.stop(root)
        left = local_slurm.leftover_pids(local_slurm.Cluster(root))
        shutil.rmtree(root, ignore_errors=True)
    assert left == [], f"processes of the stopped cluster still running: {left}"


def _status(root: Path) -> dict[str, dict]:
    status = json.loads((root / "results" / "organism_tiny" / "sweep_status.json").read_text())
    return {job["name"]: job for job in status["jobs"]}


def _allocated(cluster: Any) -> list[str]:
    """SLURM job ids the controller has started, in order."""
    return re.findall(r"sched: Allocate JobId=(\d+)", cluster.log("slurmctld"))


def test_slurm_sweep_survives_a_failed_run_and_a_rerun_finishes_only_it(
    slurm_cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))  # sbatch, squeue, sacct find the cluster
    sweep = write_tiny_sweep(tmp_path, ["no_defense", "fixed_5"], EXECUTOR, base_row=False)
    runs = tmp_path / "runs" / "organism_tiny"
    # fixed_5's run directory holds a checkpoint of another configuration: training refuses to resume from it.
    stale = runs / "fixed_5" / "seed42" / "checkpoint"
    stale.mkdir(parents=True)
    (stale / "state.json").write_text(json.dumps({"fingerprint": {"config": "seed: 7\n", "data": {}}}))

    assert run_sweep_in(tmp_path, sweep) == 1
    out = capsys.readouterr().out
    jobs = _status(tmp_path)
    assert jobs["fixed_5/seed42"]["ok"] is False
    assert "checkpoint was written with another configuration" in jobs["fixed_5/seed42"]["error"]
    assert jobs["fixed_5/seed42"]["notebook"].endswith("fixed_5/seed42/02_train_controller.ipynb")
    assert "FAILED fixed_5/seed42" in out
    assert jobs["no_defense/seed42"]["executed"] == ["train", "evaluate"]  # the other run went on to the end
    assert RunDir(runs / "no_defense" / "seed42").is_complete("eval")
    assert jobs["prepare"]["ok"] and jobs["analysis"]["ok"]
    assert "[4/4 jobs] 3 ok, 1 failed, 0 running, 0 waiting" in out
    # Each job ran as a SLURM job: allocated by the controller, logged by submitit under its SLURM job id.
    first = _allocated(slurm_cluster)
    assert len(first) == 4, first  # prepare, the two runs, analysis
    logged = {log.name.split("_")[0] for log in (runs / "_submitit").glob("*_log.out")}
    assert set(first) <= logged

    shutil.rmtree(stale)
    assert run_sweep_in(tmp_path, sweep) == 0
    jobs = _status(tmp_path)
    assert jobs["fixed_5/seed42"]["executed"] == ["train", "evaluate"]
    assert jobs["no_defense/seed42"]["executed"] == [] and jobs["prepare"]["executed"] == []
    assert RunDir(runs / "fixed_5" / "seed42").is_complete("eval")
    second = _allocated(slurm_cluster)[len(first) :]
    assert len(second) == 2, second  # only the missing run and the analysis were submitted
