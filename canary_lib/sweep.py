"""Batch runs: a profile x methods x seeds expanded into papermill executions of the six notebooks.

    canary sweep parameters/sweeps/organism.yaml          # run_sweep(path)
    canary reproduce --profile organism                   # reproduce("organism") = the profile's sweep file

The pipeline of one sweep:

1. ``00_data_prep`` then ``01_canary_design`` once (one job);
2. ``03_evaluate_judge`` on the base model for every seed (the ``base`` row of Table 1), and ``02_train_controller``
   then ``03_evaluate_judge`` for every method x seed; runs that replay the canary run of their seed
   (``MethodSpec.replays_reference`` in canary_lib.methods) wait until it has finished training;
3. ``04_ablations`` then ``05_figures`` once (one job), reading every finished run.

Everything is checked before anything runs: each parameter name against the target notebook's ``parameters``
cell (papermill itself only warns on a typo) and each run's configuration against the typed ``RunConfig``.
Complete stages are skipped (run directories carry ``TRAINING_COMPLETE`` / ``EVAL_COMPLETE``, and a stage is
complete only for the configuration its config.yaml records: canary_lib.binding), a failed run is reported and
the others go on, and a second invocation finishes only what is missing. A run made under other settings is
"stale": its job fails with the differing keys rather than reusing it.

Jobs go through submitit for every executor kind, so the code path is the same on a laptop and on SLURM:
``local`` (subprocesses, ``parallel`` at a time), ``slurm`` (one SLURM job per run), ``debug`` (in-process).
This module imports no torch.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from canary_lib.artifacts import RunDir, write_json_atomic
from canary_lib.binding import describe, stale_keys
from canary_lib.config import ConfigError, RunConfig, Strict, load_config, read_yaml, validate_model
from canary_lib.methods import BASE, METHODS, REFERENCE_METHOD
from canary_lib.job_progress import PROGRESS_ENV, describe_job, read_progress
from canary_lib.sweep_progress import SweepProgress

# Stage name -> notebook file. The order is the pipeline order.
NOTEBOOKS = {
    "data": "00_data_prep.ipynb",
    "canary_design": "01_canary_design.ipynb",
    "train": "02_train_controller.ipynb",
    "evaluate": "03_evaluate_judge.ipynb",
    "ablations": "04_ablations.ipynb",
    "figures": "05_figures.ipynb",
}
_RUN_STAGES = {"train": "training", "evaluate": "eval"}
"""Notebook stage -> the run-directory stage whose completion marker (canary_lib.artifacts) says it is done."""
_PY_TYPES = {"str": str, "bool": bool, "int": int, "float": (int, float), "list": list, "dict": dict}


# ---------------------------------------------------------------------------------------------- the sweep file


class ExecutorSettings(Strict):
    """How jobs run. Every kind goes through submitit (same code path)."""

    kind: Literal["local", "slurm", "debug"] = "local"
    """local: subprocesses on this machine; slurm: SLURM jobs; debug: in this process (tests, debugging)."""
    parallel: int = Field(1, ge=1)
    """Jobs running at once (1 = sequential)."""
    gpus_per_job: int = Field(0, ge=0)
    gpus: list[int] = Field(default_factory=list)
    """local only: GPU ids handed out to concurrent jobs, gpus_per_job each (CUDA_VISIBLE_DEVICES)."""
    cpus_per_job: int | None = Field(None, ge=1)
    mem_gb: float | None = Field(None, gt=0)
    timeout_min: int = Field(24 * 60, ge=1)
    folder: str = "{runs_dir}/_submitit"
    """submitit's folder for job pickles and logs."""
    slurm_partition: str | None = None
    slurm_additional_parameters: dict[str, Any] = Field(default_factory=dict)
    poll_s: float = Field(1.0, gt=0)
    """Seconds between status checks of running jobs."""
    threads_per_job: int | None = Field(None, ge=1)
    """OMP/MKL threads of each notebook kernel (e.g. 1 with parallel 2 on 2 cores); None leaves torch's default."""


