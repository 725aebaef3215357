"""Batch runs: a profile x methods x seeds expanded into papermill executions of the six notebooks.

    canary sweep parameters/sweeps/organism.yaml          # run_sweep(path)
    canary reproduce --profile organism                   # reproduce("organism") = the profile's sweep file

The pipeline of one sweep:

1. ``00_data_prep`` then ``01_canary_design`` once (one job);
2. ``03_evaluate_judge`` on the base model for every seed (the ``base`` row of Table 1), and ``02_train_controller``
   then ``03_evaluate_judge`` for every method x seed; runs that replay the canary run of their seed
   (``MethodSpec.replays_reference`` in canary_lib.methods) wait until it has finished training;
3. ``04_ablations`` then ``05_figures`` once (one job), reading every finished run.

Everything is checked before anything runs (canary_lib.sweep_plan, its names re-exported here). Complete
stages are skipped (run directories carry ``TRAINING_COMPLETE`` / ``EVAL_COMPLETE``, and a stage is complete only
for the configuration its config.yaml records: canary_lib.binding), a failed run is reported and the others go on,
and a second invocation finishes only what is missing. A run made under other settings is "stale": its job fails
with the differing keys rather than reusing it.

Jobs go through submitit for every executor kind, so the code path is the same on a laptop and on SLURM:
``local`` (subprocesses, ``parallel`` at a time), ``slurm`` (one SLURM job per run), ``debug`` (in-process).
Each notebook runs in a fresh kernel, except on the local executor without GPUs, where the runner lends each job
a warm kernel that is reset before every notebook (canary_lib.kernel_pool; ``executor.reuse_kernels: false``
turns it off).
This module runs the plan (execute_job, the submitit runner, run_sweep, reproduce); it imports no torch.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from canary_lib.artifacts import RunDir, write_json_atomic
from canary_lib.config_base import ConfigError
from canary_lib.job_progress import PROGRESS_ENV, describe_job, read_progress
from canary_lib.sweep_plan import (
    NOTEBOOKS,
    ExecutorSettings,
    Job,
    NotebookStep,
    Plan,
    SweepSpec,
    build_plan,
    check_judge_address,
    is_loopback_url,
    load_sweep,
)
from canary_lib.sweep_progress import SweepProgress

__all__ = [  # the plan's names stay importable from here (cli, tests, notebooks import canary_lib.sweep)
    "NOTEBOOKS",
    "ExecutorSettings",
    "Job",
    "JobOutcome",
    "NotebookStep",
    "Plan",
    "SweepSpec",
    "build_plan",
    "check_judge_address",
    "execute_job",
    "is_loopback_url",
    "load_sweep",
    "reproduce",
    "run_sweep",
]


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
    km = None
    if job.kernel_connection_file:  # a running kernel lent by the runner's pool (canary_lib.kernel_pool)
        from canary_lib.kernel_pool import BorrowedKernelManager

        try:
            km = BorrowedKernelManager(job.kernel_connection_file)
        except Exception as exc:
            outcome.ok, outcome.error = False, f"pooled kernel: {_describe_error(exc)}"
            return
    for step in job.steps:
        if step.is_done():
            continue
        Path(step.output_path).parent.mkdir(parents=True, exist_ok=True)
        if km is not None and not _reset_borrowed_kernel(km, job, outcome):
            break
        try:
            pm.execute_notebook(
                step.input_path,
                step.output_path,
                parameters=step.parameters,
                kernel_name=job.kernel_name,
                cwd=job.cwd,
                progress_bar=False,
                execution_timeout=job.cell_timeout_s,
                start_timeout=KERNEL_START_TIMEOUT_S,
                **({"km": km} if km is not None else {}),  # papermill hands it to nbclient, which then only connects
            )
        except Exception as exc:  # a failed notebook is a result to report, not a crash of the sweep
            outcome.ok = False
            outcome.error = _describe_error(exc)
            outcome.notebook = step.output_path
            break
        finally:
            if km is not None:
                km.close_clients()
        step.mark_done()
        outcome.executed.append(step.stage)


def _reset_borrowed_kernel(km: Any, job: Job, outcome: JobOutcome) -> bool:
    """Before each notebook in a borrowed kernel: the notebook must find what a fresh kernel gives it."""
    from canary_lib.kernel_pool import KernelResetError, prepare_kernel

    try:
        prepare_kernel(km, job.cwd, job.env.get(PROGRESS_ENV), KERNEL_START_TIMEOUT_S)
    except KernelResetError as exc:
        outcome.ok, outcome.error = False, str(exc)
        return False
    return True


def _describe_error(exc: BaseException) -> str:
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    if ename:  # PapermillExecutionError: the exception raised inside the notebook
        return f"{ename}: {evalue}"
    return f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------------------------------- executing


class _Runner:
    """Submits jobs through submitit, at most `parallel` at a time, and collects their outcomes. A local sweep
    without GPUs lends each job a warm kernel of its pool (canary_lib.kernel_pool; `executor.reuse_kernels`);
    `close()` shuts the pool's kernels down."""

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
        self.pool: Any = None
        self.leases: dict[str, Any] = {}
        if settings.kind == "local" and settings.reuse_kernels and not settings.gpus:
            from canary_lib.kernel_pool import KernelPool

            self.pool = KernelPool(folder / "kernels", settings.parallel, settings.max_jobs_per_kernel)

    def close(self) -> None:
        """Shut down the pool's kernels (every job has ended, or the sweep stops)."""
        if self.pool is not None:
            self.pool.close()

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
                    self._take_back_kernel(name, outcomes[name])
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
        job.kernel_connection_file = None if gpus else self._lend_kernel(job)
        if gpus:
            return self.executor.submit(_execute_on_gpus, job, gpus)
        return self.executor.submit(execute_job, job)

    def _lend_kernel(self, job: Job) -> str | None:
        """A pool kernel's connection file for the job, or None (no pool, or no kernel could be started: then its
        notebooks start their own kernels, as without the pool)."""
        if self.pool is None:
            return None
        try:
            lease = self.pool.lend(job.kernel_name, job.cwd, kernel_env(job))
        except Exception as exc:
            print(
                f"         {job.name}: no pooled kernel ({_describe_error(exc)}); its notebooks start their own",
                flush=True,
            )
            return None
        self.leases[job.name] = lease
        return lease.connection_file

    def _take_back_kernel(self, name: str, outcome: JobOutcome) -> None:
        lease = self.leases.pop(name, None)
        if lease is not None:
            self.pool.take_back(lease, ok=outcome.ok)  # a failed job's kernel is shut down

    @staticmethod
    def _result(handle: Any, job: Job) -> JobOutcome:
        try:
            return handle.result()
        except Exception as exc:  # the job process itself died (killed, out of memory, SLURM timeout)
            return JobOutcome(job.name, ok=False, error=f"job crashed: {_describe_error(exc)}")


