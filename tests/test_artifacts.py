"""The run-directory contract: atomic files, exact CSV round trips, completion markers."""

import pytest

from canary_lib.artifacts import (
    CONTROLLER_COLUMNS,
    IncompleteRunError,
    RunDir,
    append_jsonl,
    read_controller,
    read_jsonl,
    write_csv_atomic,
)
from canary_lib.config import load_config, read_run_config, write_run_config


def test_csv_round_trips_floats_exactly(tmp_path):
    rows = [
        dict(
            step=0,
            canary_risk=0.1,
            risk_ema=0.05 + 1e-17,
            p_before=0.0,
            p_after=0.075 - 0.005,
            n_canary=20,
            n_misaligned=2,
            seconds=1.23,
            n_judge_errors=1,
            n_unscored=3,
        )
    ]
    path = tmp_path / "controller.csv"
    write_csv_atomic(path, rows, CONTROLLER_COLUMNS)
    assert read_controller(path) == rows
    assert not list(tmp_path.glob(".*tmp"))


def test_markers_and_metrics(tmp_path):
    run = RunDir(tmp_path / "run")
    assert not run.is_complete("training")
    with pytest.raises(IncompleteRunError, match="not complete"):
        run.require_complete("training")
    run.update_metrics(a=1)
    assert run.update_metrics(b=2) == {"a": 1, "b": 2}
    run.mark_complete("training")
    run.require_complete("training")
    run.reset_stage("training")
    assert not run.is_complete("training")
    with pytest.raises(ValueError):
        run.marker("bogus")


def test_config_written_with_provenance(tmp_path):
    run = RunDir(tmp_path)
    write_run_config(run, load_config(overrides=["seed=9"]))
    cfg = read_run_config(run)
    assert cfg.seed == 9 and cfg.provenance["package_version"] and "git_commit" in cfg.provenance


def test_jsonl_ignores_torn_last_line(tmp_path):
    path = tmp_path / "x.jsonl"
    append_jsonl(path, [{"a": 1}, {"a": 2}])
    with open(path, "a") as fh:
        fh.write('{"a": 3')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