class SweepSpec(Strict):
    """One sweep file (parameters/sweeps/*.yaml). Relative paths are relative to the working directory."""

    profile: str
    params: list[str]
    """The profile's parameter files, merged left to right (e.g. [parameters/organism.yaml])."""
    methods: list[str]
    """Registered methods (canary_lib.methods.METHODS), each with its parameter file <methods_dir>/<name>.yaml;
    the name is also the run directory's name."""
    seeds: list[int]
    overrides: list[str] = Field(default_factory=list)
    """key=value overrides for every run (the same syntax as `canary train --set`)."""
    judge_base_url: str | None = None
    """Address of a running OpenAI-compatible judge server (e.g. `vllm serve`): sets judge.backend=openai and
    judge.base_url for every run, so no job loads the judge itself."""
    base_row: bool = True
    """Evaluate the base model (no fine-tuning) for every seed: Table 1's base row."""
    extra_runs: dict[str, list[int]] = Field(default_factory=dict)
    """Runs outside the methods x seeds grid, method -> seeds (e.g. the organism's secure-answers control);
    they are trained and evaluated like the others and listed apart in the results."""
    reference_method: str = REFERENCE_METHOD
    """The method whose run of the same seed the replay ablations (fixed_mean, shuffled) replay."""
    runs_dir: str = "runs/{profile}"
    results_dir: str = "results/{profile}"
    notebooks_dir: str = "notebooks"
    methods_dir: str = "parameters/methods"
    notebook_parameters: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Extra papermill parameters per stage (data, canary_design, train, evaluate, ablations, figures)."""
    cell_timeout_s: int | None = Field(None, ge=1)
    """Per-cell execution timeout handed to papermill (None: no limit)."""
    kernel_name: str = "python3"
    executor: ExecutorSettings = Field(default_factory=ExecutorSettings)


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file; errors name the key and the file."""
    return validate_model(SweepSpec, read_yaml(path), str(path), "sweep file")


# ---------------------------------------------------------------------------------------------- jobs


@dataclass
class NotebookStep:
    """One papermill execution: a notebook, where the executed copy goes, and its parameters."""

    stage: str
    input_path: str
    output_path: str
    parameters: dict[str, Any]
    run_dir: str | None = None
    """For train/evaluate: the run directory whose completion marker says the step is done."""
    always: bool = False
    """Aggregation steps (04, 05) run whenever their job runs; others are skipped once done."""
    config: Any = None
    """For train/evaluate: the run's resolved RunConfig; the stage is done only for this configuration."""

    def stale(self) -> list[str]:
        """How the run directory's recorded configuration differs from this step's ([] when it does not)."""
        if self.run_dir is None or self.config is None:
            return []
        return stale_keys(RunDir(self.run_dir), self.config, _RUN_STAGES[self.stage])

    def is_done(self) -> bool:
        if self.run_dir is not None:
            return RunDir(self.run_dir).is_complete(_RUN_STAGES[self.stage]) and not self.stale()
        if self.always:
            return False
        return _read_marker(self._marker) == _fingerprint(self.parameters)

    @property
    def _marker(self) -> Path:
        return Path(self.output_path).with_suffix(".done.json")

    def mark_done(self) -> None:
        if self.run_dir is None:
            write_json_atomic(self._marker, _fingerprint(self.parameters))


@dataclass
class Job:
    """A unit of scheduling: notebook steps run in order in one process (one submitit job)."""

    name: str
    steps: list[NotebookStep]
    cwd: str
    kernel_name: str = "python3"
    cell_timeout_s: int | None = None
    needs: list[str] = field(default_factory=list)
    """Names of jobs whose training must be complete before this one starts (replay ablations)."""
    needs_run_dirs: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    """Environment variables for the notebook kernels (they inherit the job's environment)."""

    def is_done(self) -> bool:
        return all(step.is_done() for step in self.steps)

    def state(self) -> str:
        """complete, to run, or stale (a finished stage of the run was made under other settings)."""
        if self.is_done():
            return "complete"
        for step in self.steps:
            if step.run_dir is not None and RunDir(step.run_dir).is_complete(_RUN_STAGES[step.stage]) \
                    and (changes := step.stale()):
                return f"stale ({step.stage}: {describe(changes)})"
        return "to run"


