"""The training loop's checkpoints: written whole or not at all, checked against the run before a model loads.

    save_checkpoint(run, model=..., optimizer=..., planner=..., schedule=..., loop=loop, fingerprint=fp)
    path = find_checkpoint(run)                              # checkpoint/ or, after a crash mid-swap, checkpoint.old
    state = read_checkpoint_state(path, fp)                  # refuses another configuration or data
    loop = load_checkpoint(path, state, model=..., optimizer=..., planner=..., schedule=...)

A checkpoint holds the trainable tensors, the optimizer, the random states, the planner, the schedule and the
loop's rows (`LoopState`); state.json is written last, so its presence means the checkpoint is whole. Layout and
choices: docs/training.md. The loop itself is `canary_lib.train`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from canary_lib.artifacts import (
    CONTROLLER_COLUMNS,
    STEPS_COLUMNS,
    RunDir,
    read_jsonl,
    write_csv_atomic,
    write_json_atomic,
)
from canary_lib.binding import config_changes_from_dumps, describe
from canary_lib.errors import CanaryError
from canary_lib.planner import StepPlanner

_STATE_FILE = "state.json"


class CheckpointError(CanaryError, ValueError):
    """A checkpoint cannot be resumed: written under another configuration or data, or damaged."""


@dataclass
class LoopState:
    """Everything besides tensors that a checkpoint restores."""

    steps: list[dict] = field(default_factory=list)
    controller: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    canary_seconds: float = 0.0
    checkpoint_seconds: float = 0.0
    n_unsupervised_examples: int = 0
    """Examples whose assistant tokens were all cut off by max_length (they add no loss)."""
    canary_judge_usage: dict = field(default_factory=dict)
    """What the canary judge cost up to the checkpoint: requests, prompt_tokens, completion_tokens."""


def _trainable_state(model: Any) -> dict[str, torch.Tensor]:
    return {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters() if p.requires_grad}


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    run: RunDir,
    *,
    model: Any,
    optimizer: torch.optim.Optimizer,
    planner: StepPlanner,
    schedule: Any,
    loop: LoopState,
    fingerprint: dict,
) -> None:
    """Write the resumable state into a temporary directory, then swap it in place of checkpoint/."""
    tmp = Path(tempfile.mkdtemp(dir=run.path, prefix=".checkpoint-"))
    torch.save(_trainable_state(model), tmp / "adapter_state.pt")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(_rng_state(), tmp / "rng.pt")
    state = {
        "fingerprint": fingerprint,
        "planner": planner.state_dict(),
        "schedule": schedule.state_dict(),
        "loop": loop.__dict__,
    }
    write_json_atomic(tmp / _STATE_FILE, state)  # written last: its presence means the checkpoint is whole
    old = run.path / "checkpoint.old"
    shutil.rmtree(old, ignore_errors=True)
    if run.checkpoint_dir.exists():
        os.replace(run.checkpoint_dir, old)
    os.replace(tmp, run.checkpoint_dir)
    shutil.rmtree(old, ignore_errors=True)
    # The visible CSVs follow the checkpoint, so a killed run shows its progress up to there.
    write_csv_atomic(run.steps_path, loop.steps, STEPS_COLUMNS)
    write_csv_atomic(run.controller_path, loop.controller, CONTROLLER_COLUMNS)


def find_checkpoint(run: RunDir) -> Path | None:
    """The last whole checkpoint (a crash during the swap leaves it as checkpoint.old)."""
    for candidate in (run.checkpoint_dir, run.path / "checkpoint.old"):
        if (candidate / _STATE_FILE).is_file():
            return candidate
    return None


def read_checkpoint_state(path: Path, fingerprint: dict) -> dict:
    """The checkpoint's state.json, checked against this run's configuration and data (before any model loads).

    Raises:
        CheckpointError: naming the changed configuration keys or data files, or saying the file is damaged.
    """
    try:
        state = json.loads((path / _STATE_FILE).read_text(encoding="utf-8"))
        saved = state["fingerprint"]
        config_changes = config_changes_from_dumps(saved["config"], fingerprint["config"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{path}: damaged checkpoint ({type(exc).__name__}: {exc}); delete it to train from the start"
        ) from None
    data_changes = sorted(
        set(saved.get("data", {})) ^ set(fingerprint["data"])
        | {f for f, digest in fingerprint["data"].items() if saved.get("data", {}).get(f) != digest}
    )
    if config_changes or data_changes:
        what = describe(config_changes + [f"data file {f} changed" for f in data_changes])
        raise CheckpointError(
            f"{path}: the checkpoint was written with another configuration or data ({what}); "
            "resume with the same configuration and data, or train into a new directory"
        )
    return state


def refuse_partial_checkpoint(run: RunDir) -> None:
    """A checkpoint folder without its state.json (written last, so a whole one always has it) was damaged
    after it was written: training must not silently start again from step 0 over it.

    Raises:
        CheckpointError: naming the folder.
    """
    for candidate in (run.checkpoint_dir, run.path / "checkpoint.old"):
        if candidate.is_dir() and not (candidate / _STATE_FILE).is_file():
            raise CheckpointError(
                f"{candidate}: incomplete checkpoint (no {_STATE_FILE}); restore it, or delete it "
                "to train from the start"
            )


def check_canary_answers(run: RunDir, state: dict) -> None:
    """canary_answers.jsonl must still hold every answer of the canary evaluations the checkpoint recorded: they
    cannot be recomputed after resuming (the model has moved on), so a short file would stay short.

    Raises:
        CheckpointError: naming the evaluations whose answers are missing.
    """
    expected = {int(row["step"]): int(row.get("n_canary") or 0) for row in state.get("loop", {}).get("controller", [])}
    if not expected:
        return
    found: dict[int, int] = {}
    for record in read_jsonl(run.canary_answers_path):
        found[int(record.get("step", -1))] = found.get(int(record.get("step", -1)), 0) + 1
    short = [step for step, n in sorted(expected.items()) if found.get(step, 0) < n]
    if short:
        shown = ", ".join(map(str, short[:5])) + (f" and {len(short) - 5} more" if len(short) > 5 else "")
        raise CheckpointError(
            f"{run.canary_answers_path}: the answers of {len(short)} of the {len(expected)} canary evaluations the "
            f"checkpoint recorded are missing (after steps {shown}); they cannot be recomputed: restore the file, "
            f"or delete {run.path} to train again"
        )


def load_checkpoint(
    path: Path, state: dict, *, model: Any, optimizer: torch.optim.Optimizer, planner: StepPlanner, schedule: Any
) -> LoopState:
    """Restore the tensors, random states, planner and schedule of a checked checkpoint (read_checkpoint_state)."""
    device = next(model.parameters()).device
    try:
        # weights_only everywhere: a checkpoint file is data, never code (a planted pickle must not run)
        tensors = torch.load(path / "adapter_state.pt", map_location="cpu", weights_only=True)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in tensors.items():
                params[name].copy_(value)
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device, weights_only=True))
        _set_rng_state(torch.load(path / "rng.pt", weights_only=True))
        planner.load_state_dict(state["planner"])
        schedule.load_state_dict(state["schedule"])
        return LoopState(**state["loop"])
    except Exception as exc:  # noqa: BLE001 - any unreadable piece means the same thing to the user
        raise CheckpointError(
            f"{path}: damaged checkpoint ({type(exc).__name__}: {str(exc)[:200]}); delete it to train from the start"
        ) from None
