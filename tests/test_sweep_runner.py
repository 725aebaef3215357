"""The sweep runner on cheap fake notebooks: expansion, validation before running, skipping, failures, resume.

    .venv/bin/pytest tests/test_sweep_runner.py -q

The fake notebooks declare the same parameters as the real ones and only write marker files, so every test
exercises papermill and submitit for real in a few seconds.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import nbformat
import pytest
import yaml

from canary_lib.config import ConfigError
from canary_lib.sweep import NOTEBOOKS, build_plan, load_sweep, run_sweep

# The parameters cells of the real notebooks (names and types); the sweep checks against these.
PARAMETERS = {
    "data": 'PARAMS: list = []\nOVERRIDES: list = []\nRESULTS_DIR: str = "results"\n',
    "canary_design": 'PARAMS: list = []\nOVERRIDES: list = []\nRESULTS_DIR: str = "results"\n',
    "train": 'PARAMS: list = []\nOVERRIDES: list = []\nRUN_DIR: str = "run"\nINTERACTIVE: bool = False\n',
    "evaluate": 'PARAMS: list = []\nOVERRIDES: list = []\nRUN_DIR: str = "run"\nBASE_MODEL: bool = False\n',
    "ablations": 'PARAMS: list = []\nOVERRIDES: list = []\nRUNS_DIR: str = "runs"\nRESULTS_DIR: str = "r"\n',
    "figures": 'PARAMS: list = []\nOVERRIDES: list = []\nRUNS_DIR: str = "runs"\nRESULTS_DIR: str = "r"\n'
    "INTERACTIVE: bool = False\n",
}

# What each fake notebook does: log its execution, fail on request, write the run's completion marker.
BODY = {
    "data": "import os\nlog('data')\nif os.environ.get('OMP_NUM_THREADS'):\n    log('threads ' + os.environ['OMP_NUM_THREADS'])",  # noqa: E501
    "canary_design": "log('canary_design')",
    "train": textwrap.dedent("""
        over = dict(o.split('=', 1) for o in OVERRIDES)
        if Path('FAIL_SEED').exists() and over['seed'] == Path('FAIL_SEED').read_text().strip():
            raise RuntimeError('planned failure for seed ' + over['seed'])
        ref = over.get('method.reference_run')
        if ref:  # a replay must never start before its reference run finished training
            assert RunDir(ref).is_complete('training'), 'reference run not trained: ' + ref
        log('train ' + RUN_DIR)
        RunDir(RUN_DIR).mark_complete('training')
    """),
    "evaluate": "log('evaluate ' + RUN_DIR)\nRunDir(RUN_DIR).mark_complete('eval')",
    "ablations": "log('ablations')",
    "figures": "log('figures')",
}

PRELUDE = textwrap.dedent("""
    from pathlib import Path
    from canary_lib.artifacts import RunDir
    def log(line):
        with open('executions.log', 'a') as fh:
            fh.write(line + '\\n')
""")


def _write_notebooks(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stage, name in NOTEBOOKS.items():
        nb = nbformat.v4.new_notebook()
        params = nbformat.v4.new_code_cell(PARAMETERS[stage])
        params.metadata["tags"] = ["parameters"]
        nb.cells = [params, nbformat.v4.new_code_cell(PRELUDE), nbformat.v4.new_code_cell(BODY[stage])]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, folder / name)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with fake notebooks, a profile, the method files and a sweep file writer."""
    monkeypatch.chdir(tmp_path)
    _write_notebooks(tmp_path / "notebooks")
    (tmp_path / "profile.yaml").write_text("profile: fake\n")
    methods = tmp_path / "methods"
    methods.mkdir()
    (methods / "canary.yaml").write_text("method: {name: canary}\n")
    (methods / "fixed_mean.yaml").write_text("method: {name: fixed_mean}\n")
    (methods / "no_defense.yaml").write_text("method: {name: no_defense}\n")
    (methods / "toy.yaml").write_text("method: {name: toy}\n")  # a parameter file without a registry entry
    (methods / "delayed.yaml").write_text("method: {name: canary}\n")  # a file whose name is not its method
    return tmp_path


def _sweep(root: Path, **changes) -> Path:
    spec = {
        "profile": "fake",
        "params": ["profile.yaml"],
        "methods": ["canary", "fixed_mean"],
        "seeds": [42],
        "base_row": False,
        "methods_dir": "methods",
        "executor": {"kind": "debug"},
    }
    spec.update(changes)
    path = root / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _log(root: Path) -> list[str]:
    path = root / "executions.log"
    return path.read_text().splitlines() if path.exists() else []


