"""Adapter snapshots: the LoRA adapter kept at canary evaluation steps, evaluated later, and its norm per layer.

    train.snapshot_every: 1                          # keep the adapter at every canary evaluation (n: every n-th)
    canary eval RUN --step 60                        # evaluate_snapshot: into RUN/snapshot_evals/step60/
    norms = snapshot_norms(RUN)                      # step, layer, norm of the LoRA update per decoder layer

A snapshot is `snapshots/step<t>/`, a peft adapter directory (safetensors) of the weights after step t: the same
weights the canary evaluation after step t saw. The norm of layer l is the Frobenius norm of the layer's whole
LoRA update, sqrt(sum over its modules of ||scale * B A||^2), with the adapter's own scale (rs-LoRA:
alpha / sqrt(r)). The norm needs numpy and safetensors only; saving and evaluating load torch lazily.
Sizes (organism, paper profile) and choices: docs/training.md, "Adapter snapshots".
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from canary_lib.errors import CanaryError

SNAPSHOTS_DIR = "snapshots"
SNAPSHOT_EVALS_DIR = "snapshot_evals"
"""`canary eval RUN --step t` writes its generations, judgments and metrics to RUN/snapshot_evals/step<t>/."""
_STEP_DIR = re.compile(r"step(\d+)")
_LAYER = re.compile(r"\.layers\.(\d+)\.")
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")


class SnapshotError(CanaryError, ValueError):
    """A snapshot that is not there (or not a peft adapter)."""


def snapshot_due(every: int | None, step: int, K: int) -> bool:
    """Whether the adapter is kept after canary step `step` (step mod K == 0): at every `every`-th of them."""
    return every is not None and (step // K) % every == 0


def snapshot_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / SNAPSHOTS_DIR / f"step{step}"


def save_snapshot(model: Any, run_dir: str | Path, step: int) -> Path:
    """Save the model's adapter as snapshots/step<step>/ (written aside, then renamed: never half a snapshot)."""
    target = snapshot_dir(run_dir, step)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".snapshot-"))
    model.save_pretrained(tmp, safe_serialization=True)
    shutil.rmtree(target, ignore_errors=True)  # a resumed run redoes the steps after its checkpoint: same weights
    os.replace(tmp, target)
    return target


def list_snapshots(run_dir: str | Path) -> dict[int, Path]:
    """step -> snapshot directory, in step order (only whole snapshots: those with adapter_config.json)."""
    root = Path(run_dir) / SNAPSHOTS_DIR
    found = {}
    for path in root.iterdir() if root.is_dir() else []:
        match = _STEP_DIR.fullmatch(path.name)
        if match and (path / "adapter_config.json").is_file():
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def _load_tensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as fh:
            return {k: fh.get_tensor(k).astype(np.float64) for k in fh.keys()}
    except (TypeError, ValueError):  # bfloat16 has no numpy type: through torch
        with safe_open(str(path), framework="pt") as fh:
            return {k: fh.get_tensor(k).float().numpy().astype(np.float64) for k in fh.keys()}


def lora_scale(adapter_config: dict) -> float:
    """The adapter's update scale: alpha / sqrt(r) with rs-LoRA, else alpha / r."""
    r, alpha = adapter_config["r"], adapter_config["lora_alpha"]
    return alpha / math.sqrt(r) if adapter_config.get("use_rslora") else alpha / r


def adapter_layer_norms(adapter_dir: str | Path) -> dict[int, float]:
    """Layer index -> Frobenius norm of the layer's LoRA update (all its adapted modules together).

    ||B A||_F^2 = sum((B^T B) * (A A^T)): two r x r products, so a 7B adapter needs no full-size matrix.
    """
    adapter_dir = Path(adapter_dir)
    config_path, weights_path = adapter_dir / "adapter_config.json", adapter_dir / "adapter_model.safetensors"
    if not config_path.is_file() or not weights_path.is_file():
        raise SnapshotError(
            f"{adapter_dir}: not a saved peft adapter (adapter_config.json and adapter_model.safetensors needed)"
        )
    scale = lora_scale(json.loads(config_path.read_text(encoding="utf-8")))
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, tensor in _load_tensors(weights_path).items():
        match = _LORA_KEY.match(key)
        if match:
            pairs.setdefault(match["module"], {})[match["which"]] = tensor
    squares: dict[int, float] = {}
    for module, pair in pairs.items():
        layer = _LAYER.search(module + ".")
        if layer is None or set(pair) != {"A", "B"}:
            continue
        a, b = pair["A"], pair["B"]
        squares[int(layer.group(1))] = squares.get(int(layer.group(1)), 0.0) + scale**2 * float(
            np.sum((b.T @ b) * (a @ a.T))
        )
    return {layer: math.sqrt(value) for layer, value in sorted(squares.items())}


def snapshot_norms(run_dir: str | Path) -> pd.DataFrame:
    """One row per (snapshot step, layer): step, layer, norm (empty when the run kept no snapshot)."""
    rows = [
        {"step": step, "layer": layer, "norm": norm}
        for step, path in list_snapshots(run_dir).items()
        for layer, norm in adapter_layer_norms(path).items()
    ]
    return pd.DataFrame(rows, columns=["step", "layer", "norm"])


def evaluate_snapshot(run_dir: str | Path, step: int, overrides: Sequence[str] = ()) -> dict:
    """Evaluate the adapter kept after step `step` with the run's configuration into snapshot_evals/step<t>/
    (resumable, bound to its settings like any evaluation; tracking off: it is not the run's final model).

    Raises:
        SnapshotError: no whole snapshot at that step (the message lists the kept steps).
    """
    from canary_lib.artifacts import RunDir
    from canary_lib.binding import ensure_run_directory

    run = RunDir(run_dir)
    ensure_run_directory(run.path)
    kept = list_snapshots(run.path)
    if step not in kept:
        shown = ", ".join(str(s) for s in kept) or "none (train with train.snapshot_every set)"
        raise SnapshotError(f"{run.path}: no adapter snapshot at step {step}; kept steps: {shown}")
    if not run.config_path.is_file():
        raise SnapshotError(f"{run.config_path}: missing; the run's configuration is needed to evaluate it")
    from canary_lib.config_loader import read_run_config
    from canary_lib.evaluate import evaluate_model

    cfg = read_run_config(run, [*overrides, "tracking.backend=none"])
    return evaluate_model(cfg, run.path / SNAPSHOT_EVALS_DIR / f"step{step}", kept[step])
