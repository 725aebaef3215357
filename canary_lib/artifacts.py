"""The run-directory contract (one method x one seed), shared by training, evaluation, sweeps and figures.

Every file is written atomically (temporary file in the same directory, then rename), and a stage is finished
only once its marker file exists, so a crashed or running job is never read as a finished one. Columns and file
names are documented in docs/architecture.md. The bottom of the package: it imports nothing of it but
canary_lib.errors (config.yaml is written and read by canary_lib.config_loader, which knows the configuration).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from canary_lib.errors import CanaryError
from canary_lib.fileio import write_text_atomic

STEPS_COLUMNS = ["step", "source", "p", "target_remaining", "loss", "lr"]
CONTROLLER_COLUMNS = [
    "step",
    "canary_risk",
    "risk_ema",
    "p_before",
    "p_after",
    "n_canary",
    "n_misaligned",
    "n_judge_errors",
    "n_unscored",
    "seconds",
]
STAGES = ("training", "eval")
_INT_COLUMNS = {"step", "target_remaining", "n_canary", "n_misaligned", "n_judge_errors", "n_unscored"}
_STR_COLUMNS = {"source"}


class IncompleteRunError(CanaryError, RuntimeError):
    """A run directory was read as finished, but the stage's completion marker is missing."""


class RunFileError(CanaryError, ValueError):
    """A file of a run directory cannot be read (damaged, not UTF-8, not a run directory)."""


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def format_value(value: Any) -> str:
    """Floats with repr precision, so a CSV round-trips exactly (resume equivalence compares bytes)."""
    if isinstance(value, float):
        return repr(value)
    return "" if value is None else str(value)


def write_csv_atomic(path: str | Path, rows: Iterable[dict], columns: list[str]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([format_value(row.get(c)) for c in columns])
    write_text_atomic(path, buf.getvalue())


def drop_torn_tail(path: Path) -> None:
    """Cut a file back to its last complete line: what a crash in the middle of an append leaves after it."""
    if not path.is_file():
        return
    with open(path, "r+b") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        block = 1 << 16
        end = size
        while end > 0:  # search backwards for the last newline
            start = max(0, end - block)
            fh.seek(start)
            cut = fh.read(end - start).rfind(b"\n")
            if cut >= 0:
                fh.truncate(start + cut + 1)
                return
            end = start
        fh.truncate(0)


def append_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    """Append lines and fsync: a crash loses at most the rows of the call in flight. A torn last line left by an
    earlier crash is cut off first, so new rows never join onto it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    drop_torn_tail(path)
    with open(path, "a", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str | Path) -> list[dict]:
    """All complete lines; a torn last line (no newline yet: a crash mid-write) is ignored.

    Raises:
        RunFileError: a complete line that is not UTF-8 or not a JSON object (the file was damaged otherwise).
    """
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")[:-1]  # the last piece is b"" or a torn line without its newline
    rows = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise RunFileError(
                f"{path}: line {number} is not UTF-8 ({exc.reason}); the file is damaged: "
                "delete it (or that line) to recompute what it held"
            ) from None
        except json.JSONDecodeError as exc:
            raise RunFileError(
                f"{path}: line {number} is not valid JSON ({exc.msg}); the file is damaged: "
                "delete it (or that line) to recompute what it held"
            ) from None
        if not isinstance(row, dict):
            raise RunFileError(f"{path}: line {number} is not a JSON object")
        rows.append(row)
    return rows


def _convert(column: str, raw: str) -> Any:
    if raw == "":
        return None
    if column in _STR_COLUMNS:
        return raw
    if column in _INT_COLUMNS:
        return int(raw)
    return float(raw)


def read_csv(path: str | Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: _convert(k, v) for k, v in row.items()} for row in csv.DictReader(fh)]


def read_steps(path: str | Path) -> list[dict]:
    return read_csv(path)


def read_controller(path: str | Path) -> list[dict]:
    return read_csv(path)


class RunDir:
    """Paths and small helpers of one run directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config_path = self.path / "config.yaml"
        self.steps_path = self.path / "steps.csv"
        self.controller_path = self.path / "controller.csv"
        self.canary_answers_path = self.path / "canary_answers.jsonl"
        self.metrics_path = self.path / "metrics.json"
        self.adapter_dir = self.path / "adapter"
        self.checkpoint_dir = self.path / "checkpoint"
        self.generations_path = self.path / "generations.jsonl"
        self.judgments_path = self.path / "judgments.jsonl"

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def marker(self, stage: str) -> Path:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
        return self.path / f"{stage.upper()}_COMPLETE"

    def read_metrics(self) -> dict:
        """metrics.json ({} when there is none).

        Raises:
            RunFileError: the file is damaged (not UTF-8, not JSON, not an object).
        """
        if not self.metrics_path.exists():
            return {}
        try:
            metrics = json.loads(self.metrics_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RunFileError(
                f"{self.metrics_path}: damaged ({type(exc).__name__}: {exc}); restore it, or delete "
                f"{self.path} and run it again"
            ) from None
        if not isinstance(metrics, dict):
            raise RunFileError(
                f"{self.metrics_path}: damaged (not a JSON object); restore it, or delete {self.path} and run it again"
            )
        return metrics

    def update_metrics(self, **values: Any) -> dict:
        metrics = {**self.read_metrics(), **values}
        write_json_atomic(self.metrics_path, metrics)
        return metrics

    def remove_temporaries(self) -> None:
        """Delete what a killed process left half-written: `.<name>.<random>.tmp` files and the temporary
        `.checkpoint-*` / `.adapter-*` folders (a live run of the same directory is not supported anyway)."""
        if not self.path.is_dir():
            return
        for path in self.path.iterdir():
            if path.name.startswith(".") and path.is_file() and path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)
            elif path.is_dir() and path.name.startswith((".checkpoint-", ".adapter-")):
                shutil.rmtree(path, ignore_errors=True)

    def mark_complete(self, stage: str) -> None:
        write_text_atomic(self.marker(stage), "")

    def is_complete(self, stage: str) -> bool:
        return self.marker(stage).exists()

    def reset_stage(self, stage: str) -> None:
        self.marker(stage).unlink(missing_ok=True)

    def require_complete(self, stage: str) -> None:
        if not self.is_complete(stage):
            raise IncompleteRunError(
                f"{self.path}: {stage} is not complete (no {self.marker(stage).name}); finish or rerun it first"
            )
