"""Issue 25, case 3: one process per run directory. A second `canary train` or `canary eval` on a directory that
another process holds is refused in one line naming that process; the lock of a killed holder is recovered.

Run: .venv/bin/pytest tests/test_run_directory_lock.py
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _fixtures import ScriptedCanary, make_tiny_training_world
from canary_lib.artifacts import RunDir
from canary_lib.cli import main
from canary_lib.config import load_config
from canary_lib.evaluate import evaluate_model
from canary_lib.rundir_lock import HOLDER_NAME, RunDirectoryBusyError, hold_run_directory
from canary_lib.train import train_from_config

HOLD = """
import sys, time
from canary_lib.rundir_lock import hold_run_directory
with hold_run_directory(sys.argv[1], "training"):
    print("held", flush=True)
    time.sleep(120)
"""


def _holder(run: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_tiny_training_world(tmp_path_factory.mktemp("world"), n_target=16, n_safe=8)


def tiny_config(world, *overrides: str):
    model, data = world
    return load_config(
        [],
        [
            f"model.name_or_path={model}",
            f"data.dir={data}",
            "controller.K=2",
            "train.batch_size=8",
            "train.micro_batch_size=8",
            "lora.r=2",
            "lora.alpha=4",
            "method.name=fixed_5",
            *overrides,
        ],
    )


def test_a_second_process_is_refused_naming_the_holder_and_a_killed_holders_lock_is_recovered(world, tmp_path, capsys):
    run = tmp_path / "run"
    holder = _holder(run)
    try:
        with pytest.raises(
            RunDirectoryBusyError,
            match=rf"{run} is in use by process {holder.pid} on .*\(training "
            r"since .*\); wait for it to finish",
        ):
            train_from_config(tiny_config(world), run, canary_fn=ScriptedCanary([0.1]))
        with pytest.raises(RunDirectoryBusyError, match=rf"in use by process {holder.pid}"):
            evaluate_model(tiny_config(world), run, None)
        params = tmp_path / "p.yaml"
        params.write_text("seed: 42\n")
        assert main(["train", str(params), "--out", str(run)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"canary: {run} is in use by process {holder.pid}") and err.count("\n") == 1
        assert not RunDir(run).config_path.exists()  # the refused process wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the holder died without releasing anything: its lock is gone with it, and its stale record is replaced
    assert (run / HOLDER_NAME).is_file()
    metrics = train_from_config(tiny_config(world), run, canary_fn=ScriptedCanary([0.1]))
    assert metrics["n_steps"] >= 2 and RunDir(run).is_complete("training")
    assert not (run / HOLDER_NAME).exists()  # released at the end


def test_two_concurrent_trainings_one_wins(world, tmp_path):
    """The issue's case as a user hits it: a second `canary train` on the --out of a running one is refused in
    one line naming the first, which trains on undisturbed (here stopped by SIGTERM: finish the step, checkpoint)."""
    model, data = world
    run = tmp_path / "run"
    script = "import sys; from canary_lib.cli import main; sys.exit(main(sys.argv[1:]))"
    params = tmp_path / "fixed_5.yaml"
    params.write_text("method: {name: fixed_5}\n")
    args = [
        "train",
        str(params),
        "--out",
        str(run),
        "--set",
        f"model.name_or_path={model}",
        "--set",
        f"data.dir={data}",
        "--set",
        "canary.monitor_open_loop=false",
        "--set",
        "train.epochs=100",  # 200 steps
        "--set",
        "train.batch_size=8",
        "--set",
        "train.micro_batch_size=8",
        "--set",
        "lora.r=2",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}

    def start():
        return subprocess.Popen(
            [sys.executable, "-c", script, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    first = start()
    try:
        deadline = time.monotonic() + 120
        while not (run / HOLDER_NAME).is_file():  # the first one holds the directory
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.1)
        second = start()
        _, err = second.communicate(timeout=300)
        assert second.returncode == 2, err
        assert err.startswith(f"canary: {run} is in use by process {first.pid} ") and err.count("\n") == 1, err
    finally:
        first.send_signal(signal.SIGTERM)
        _, first_err = first.communicate(timeout=300)
    assert first.returncode in (0, 2) and "Traceback" not in first_err, first_err[-2000:]
    if first.returncode == 2:  # stopped while loading, or between two steps with a checkpoint to resume from
        assert "stopped by SIGTERM" in first_err.strip().splitlines()[-1]
        assert "before the first step" in first_err or (run / "checkpoint" / "state.json").is_file()


def test_nested_holds_in_one_process_do_not_deadlock(tmp_path):
    run = tmp_path / "run"
    with hold_run_directory(run, "training"):
        with hold_run_directory(run, "evaluation"):
            assert (run / HOLDER_NAME).is_file()
        assert (run / HOLDER_NAME).is_file()  # still held by the outer block
    assert not run.exists()  # created for the block and left empty: removed
