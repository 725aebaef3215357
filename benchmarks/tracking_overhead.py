"""What tracking costs a training step: the median time of one tracker.log call of a steps.csv row and a
controller.csv row, per backend, against no tracking; and the time to save one organism adapter snapshot.

    .venv/bin/python benchmarks/tracking_overhead.py      # docs/training.md, "Experiment tracking"

Each backend logs ROWS rows REPEATS times into a temporary directory (W&B offline, trackio's local store there).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

TMP = Path(tempfile.mkdtemp(prefix="tracking-bench-"))
os.environ["TRACKIO_DIR"] = str(TMP / "trackio")  # before trackio is imported
os.environ.setdefault("WANDB_SILENT", "true")

from canary_lib.config import load_config  # noqa: E402
from canary_lib.tracking import controller_values, open_tracker, step_values  # noqa: E402

ROWS, REPEATS = 300, 5
ORGANISM_STEP_S = 0.26
"""An organism training step on an idle core (docs/organism.md, "Timing")."""
STEP = {"step": 0, "source": "target", "p": 0.05, "target_remaining": 100, "loss": 1.2345, "lr": 1e-5}
CONTROLLER = {
    "step": 0,
    "canary_risk": 0.1,
    "risk_ema": 0.05,
    "p_before": 0.0,
    "p_after": 0.04,
    "n_canary": 20,
    "n_misaligned": 2,
    "n_judge_errors": 0,
    "seconds": 1.5,
}


def per_row_seconds(backend: str, repeat: int) -> float:
    overrides = [f"tracking.backend={backend}", "tracking.offline=true", f"tracking.project=bench{repeat}"]
    cfg = load_config(["parameters/organism.yaml"], overrides)
    run_dir = TMP / backend / str(repeat)
    run_dir.mkdir(parents=True)
    tracker = open_tracker(cfg, run_dir, fresh=True)
    start = time.perf_counter()
    for step in range(ROWS):
        tracker.log(step_values({**STEP, "step": step}), step)
        if step % 30 == 0:
            tracker.log(controller_values({**CONTROLLER, "step": step}), step)
    seconds = (time.perf_counter() - start) / ROWS
    tracker.close()
    return seconds


def snapshot_seconds() -> float:
    from transformers import LlamaForCausalLM

    from canary_lib.models import add_rslora
    from canary_lib.organism.model import tiny_llama_config
    from canary_lib.snapshots import save_snapshot

    cfg = load_config(["parameters/organism.yaml"])
    o = cfg.organism
    model = add_rslora(
        LlamaForCausalLM(tiny_llama_config(512, o.hidden_size, o.num_layers, o.num_heads, 0, 1)), cfg.lora, seed=0
    )
    times = []
    for step in range(10):
        start = time.perf_counter()
        save_snapshot(model, TMP / "snap", step)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


if __name__ == "__main__":
    backends = sys.argv[1:] or ["none", "tensorboard", "wandb", "trackio"]
    for backend in backends:
        median = statistics.median(per_row_seconds(backend, r) for r in range(REPEATS))
        print(
            f"{backend:<12} median {1e6 * median:9.1f} us per logged step, "
            f"{100 * median / ORGANISM_STEP_S:.3f}% of an organism training step"
        )
    snapshot = snapshot_seconds()
    print(
        f"snapshot     median {1e3 * snapshot:9.1f} ms per organism adapter snapshot, "
        f"{100 * snapshot / (30 * ORGANISM_STEP_S):.2f}% of the 30 steps between canary evaluations"
    )
    shutil.rmtree(TMP, ignore_errors=True)
