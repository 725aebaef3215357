"""Experiment tracking: a run's steps.csv and controller.csv rows, its resolved configuration and its final metrics,
mirrored to TensorBoard, W&B or trackio while it runs (`tracking.backend`; none by default).

    tracker = open_tracker(cfg, run_dir, resume_step=0)   # a NullTracker for tracking.backend: none
    tracker.log(step_values(row), step=row["step"])
    tracker.log_summary(metrics)
    tracker.close()

One tracker run per run directory, named `<method>/seed<k>`, grouped by `tracking.group` (default: the profile).
Its id is kept in the run directory (tracker_run.json), so a resumed training and the run's evaluation continue the
same tracker run. Tracking never changes results and never fails a run: the first error of a tracker library is
printed as one line and the tracker switches itself off. Each backend's library is imported only by its adapter
(the `tracking` extra installs all three). Choices: docs/training.md, "Experiment tracking".
"""

from __future__ import annotations

import json
import math
import re
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import yaml

if TYPE_CHECKING:  # pragma: no cover
    from canary_lib.config_schema import RunConfig

TRACKER_RUN_FILE = "tracker_run.json"
"""In the run directory: the tracker run's id, so resuming and evaluating continue the same tracker run."""


class TrackerRun(Protocol):
    """What one backend adapter does; `SafeTracker` wraps it so none of its errors reaches the run."""

    def log(self, values: dict[str, float], step: int) -> None: ...
    def log_summary(self, values: dict[str, float]) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


# ------------------------------------------------------------------------------------------ what is logged


def step_values(row: dict) -> dict[str, float]:
    """A steps.csv row as tracker scalars (the source as 1 for a safe batch, 0 for a target batch)."""
    return {
        "train/loss": row["loss"],
        "train/p": row["p"],
        "train/lr": row["lr"],
        "train/target_remaining": row["target_remaining"],
        "train/safe_batch": float(row["source"] == "safe"),
    }


def controller_values(row: dict) -> dict[str, float]:
    """A controller.csv row as tracker scalars (r_t, r-hat_t, p after the update, counts, seconds)."""
    names = ("canary_risk", "risk_ema", "p_before", "p_after", "n_canary", "n_misaligned", "n_judge_errors", "seconds")
    return {f"canary/{k}": row[k] for k in names if row.get(k) is not None}