def test_expansion_fills_reference_runs_and_dependencies(project: Path) -> None:
    spec = load_sweep(_sweep(project, seeds=[42, 123], base_row=True))
    plan = build_plan(spec)
    names = [job.name for job in plan.runs]
    assert names == [
        "base/seed42",
        "base/seed123",
        "canary/seed42",
        "canary/seed123",
        "fixed_mean/seed42",
        "fixed_mean/seed123",
    ]
    replay = plan.runs[-1]
    reference = project / "runs" / "fake" / "canary" / "seed123"
    assert replay.needs == ["canary/seed123"]
    assert f"method.reference_run={reference}" in replay.steps[0].parameters["OVERRIDES"]
    assert "seed=123" in replay.steps[0].parameters["OVERRIDES"]
    assert [s.stage for s in replay.steps] == ["train", "evaluate"]
    base = plan.runs[0]
    assert [s.stage for s in base.steps] == ["evaluate"] and base.steps[0].parameters["BASE_MODEL"] is True
    assert Path(replay.steps[0].output_path) == project / "runs/fake/fixed_mean/seed123/02_train_controller.ipynb"


def test_extra_runs_add_runs_outside_the_grid(project: Path) -> None:
    plan = build_plan(load_sweep(_sweep(project, seeds=[42, 123], extra_runs={"no_defense": [42]})))
    assert [job.name for job in plan.runs][-1] == "no_defense/seed42"
    assert len(plan.runs) == 5
    with pytest.raises(ConfigError, match="already in methods"):
        build_plan(load_sweep(_sweep(project, extra_runs={"canary": [42]})))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"notebook_parameters": {"train": {"INTERACTVE": True}}}, "'INTERACTVE' is not declared"),
        ({"notebook_parameters": {"train": {"INTERACTIVE": "yes"}}}, "expected bool"),
        ({"notebook_parameters": {"trian": {"INTERACTIVE": True}}}, "unknown stage"),
        ({"overrides": ["controller.alpah=0.3"]}, "controller.alpah: unknown key"),
        ({"overrides": ["controller.alpha=2"]}, "controller.alpha"),
        ({"methods": ["canary", "fixd"]}, "'fixd'"),
        ({"methods": ["canary", "toy"]}, "'toy' is not a registered method"),
        ({"methods": ["canary", "delayed"]}, "gives method.name 'canary'; set method.name: delayed"),
        ({"methods": ["fixed_mean"]}, "add 'canary' to methods"),
        ({"seedz": [1]}, "seedz: unknown key"),
        ({"seeds": [42, 123, 42]}, r"methods and seeds must not repeat: seeds \[42\] appear more than once"),
        ({"methods": ["canary", "no_defense", "canary"]}, r"must not repeat: methods \['canary'\] appear"),
        ({"judge_base_url": "http://judge:8000/v1"}, "judge.model: the openai judge backend needs judge.model"),
        ({"overrides": ["controller.p_max=1", "controller.p_init=1"]}, r"controller.p_max: must be in \[0, 1\)"),
    ],
)
def test_typos_and_bad_values_fail_before_anything_runs(project: Path, changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        run_sweep(_sweep(project, **changes))
    assert _log(project) == []
    assert not (project / "runs").exists()


def test_failed_run_is_reported_others_go_on_and_rerun_finishes_only_what_is_missing(
    project: Path, capsys: pytest.CaptureFixture
) -> None:
    (project / "FAIL_SEED").write_text("123")
    sweep = _sweep(project, seeds=[42, 123], base_row=True)
    assert run_sweep(sweep) == 1
    out = capsys.readouterr()
    assert "planned failure for seed 123" in out.out
    assert "skipped: reference run" in out.out  # fixed_mean/seed123 waits on the failed canary run
    runs = project / "runs" / "fake"
    first = _log(project)
    assert first.count("data") == 1 and first.count("figures") == 1
    assert f"train {runs}/fixed_mean/seed42" in first and f"evaluate {runs}/base/seed123" in first
    assert not any("seed123" in line and "train" in line for line in first)
    # The failed notebook is kept, with the error, where the report says.
    failed_nb = nbformat.read(runs / "canary/seed123/02_train_controller.ipynb", as_version=4)
    assert "planned failure" in str(failed_nb.cells)

    (project / "FAIL_SEED").unlink()
    (project / "executions.log").unlink()
    assert run_sweep(sweep) == 0
    second = _log(project)
    assert second == [
        f"train {runs}/canary/seed123",
        f"evaluate {runs}/canary/seed123",
        f"train {runs}/fixed_mean/seed123",
        f"evaluate {runs}/fixed_mean/seed123",
        "ablations",
        "figures",
    ]

    (project / "executions.log").unlink()
    assert run_sweep(sweep) == 0  # a third invocation: every run complete, only the aggregation reruns
    assert _log(project) == ["ablations", "figures"]


def test_complete_jobs_are_not_submitted_again(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from canary_lib import sweep as sweep_module

    submitted: list[str] = []
    submit = sweep_module._Runner._submit
    monkeypatch.setattr(
        sweep_module._Runner, "_submit", lambda self, job, gpus: submitted.append(job.name) or submit(self, job, gpus)
    )
    path = _sweep(project, methods=["canary", "no_defense"])
    assert run_sweep(path) == 0
    assert submitted == ["prepare", "canary/seed42", "no_defense/seed42", "analysis"]
    submitted.clear()
    assert run_sweep(path) == 0  # on a cluster, a complete run must not wait in the queue to find out
    assert submitted == ["analysis"]
    out = capsys.readouterr().out
    assert re.search(r"ok +canary/seed42 +already complete", out)
    assert "[4/4 jobs] 4 ok, 0 failed, 0 running, 0 waiting" in out


def test_dry_run_lists_jobs_and_runs_nothing(project: Path, capsys: pytest.CaptureFixture) -> None:
    assert run_sweep(_sweep(project), dry_run=True) == 0
    out = capsys.readouterr().out
    assert "canary/seed42" in out and "fixed_mean/seed42" in out and "to run" in out
    assert _log(project) == []


@pytest.mark.slow
def test_local_executor_runs_two_at_a_time_and_replays_wait(project: Path) -> None:
    sweep = _sweep(
        project,
        methods=["canary", "fixed_mean", "no_defense"],
        executor={"kind": "local", "parallel": 2, "poll_s": 0.2, "threads_per_job": 1},
    )
    assert run_sweep(sweep) == 0
    log = _log(project)
    runs = project / "runs" / "fake"
    # The replay asserts inside its notebook that the canary run was trained first; check the order too.
    assert log.index(f"train {runs}/canary/seed42") < log.index(f"train {runs}/fixed_mean/seed42")
    assert sorted(line for line in log if line.startswith("evaluate")) == sorted(
        f"evaluate {runs}/{m}/seed42" for m in ("canary", "fixed_mean", "no_defense")
    )
    assert (runs / "_submitit").is_dir()
    assert "threads 1" in log  # the kernels got the job's thread limit


def test_judge_server_address_and_gpus_are_sweep_parameters(project: Path) -> None:
    spec = load_sweep(
        _sweep(
            project,
            judge_base_url="http://judge:8000/v1",
            overrides=["judge.model=qwen-judge"],
            executor={"kind": "slurm", "gpus_per_job": 2, "slurm_partition": "gpu"},
        )
    )
    plan = build_plan(spec)
    overrides = plan.runs[0].steps[0].parameters["OVERRIDES"]
    assert "judge.backend=openai" in overrides and "judge.base_url=http://judge:8000/v1" in overrides
    assert spec.executor.gpus_per_job == 2


def test_sweep_status_file_records_every_job(project: Path) -> None:
    import json

    (project / "FAIL_SEED").write_text("42")
    assert run_sweep(_sweep(project, methods=["canary", "no_defense"])) == 1
    status = json.loads((project / "results" / "fake" / "sweep_status.json").read_text())
    by_name = {job["name"]: job for job in status["jobs"]}
    assert by_name["canary/seed42"]["ok"] is False and "planned failure" in by_name["canary/seed42"]["error"]
    assert by_name["canary/seed42"]["notebook"].endswith("canary/seed42/02_train_controller.ipynb")
    assert by_name["analysis"]["ok"] is True


def test_reproduce_names_the_known_profiles(project: Path) -> None:
    from canary_lib.sweep import reproduce

    (project / "parameters" / "sweeps").mkdir(parents=True)
    (project / "parameters" / "sweeps" / "organism.yaml").write_text("profile: organism\n")
    with pytest.raises(ConfigError, match=r"no sweep file for profile 'orgnism'.*\['organism'\]"):
        reproduce("orgnism")


@pytest.mark.slow
def test_status_line_shows_where_each_running_job_is(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A job's loop writes its step to the file the runner names (CANARY_PROGRESS_FILE); while the job runs,
    the runner prints a status line with it, even though no job finished in between."""
    import canary_lib.sweep_progress as sweep_progress

    monkeypatch.setattr(sweep_progress, "STATUS_EVERY_S", 0.5)
    monkeypatch.setitem(
        BODY,
        "train",
        textwrap.dedent("""
        import time
        from canary_lib.job_progress import ProgressFile
        ProgressFile('train', 10).update(4)
        time.sleep(4)
        RunDir(RUN_DIR).mark_complete('training')
    """),
    )
    _write_notebooks(project / "notebooks")
    sweep = _sweep(project, methods=["no_defense"], executor={"kind": "local", "parallel": 1, "poll_s": 0.2})
    assert run_sweep(sweep) == 0
    out = capsys.readouterr().out
    line = r"1 running, 1 waiting \| elapsed [0-9:]+ \| ETA [^|]+\| no_defense/seed42 train 4/10 ETA"
    assert re.search(line, out), out