@dataclass
class JobOutcome:
    name: str
    ok: bool
    seconds: float = 0.0
    executed: list[str] = field(default_factory=list)
    """Stages executed in this invocation (skipped ones are not listed)."""
    error: str | None = None
    notebook: str | None = None
    """The executed notebook where the failure happened (papermill saves it with the error)."""


@dataclass
class Plan:
    spec: SweepSpec
    prep: Job
    runs: list[Job]
    analysis: Job


def _fingerprint(parameters: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(parameters, sort_keys=True, default=str))


def _read_marker(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


KERNEL_START_TIMEOUT_S = 600
"""How long a notebook's kernel may take to start (papermill's default is 60 s). Importing torch and
transformers in a kernel that shares its cores with other jobs' training took over a minute in the SLURM test;
a kernel that never starts still fails the job, only later."""


def execute_job(job: Job) -> JobOutcome:
    """Run a job's notebook steps in order (what each submitit job calls); never raises for a failed notebook.

    Args:
        job: the steps to run, their working directory and kernel.

    Returns:
        JobOutcome with ok=False, the error and the executed notebook's path when a step failed.
    """
    import papermill as pm  # imported here: keeps `canary --help` fast and the module light

    start = time.time()
    outcome = JobOutcome(name=job.name, ok=True)
    saved = {name: os.environ.get(name) for name in job.env}
    os.environ.update(job.env)  # kernels start with this environment; restored below (debug runs in-process)
    try:
        _execute_steps(job, outcome, pm)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    outcome.seconds = time.time() - start
    return outcome


def _execute_steps(job: Job, outcome: JobOutcome, pm: Any) -> None:
    for step in job.steps:
        if step.is_done():
            continue
        Path(step.output_path).parent.mkdir(parents=True, exist_ok=True)
        try:
            pm.execute_notebook(
                step.input_path, step.output_path, parameters=step.parameters, kernel_name=job.kernel_name,
                cwd=job.cwd, progress_bar=False, execution_timeout=job.cell_timeout_s,
                start_timeout=KERNEL_START_TIMEOUT_S,
            )
        except Exception as exc:  # a failed notebook is a result to report, not a crash of the sweep
            outcome.ok = False
            outcome.error = _describe_error(exc)
            outcome.notebook = step.output_path
            break
        step.mark_done()
        outcome.executed.append(step.stage)


def _describe_error(exc: BaseException) -> str:
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    if ename:  # PapermillExecutionError: the exception raised inside the notebook
        return f"{ename}: {evalue}"
    return f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------------------------------- planning


def _abs(path: str | Path, root: Path) -> Path:
    path = Path(path)
    return path if path.is_absolute() else (root / path)


def build_plan(spec: SweepSpec, root: Path | None = None) -> Plan:
    """Expand a sweep into jobs and check every parameter name and value before anything runs.

    Args:
        spec: the validated sweep file.
        root: working directory for relative paths and notebook execution (default: the current one).

    Raises:
        ConfigError: a missing file, a notebook parameter the notebook does not declare (or of the wrong type),
            or a run configuration the typed RunConfig rejects; the message names the key.
    """
    root = (root or Path.cwd()).resolve()
    runs_dir = _abs(spec.runs_dir.format(profile=spec.profile), root)
    results_dir = _abs(spec.results_dir.format(profile=spec.profile), root)
    notebooks = {stage: _abs(spec.notebooks_dir, root) / name for stage, name in NOTEBOOKS.items()}
    for stage, path in notebooks.items():
        if not path.is_file():
            raise ConfigError(f"notebook for stage {stage!r} not found: {path}")
    unknown_stages = sorted(set(spec.notebook_parameters) - set(NOTEBOOKS))
    if unknown_stages:
        raise ConfigError(f"notebook_parameters: unknown stage(s) {unknown_stages}; known: {list(NOTEBOOKS)}")
    if not spec.methods or not spec.seeds:
        raise ConfigError("a sweep needs at least one method and one seed")
    repeats = [f"{what} {sorted({v for v in values if values.count(v) > 1})}"
               for what, values in (("methods", list(spec.methods)), ("seeds", list(spec.seeds)))
               if len(set(values)) != len(values)]
    if repeats:
        raise ConfigError(f"methods and seeds must not repeat: {' and '.join(repeats)} appear more than once")
    repeated = sorted(set(spec.extra_runs) & set(spec.methods))
    if repeated:
        raise ConfigError(f"extra_runs: {repeated} already in methods (each method runs once per seed)")

    params = [str(_abs(p, root)) for p in spec.params]
    overrides = list(spec.overrides)
    if spec.judge_base_url:  # a running OpenAI-compatible judge server replaces a judge loaded in every job
        overrides += ["judge.backend=openai", f"judge.base_url={spec.judge_base_url}"]
    checker = _ParameterChecker(notebooks)
    check_judge_address(spec, _check_config(params, overrides, "the profile"))

    def step(stage: str, output: Path, run_dir: Path | None = None, always: bool = False, config: Any = None,
             **values: Any):
        parameters = checker.check(stage, {**values, **spec.notebook_parameters.get(stage, {})})
        return NotebookStep(stage, str(notebooks[stage]), str(output), parameters,
                            str(run_dir) if run_dir else None, always, config)

    threads = spec.executor.threads_per_job
    env = {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")} if threads else {}

    def job(name: str, steps: list[NotebookStep], **kw: Any) -> Job:
        return Job(name, steps, str(root), spec.kernel_name, spec.cell_timeout_s, env=env, **kw)

    shared = dict(PARAMS=params, OVERRIDES=overrides)
    nb_out = results_dir / "notebooks"
    prep = job("prepare", [
        step("data", nb_out / NOTEBOOKS["data"], RESULTS_DIR=str(results_dir), **shared),
        step("canary_design", nb_out / NOTEBOOKS["canary_design"], RESULTS_DIR=str(results_dir), **shared),
    ])

    runs: list[Job] = []
    if spec.base_row:
        for seed in spec.seeds:
            run_dir = runs_dir / BASE / f"seed{seed}"
            run_overrides = overrides + [f"seed={seed}"]
            config = _check_config(params, run_overrides, f"{BASE}/seed{seed}")
            runs.append(job(f"{BASE}/seed{seed}", [
                step("evaluate", run_dir / NOTEBOOKS["evaluate"], run_dir, config=config, PARAMS=params,
                     OVERRIDES=run_overrides, RUN_DIR=str(run_dir), BASE_MODEL=True),
            ]))
    grid = [(method, spec.seeds) for method in spec.methods] + list(spec.extra_runs.items())
    for method, seeds in grid:
        method_file = _abs(spec.methods_dir, root) / f"{method}.yaml"
        if not method_file.is_file():
            raise ConfigError(f"methods: {method!r}: no parameter file {method_file}")
        if method not in METHODS:
            raise ConfigError(f"methods: {method!r} is not a registered method (canary_lib/methods.py); "
                              f"known: {', '.join(METHODS)}")
        for seed in seeds:
            run_dir = runs_dir / method / f"seed{seed}"
            run_overrides = overrides + [f"seed={seed}"]
            needs, needs_dirs = [], []
            if METHODS[method].replays_reference:
                reference = runs_dir / spec.reference_method / f"seed{seed}"
                if spec.reference_method not in spec.methods and not RunDir(reference).is_complete("training"):
                    raise ConfigError(
                        f"methods: {method!r} replays the {spec.reference_method!r} run of the same seed: "
                        f"add {spec.reference_method!r} to methods (or finish {reference} first)"
                    )
                run_overrides.append(f"method.reference_run={reference}")
                needs, needs_dirs = [f"{spec.reference_method}/seed{seed}"], [str(reference)]
            run_params = params + [str(method_file)]
            config = _check_config(run_params, run_overrides, f"{method}/seed{seed}")
            name = config.method.name
            if name != method:  # one name per method: registry entry, parameter file, run directory
                raise ConfigError(f"methods: {method!r}: {method_file} gives method.name {name!r}; "
                                  f"set method.name: {method} in it")
            values = dict(PARAMS=run_params, OVERRIDES=run_overrides, RUN_DIR=str(run_dir))
            runs.append(job(f"{method}/seed{seed}", [
                step("train", run_dir / NOTEBOOKS["train"], run_dir, config=config, **values),
                step("evaluate", run_dir / NOTEBOOKS["evaluate"], run_dir, config=config, BASE_MODEL=False, **values),
            ], needs=needs, needs_run_dirs=needs_dirs))

    analysis = job("analysis", [
        step(stage, nb_out / NOTEBOOKS[stage], always=True, RUNS_DIR=str(runs_dir), RESULTS_DIR=str(results_dir),
             **shared)
        for stage in ("ablations", "figures")
    ])
    return Plan(spec, prep, runs, analysis)


def is_loopback_url(url: str) -> bool:
    """True for an address on the machine itself: localhost, 127.0.0.0/8, ::1."""
    import ipaddress
    from urllib.parse import urlsplit

    host = urlsplit(url if "//" in url else "//" + url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_judge_address(spec: SweepSpec, cfg: RunConfig) -> None:
    """Refuse a judge server on loopback when jobs run on SLURM compute nodes: there every job would load its
    model, train K steps and fail at the first canary evaluation (each node's 127.0.0.1 is itself)."""
    if spec.executor.kind != "slurm" or cfg.judge.backend != "openai" or not cfg.judge.base_url:
        return
    if is_loopback_url(cfg.judge.base_url):
        raise ConfigError(f"judge_base_url: the judge server is at {cfg.judge.base_url}, a loopback address, but "
                          "the jobs run on SLURM compute nodes, where that is each node itself: set judge_base_url "
                          "in the sweep file to the judge's address as the nodes see it (e.g. "
                          "http://judge-node:8000/v1)")


def _check_config(params: list[str], overrides: list[str], what: str) -> RunConfig:
    try:
        return load_config(params, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{what}: {exc}") from None


class _ParameterChecker:
    """Checks papermill parameters against each notebook's `parameters` cell (names, and declared types)."""

    def __init__(self, notebooks: dict[str, Path]) -> None:
        import papermill as pm

        self.declared = {stage: pm.inspect_notebook(str(path)) for stage, path in notebooks.items()}
        self.notebooks = notebooks

    def check(self, stage: str, values: dict[str, Any]) -> dict[str, Any]:
        declared = self.declared[stage]
        for name, value in values.items():
            if name not in declared:
                raise ConfigError(
                    f"notebook parameter {name!r} is not declared in the parameters cell of "
                    f"{self.notebooks[stage].name} (declared: {sorted(declared)})"
                )
            expected = _PY_TYPES.get(declared[name]["inferred_type_name"])
            if expected and not (isinstance(value, expected) and not (expected is int and isinstance(value, bool))):
                raise ConfigError(
                    f"notebook parameter {name!r} of {self.notebooks[stage].name}: expected "
                    f"{declared[name]['inferred_type_name']}, got {type(value).__name__} ({value!r})"
                )
        return values


# ---------------------------------------------------------------------------------------------- executing


class _Runner:
    """Submits jobs through submitit, at most `parallel` at a time, and collects their outcomes."""

    def __init__(self, spec: SweepSpec, runs_dir: Path, progress: SweepProgress | None = None) -> None:
        import submitit

        settings = spec.executor
        folder = Path(settings.folder.format(runs_dir=runs_dir, profile=spec.profile))
        self.executor = submitit.AutoExecutor(folder=folder, cluster=settings.kind)
        params: dict[str, Any] = {"timeout_min": settings.timeout_min}
        if settings.kind == "slurm":
            params["gpus_per_node"] = settings.gpus_per_job
            if settings.cpus_per_job:
                params["cpus_per_task"] = settings.cpus_per_job
            if settings.mem_gb:
                params["mem_gb"] = settings.mem_gb
            if settings.slurm_partition:
                params["slurm_partition"] = settings.slurm_partition
            if settings.slurm_additional_parameters:
                params["slurm_additional_parameters"] = settings.slurm_additional_parameters
        self.executor.update_parameters(**params)
        self.settings = settings
        self.free_gpus = list(settings.gpus)
        self.progress = progress
        self.progress_dir = folder / "progress"  # one file per running job (canary_lib.job_progress)

    def run(self, jobs: list[Job], on_done) -> dict[str, JobOutcome]:
        """Run jobs respecting `needs` (jobs whose dependency failed are reported as failed, not run)."""
        pending = list(jobs)
        running: dict[str, tuple[Any, Job, list[int]]] = {}
        outcomes: dict[str, JobOutcome] = {}
        while pending or running:
            for job in list(pending):
                if len(running) >= self.settings.parallel:
                    break
                state = self._dependency_state(job, outcomes)
                if state == "wait":
                    continue
                pending.remove(job)
                if job.is_done():  # checked here, not in a job: a complete run never waits in a cluster's queue
                    outcomes[job.name] = JobOutcome(job.name, ok=True)
                    on_done(outcomes[job.name])
                    continue
                if state == "failed":
                    outcome = JobOutcome(job.name, ok=False, error=f"skipped: reference run {job.needs} failed")
                    outcomes[job.name] = outcome
                    on_done(outcome)
                    continue
                gpus = self._take_gpus()
                running[job.name] = (self._submit(job, gpus), job, gpus)
                if self.progress:
                    self.progress.started(job.name)
                if self.settings.kind != "debug":
                    print(f"  start  {job.name}", flush=True)
            if pending and not running:
                # Nothing runs and nothing can start: a dependency outside this sweep never finishes.
                for job in pending:
                    outcomes[job.name] = JobOutcome(job.name, ok=False, error=f"never started: waits for {job.needs}")
                    on_done(outcomes[job.name])
                break
            time.sleep(0 if self.settings.kind == "debug" else self.settings.poll_s)
            for name, (handle, job, gpus) in list(running.items()):
                if handle.done():
                    del running[name]
                    self.free_gpus.extend(gpus)
                    outcomes[name] = self._result(handle, job)
                    on_done(outcomes[name])
            if running and self.progress and self.progress.line_due():
                now = time.time()
                jobs = [describe_job(name, read_progress(self._progress_file(name)), now) for name in running]
                print(f"         {self.progress.line(jobs)}", flush=True)
        return outcomes

    def _dependency_state(self, job: Job, outcomes: dict[str, JobOutcome]) -> str:
        for name, run_dir in zip(job.needs, job.needs_run_dirs):
            if RunDir(run_dir).is_complete("training"):
                continue
            if name in outcomes:
                return "failed"
            return "wait"
        return "ready"

    def _take_gpus(self) -> list[int]:
        n = self.settings.gpus_per_job
        if self.settings.kind != "local" or not n or not self.settings.gpus:
            return []
        taken, self.free_gpus = self.free_gpus[:n], self.free_gpus[n:]
        return taken

    def _progress_file(self, name: str) -> Path:
        return self.progress_dir / f"{name.replace('/', '_')}.json"

    def _submit(self, job: Job, gpus: list[int]) -> Any:
        self.executor.update_parameters(name=job.name.replace("/", "_"))
        self._progress_file(job.name).unlink(missing_ok=True)  # an earlier attempt's last step
        job.env = {**job.env, PROGRESS_ENV: str(self._progress_file(job.name))}
        if gpus:
            return self.executor.submit(_execute_on_gpus, job, gpus)
        return self.executor.submit(execute_job, job)

    @staticmethod
    def _result(handle: Any, job: Job) -> JobOutcome:
        try:
            return handle.result()
        except Exception as exc:  # the job process itself died (killed, out of memory, SLURM timeout)
            return JobOutcome(job.name, ok=False, error=f"job crashed: {_describe_error(exc)}")


def _execute_on_gpus(job: Job, gpus: list[int]) -> JobOutcome:
    """Local executor with several GPUs: each concurrent job sees only its own (the kernel inherits it)."""
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
    return execute_job(job)


def _report(outcome: JobOutcome) -> None:
    if outcome.ok:
        what = ", ".join(outcome.executed) if outcome.executed else "already complete"
        print(f"  ok     {outcome.name:<24} {what} ({outcome.seconds:.1f} s)", flush=True)
    else:
        where = f"\n         executed notebook: {outcome.notebook}" if outcome.notebook else ""
        print(f"  FAILED {outcome.name:<24} {outcome.error}{where}", flush=True)


def run_sweep(path: str | Path, dry_run: bool = False) -> int:
    """Validate a sweep file, then run what is missing: prepare, every run, then the results notebooks.

    Args:
        path: the sweep YAML (see parameters/sweeps/).
        dry_run: only validate and print the jobs (and which are already complete).

    Returns:
        0 when every job succeeded (or all were complete), 1 when any failed (the others still ran).

    Raises:
        ConfigError: a bad sweep file, notebook parameter or run configuration, before anything runs.
    """
    spec = load_sweep(path)
    plan = build_plan(spec)
    jobs = [plan.prep, *plan.runs, plan.analysis]
    print(f"sweep {path}: profile {spec.profile}, {len(spec.methods)} method(s) x {len(spec.seeds)} seed(s), "
          f"{len(plan.runs)} run job(s), executor {spec.executor.kind} x{spec.executor.parallel}", flush=True)
    if dry_run:
        for job in jobs:
            print(f"  {job.state():<9} {job.name:<24} " + " -> ".join(Path(s.output_path).name for s in job.steps))
        return 0

    runs_dir = Path(plan.analysis.steps[0].parameters["RUNS_DIR"])
    progress = SweepProgress(total=len(jobs), parallel=spec.executor.parallel)
    runner = _Runner(spec, runs_dir, progress)

    def on_done(outcome: JobOutcome) -> None:
        progress.finished(outcome)
        _report(outcome)
        print(f"         {progress.line()}", flush=True)

    outcomes = runner.run([plan.prep], on_done)
    if not outcomes["prepare"].ok:
        print("data preparation failed: nothing else can run", file=sys.stderr)
        return 1
    outcomes.update(runner.run(plan.runs, on_done))
    outcomes.update(runner.run([plan.analysis], on_done))

    failed = [o for o in outcomes.values() if not o.ok]
    results_dir = Path(plan.analysis.steps[0].parameters["RESULTS_DIR"])
    write_json_atomic(results_dir / "sweep_status.json",
                      {"sweep": str(path), "jobs": [asdict(o) for o in outcomes.values()]})
    print(f"sweep {spec.profile}: {len(outcomes) - len(failed)} job(s) ok, {len(failed)} failed "
          f"(details: {results_dir / 'sweep_status.json'})", flush=True)
    for outcome in failed:
        print(f"  failed: {outcome.name}: {outcome.error}", file=sys.stderr)
    if failed:
        print("run the same command again to retry only what is missing", file=sys.stderr)
    return 1 if failed else 0


def reproduce(profile: str) -> int:
    """The whole pipeline for a profile: its sweep file parameters/sweeps/<profile>.yaml, run to completion.

    Args:
        profile: organism (the CPU default), paper, ... (any name with a sweep file).

    Returns:
        The exit status of run_sweep.
    """
    path = Path("parameters") / "sweeps" / f"{profile}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"no sweep file for profile {profile!r} ({path}); known: {known}")
    status = run_sweep(path)
    results = Path(load_sweep(path).results_dir.format(profile=profile))
    print(f"results: {results}/ (table1.csv, table2.csv, correlation.json, summary.md, figures/*.html)")
    return status
