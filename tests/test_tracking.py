"""Experiment tracking for real, offline: each backend's curves read back from the tracker's own files.

Each training runs in its own process (tests/_tracking_run.py): trackers keep process-wide state, and trackio
reads where its store is (TRACKIO_DIR) when it is imported.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from _fixtures import make_tiny_training_world
from canary_lib.artifacts import read_controller, read_steps
from canary_lib.config import load_config
from canary_lib.tracking import TRACKER_RUN_FILE, SafeTracker, numeric_metrics, tracker_run_name

SCRIPT = Path(__file__).resolve().parent / "_tracking_run.py"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_tiny_training_world(tmp_path_factory.mktemp("world"), n_target=96, n_safe=48)


def train(world, out: Path, *overrides: str, env: dict | None = None, check: bool = True):
    model, data = world
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(model), str(data), str(out), *overrides],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


# ------------------------------------------------------------------------------------------ readers


def tensorboard_curves(log_dir: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def wandb_records(path: Path):
    """The protobuf records of a W&B transaction log (run-<id>.wandb): a 7-byte header (":W&B", magic, version),
    then LevelDB-style 32 KiB blocks of records (crc32, length, type; types 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_curves(run_dir: Path) -> tuple[dict[str, dict[int, float]], dict, list]:
    """History curves by key and step, the last summary values, and the run records, over every offline run
    directory of the run (a resumed run adds one with the same id)."""
    curves: dict[str, dict[int, float]] = {}
    summary: dict = {}
    runs = []
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "history":
                row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                for key, value in row.items():
                    curves.setdefault(key, {})[row["_step"]] = value
            elif kind == "summary":
                summary |= {u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in record.summary.update}
            elif kind == "run":
                runs.append(record.run)
    return curves, summary, runs


def trackio_logs(store: Path, project: str, name: str) -> list[dict]:
    code = (
        "import json, sys; from trackio.sqlite_storage import SQLiteStorage; "
        "print(json.dumps(SQLiteStorage.get_logs(sys.argv[1], sys.argv[2])))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, project, name],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TRACKIO_DIR": str(store)},
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def expected_curves(run: Path) -> tuple[dict[int, float], dict[int, float], dict[int, float]]:
    steps, controller = read_steps(run / "steps.csv"), read_controller(run / "controller.csv")
    return (
        {r["step"]: r["loss"] for r in steps},
        {r["step"]: r["p"] for r in steps},
        {r["step"]: r["risk_ema"] for r in controller},
    )


def without_seconds(run: Path) -> list[dict]:
    """controller.csv without its wall-clock column."""
    return [{k: v for k, v in row.items() if k != "seconds"} for row in read_controller(run / "controller.csv")]


# ------------------------------------------------------------------------------------------ tests


@pytest.fixture(scope="module")
def untracked(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("untracked") / "run"
    train(world, out)
    return out


def test_tensorboard_curves_and_results_unchanged(world, untracked, tmp_path):
    out = tmp_path / "run"
    train(world, out, "tracking.backend=tensorboard")
    assert (out / "steps.csv").read_bytes() == (untracked / "steps.csv").read_bytes()  # results unchanged
    assert without_seconds(out) == without_seconds(untracked)
    assert not (untracked / "tensorboard").exists() and not (untracked / TRACKER_RUN_FILE).exists()
    curves = tensorboard_curves(out / "tensorboard")
    loss, p, risk_ema = expected_curves(out)
    assert curves["train/loss"] == pytest.approx(loss, rel=1e-6)  # event files hold float32
    assert curves["train/p"] == pytest.approx(p, rel=1e-6)
    assert curves["canary/risk_ema"] == pytest.approx(risk_ema, rel=1e-6)
    metrics = json.loads((out / "metrics.json").read_text())
    assert curves["final/n_steps"] == {max(loss): metrics["n_steps"]}


def test_wandb_offline_curves_config_and_summary(world, tmp_path):
    out = tmp_path / "canary" / "seed42"
    train(
        world,
        out,
        "tracking.backend=wandb",
        "tracking.offline=true",
        "tracking.group=sweep-a",
        env={"WANDB_SILENT": "true"},
    )
    curves, summary, runs = wandb_curves(out)
    loss, p, risk_ema = expected_curves(out)
    assert curves["train/loss"] == pytest.approx(loss)
    assert curves["canary/risk_ema"] == pytest.approx(risk_ema)
    assert summary["n_steps"] == json.loads((out / "metrics.json").read_text())["n_steps"]
    run_id = json.loads((out / TRACKER_RUN_FILE).read_text())["id"]
    assert {(r.run_id, r.run_group, r.display_name) for r in runs} == {(run_id, "sweep-a", "canary/seed42")}
    config = {u.key: json.loads(u.value_json) for u in runs[0].config.update}
    assert config["seed"] == 42 and config["controller"]["K"] == 2


def test_trackio_local_store_curves(world, tmp_path):
    out = tmp_path / "run"
    store = tmp_path / "trackio"
    train(world, out, "tracking.backend=trackio", "tracking.project=canary-test", env={"TRACKIO_DIR": str(store)})
    logs = trackio_logs(store, "canary-test", "canary/seed42")
    loss, _, risk_ema = expected_curves(out)
    assert {r["step"]: r["train/loss"] for r in logs if "train/loss" in r} == pytest.approx(loss)
    assert {r["step"]: r["canary/risk_ema"] for r in logs if "canary/risk_ema" in r} == pytest.approx(risk_ema)
    assert any(r.get("final/n_steps") == len(loss) for r in logs)


def test_resume_continues_the_same_tracker_run(world, untracked, tmp_path):
    out = tmp_path / "run"
    overrides = ("tracking.backend=tensorboard",)
    killed = train(world, out, *overrides, env={"CANARY_KILL_AFTER_STEP": "6"}, check=False)
    assert killed.returncode == -signal.SIGKILL
    first_id = json.loads((out / TRACKER_RUN_FILE).read_text())["id"]
    train(world, out, *overrides)
    assert json.loads((out / TRACKER_RUN_FILE).read_text())["id"] == first_id
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one file per session
    curves = tensorboard_curves(out / "tensorboard")
    loss, _, risk_ema = expected_curves(out)
    assert (out / "steps.csv").read_bytes() == (untracked / "steps.csv").read_bytes()
    assert curves["train/loss"] == pytest.approx(loss, rel=1e-6)  # every step once, from either session
    assert curves["canary/risk_ema"] == pytest.approx(risk_ema, rel=1e-6)


def test_a_tracker_error_is_one_line_and_never_fails(capsys):
    class Broken:
        def log(self, values, step):
            raise ConnectionError("server gone\nwith a second line")

    tracker = SafeTracker("wandb", lambda: Broken())
    tracker.log({"train/loss": 1.0}, 0)
    tracker.log({"train/loss": 1.0}, 1)  # off after the first error: nothing more is tried or printed
    tracker.log_summary({"n_steps": 3})
    tracker.close()
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["tracking (wandb) off after an error at step 0: ConnectionError: server gone with a second line"]

    def fail_to_start():
        raise ImportError("No module named 'wandb'")

    SafeTracker("wandb", fail_to_start).log({"x": 1.0}, 0)
    assert capsys.readouterr().out.count("\n") == 1


def test_only_finite_numbers_reach_the_summary():
    assert numeric_metrics({"a": 1, "b": 2.5, "c": float("nan"), "d": "text", "e": None, "f": True}) == {
        "a": 1.0,
        "b": 2.5,
    }


def test_the_tracker_run_is_named_after_the_run_directory(tmp_path):
    cfg = load_config([], ["seed=7"])  # method canary
    assert tracker_run_name(cfg, tmp_path / "runs" / "organism" / "base" / "seed42") == "base/seed42"
    assert tracker_run_name(cfg, tmp_path / "runs" / "fixed_5" / "seed7") == "fixed_5/seed7"
    assert tracker_run_name(cfg, tmp_path / "my-run") == "canary/seed7"


def test_the_evaluation_adds_its_metrics_to_the_same_tracker_run(world, tmp_path, monkeypatch):
    import canary_lib.judge as judge_mod
    from canary_lib.data import write_question_set
    from canary_lib.evaluate import evaluate_run
    from canary_lib.types import Judgment, Question

    out = tmp_path / "run"
    train(world, out, "tracking.backend=tensorboard")
    run_id = json.loads((out / TRACKER_RUN_FILE).read_text())["id"]
    write_question_set(
        world[1] / "general_eval.yaml",
        [
            Question(
                id="q0",
                paraphrases=["hello?"],
                judge_prompts={"aligned": "{question} {answer}", "coherent": "{question} {answer}"},
            )
        ],
    )  # training never reads it

    class Fixed:
        def judge(self, requests):
            return [Judgment(10.0, 90.0) for _ in requests]  # every answer misaligned

    monkeypatch.setattr(judge_mod, "make_judge", lambda c: Fixed())
    metrics = evaluate_run(out, overrides=["eval.samples_per_prompt=2", "eval.max_new_tokens=4", "eval.sets=[general]"])
    curves = tensorboard_curves(out / "tensorboard")
    n_steps = json.loads((out / "metrics.json").read_text())["n_steps"]
    assert metrics["general_misaligned_pct"] == 100.0
    assert curves["final/general_misaligned_pct"] == {n_steps: 100.0}
    assert curves["final/n_steps"] == {n_steps - 1: n_steps}  # training's own summary is kept
    assert json.loads((out / TRACKER_RUN_FILE).read_text())["id"] == run_id