def numeric_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of metrics.json (strings, None and NaN are left out)."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def tracker_run_id(run_dir: Path, *, fresh: bool) -> str:
    """The tracker run id of a run directory: a new one for a fresh start, else the one recorded there."""
    path = Path(run_dir) / TRACKER_RUN_FILE
    if not fresh and path.is_file():
        try:
            return str(json.loads(path.read_text(encoding="utf-8"))["id"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # damaged: start a new tracker run rather than fail the run
    from canary_lib.artifacts import write_json_atomic

    run_id = uuid.uuid4().hex[:16]
    write_json_atomic(path, {"id": run_id})
    return run_id


def tracker_run_name(cfg: RunConfig, run_dir: Path) -> str:
    """`<method>/seed<k>`: from the directories in the sweep's layout (`<runs>/<method>/seed<k>`, so the base
    model's evaluation is `base/seed<k>`, not its configuration's method), else from the configuration."""
    run_dir = Path(run_dir).resolve()
    if re.fullmatch(r"seed\d+", run_dir.name) and run_dir.parent.name:
        return f"{run_dir.parent.name}/{run_dir.name}"
    return f"{cfg.method.name}/seed{cfg.seed}"


# ------------------------------------------------------------------------------------------ adapters


class TensorBoardRun:
    """Event files in `<dir>/tensorboard` (torch's SummaryWriter). On resume, events logged after the checkpoint
    are purged (purge_step), so the curve has each step once."""

    def __init__(self, log_dir: Path, config_yaml: str, resume_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=resume_step or None)
        self.last_step = resume_step
        if not resume_step:
            self.writer.add_text("config", "```\n" + config_yaml + "\n```", 0)

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.last_step = max(self.last_step, step)

    def log_summary(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(f"final/{key}", value, self.last_step)
        self.writer.flush()

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbRun:
    """A W&B run (id kept in the run directory, resume="allow"); tracking.offline writes local files only."""

    def __init__(
        self, *, project: str, group: str, name: str, run_id: str, directory: Path, config: dict, offline: bool
    ) -> None:
        import wandb

        directory.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=project,
            group=group,
            name=name,
            id=run_id,
            resume="allow",
            dir=str(directory),
            config=config,
            mode="offline" if offline else "online",
            settings=wandb.Settings(console="off", silent=True),
        )

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def log_summary(self, values: dict[str, float]) -> None:
        self.run.summary.update(values)

    def flush(self) -> None:
        pass  # every row goes to W&B's own process as it is logged

    def close(self) -> None:
        self.run.finish()


class TrackioRun:
    """A trackio run in its local store (TRACKIO_DIR), continued by name on resume."""

    def __init__(
        self, *, project: str, group: str, name: str, config: dict, resume: bool, resume_step: int = 0
    ) -> None:
        import trackio

        # no dashboard in a notebook, no background CPU/GPU sampling: the run's own rows only
        self.run = trackio.init(
            project=project,
            name=name,
            group=group,
            config=config,
            resume="allow" if resume else "never",
            embed=False,
            auto_log_cpu=False,
            auto_log_gpu=False,
        )
        self.last_step = resume_step

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)
        self.last_step = max(self.last_step, step)

    def log_summary(self, values: dict[str, float]) -> None:
        self.run.log({f"final/{k}": v for k, v in values.items()}, step=self.last_step)

    def flush(self) -> None:
        pass  # trackio writes its queue to the store every half second

    def close(self) -> None:
        self.run.finish()


# ------------------------------------------------------------------------------------------ the run's tracker


class NullTracker:
    """tracking.backend: none."""

    enabled = False

    def log(self, values: dict[str, float], step: int) -> None:
        pass

    def log_summary(self, values: dict[str, Any]) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class SafeTracker:
    """A backend adapter whose errors never reach the run: the first one is printed on one line, then the
    tracker is off for the rest of the run."""

    enabled = True

    def __init__(self, backend: str, start: Any) -> None:
        self.backend = backend
        self._run: TrackerRun | None = None
        self._call(lambda: setattr(self, "_run", start()), "start")

    def _call(self, fn: Any, what: str) -> None:
        if not self.enabled:
            return
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - tracking must never fail a run
            self.enabled = False
            message = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            print(f"tracking ({self.backend}) off after an error at {what}: {message}")

    def log(self, values: dict[str, float], step: int) -> None:
        self._call(lambda: self._run.log(values, step), f"step {step}")

    def log_summary(self, values: dict[str, Any]) -> None:
        self._call(lambda: self._run.log_summary(numeric_metrics(values)), "the final metrics")

    def flush(self) -> None:
        """At each checkpoint: what a crash would lose after it is logged again by the resumed run."""
        self._call(lambda: self._run.flush(), "flush")

    def close(self) -> None:
        self._call(lambda: self._run.close(), "close")
        self.enabled = False


def open_tracker(cfg: RunConfig, run_dir: Path, *, resume_step: int = 0, fresh: bool = False) -> Any:
    """The tracker cfg.tracking describes for the run directory (a NullTracker when tracking is off).

    Args:
        resume_step: the first step this session logs (0 for a fresh training; the step after the checkpoint).
        fresh: a new training from step 0: a new tracker run id, not the one recorded in the run directory.
    """
    settings = cfg.tracking
    if settings.backend == "none":
        return NullTracker()
    run_dir = Path(run_dir)
    name = tracker_run_name(cfg, run_dir)
    group = settings.group or cfg.profile
    directory = Path(settings.dir) / group / name if settings.dir else run_dir
    config = cfg.model_dump(mode="json")

    def start() -> TrackerRun:
        run_id = tracker_run_id(run_dir, fresh=fresh)
        if settings.backend == "tensorboard":
            return TensorBoardRun(directory / "tensorboard", yaml.safe_dump(config, sort_keys=False), resume_step)
        if settings.backend == "wandb":
            return WandbRun(
                project=settings.project,
                group=group,
                name=name,
                run_id=run_id,
                directory=directory,
                config=config,
                offline=settings.offline,
            )
        return TrackioRun(
            project=settings.project, group=group, name=name, config=config, resume=not fresh, resume_step=resume_step
        )

    return SafeTracker(settings.backend, start)