def kernel_env(job: Job) -> dict[str, str]:
    """The environment a local job's kernels start with: this process's, no GPU (submitit's local executor sets
    CUDA_VISIBLE_DEVICES to the job's gpus_per_node devices, none here), and the job's variables; without the
    progress file, which the kernel gets before each notebook (so one kernel serves jobs that differ only in it)."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", **job.env}
    env.pop(PROGRESS_ENV, None)
    return env


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
    print(
        f"sweep {path}: profile {spec.profile}, {len(spec.methods)} method(s) x {len(spec.seeds)} seed(s), "
        f"{len(plan.runs)} run job(s), executor {spec.executor.kind} x{spec.executor.parallel}",
        flush=True,
    )
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

    try:
        outcomes = runner.run([plan.prep], on_done)
        if not outcomes["prepare"].ok:
            print("data preparation failed: nothing else can run", file=sys.stderr)
            return 1
        outcomes.update(runner.run(plan.runs, on_done))
        outcomes.update(runner.run([plan.analysis], on_done))
    finally:  # also on an error or Ctrl-C: no pool kernel outlives the sweep
        runner.close()

    failed = [o for o in outcomes.values() if not o.ok]
    results_dir = Path(plan.analysis.steps[0].parameters["RESULTS_DIR"])
    write_json_atomic(
        results_dir / "sweep_status.json", {"sweep": str(path), "jobs": [asdict(o) for o in outcomes.values()]}
    )
    print(
        f"sweep {spec.profile}: {len(outcomes) - len(failed)} job(s) ok, {len(failed)} failed "
        f"(details: {results_dir / 'sweep_status.json'})",
        flush=True,
    )
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
