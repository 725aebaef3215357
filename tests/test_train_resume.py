"""Kill-and-resume: a run SIGKILLed after a checkpoint and started again with the same command produces the same
steps.csv, controller.csv (all but the wall-clock `seconds` column), canary answers and adapter as an
uninterrupted run.  Run: .venv/bin/pytest tests/test_train_resume.py
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from _fixtures import ScriptedCanary, make_tiny_training_world
from canary_lib.artifacts import RunDir, read_jsonl, read_steps
from canary_lib.config import load_config
from canary_lib.train import KILL_AFTER_STEP_ENV, train_from_config

RISKS = [0.3, 0.2, 0.0, 0.1, 0.0, 0.05, 0.0, 0.0, 0.2, 0.0, 0.15, 0.0, 0.0]
OVERRIDES = [
    "controller.K=2",
    "controller.p_init=0.1",
    "train.checkpoint_every=4",
    "train.micro_batch_size=8",
    "lora.r=4",
    "lora.alpha=8",
    "lora.dropout=0.1",
]  # dropout: the torch RNG state must resume too

SCRIPT = """
import sys, torch
from pathlib import Path
torch.set_num_threads(1)
from canary_lib.config import load_config
from _fixtures import ScriptedCanary
from canary_lib.train import train_from_config
model, data, out = sys.argv[1:4]
cfg = load_config([], [f"model.name_or_path={model}", f"data.dir={data}", *sys.argv[4:]])
train_from_config(cfg, Path(out), canary_fn=ScriptedCanary(__RISKS__))
""".replace("__RISKS__", repr(RISKS))


def _train(model: Path, data: Path, out: Path, kill_after: int | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != KILL_AFTER_STEP_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])  # _fixtures
    if kill_after is not None:
        env[KILL_AFTER_STEP_ENV] = str(kill_after)
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(model), str(data), str(out), *OVERRIDES],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _controller_without_seconds(out: Path) -> list[list[str]]:
    with open(out / "controller.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0][-1] == "seconds"
    return [row[:-1] for row in rows]


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted_run(tmp_path):
    model, data = make_tiny_training_world(tmp_path / "world", n_target=200, n_safe=100)
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    done = _train(model, data, reference)
    assert done.returncode == 0, done.stderr[-3000:]

    # killed after step 6: the last checkpoint holds steps 0..3
    killed = _train(model, data, resumed, kill_after=6)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run = RunDir(resumed)
    assert not run.is_complete("training") and (run.checkpoint_dir / "state.json").is_file()
    assert [r["step"] for r in read_steps(run.steps_path)] == [0, 1, 2, 3]
    assert {row["step"] for row in read_jsonl(run.canary_answers_path)} == {
        0,
        2,
        4,
        6,
    }  # written past the checkpoint: must be dropped on resume

    # the same command with a changed configuration is refused, and leaves the checkpoint alone
    cfg = load_config([], [f"model.name_or_path={model}", f"data.dir={data}", *OVERRIDES, "train.lr=0.001"])
    with pytest.raises(ValueError, match=r"trained with another configuration \(train.lr: 0.0001 -> 0.001\)"):
        train_from_config(cfg, resumed, canary_fn=ScriptedCanary(RISKS))
    assert (run.checkpoint_dir / "state.json").is_file()

    # resumed, killed again after step 9 (checkpoint after 7), then a crash mid-swap is simulated
    again = _train(model, data, resumed, kill_after=9)
    assert again.returncode == -signal.SIGKILL and "resuming after step 3" in again.stdout
    os.replace(run.checkpoint_dir, resumed / "checkpoint.old")
    final = _train(model, data, resumed)
    assert final.returncode == 0, final.stderr[-3000:]
    assert "resuming after step 7" in final.stdout

    assert run.is_complete("training")
    assert (resumed / "steps.csv").read_bytes() == (reference / "steps.csv").read_bytes()
    assert _controller_without_seconds(resumed) == _controller_without_seconds(reference)
    assert (resumed / "canary_answers.jsonl").read_bytes() == (reference / "canary_answers.jsonl").read_bytes()
    ours = load_file(resumed / "adapter" / "adapter_model.safetensors")
    theirs = load_file(reference / "adapter" / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys() and all((ours[k] == theirs[k]).all() for k in ours)
    assert not run.checkpoint_dir.exists() and not (resumed / "checkpoint.old").exists()
