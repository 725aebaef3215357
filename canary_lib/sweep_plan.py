"""A sweep file and its plan: profile x methods x seeds expanded into jobs of papermill notebook steps.

``load_sweep(path)`` reads and validates a sweep file (parameters/sweeps/*.yaml) into a ``SweepSpec``;
``build_plan(spec)`` expands it into a ``Plan`` of ``Job``s and checks everything before anything runs: each
parameter name against the target notebook's ``parameters`` cell (papermill itself only warns on a typo) and each
run's configuration against the typed ``RunConfig``. A ``NotebookStep`` knows whether it is done (run directories
carry ``TRAINING_COMPLETE`` / ``EVAL_COMPLETE``, complete only for the configuration its config.yaml records:
canary_lib.binding; the aggregation notebooks leave a ``.done.json`` marker beside their output). Running the plan
is canary_lib.sweep's. This module imports no torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from canary_lib.artifacts import RunDir, write_json_atomic
from canary_lib.binding import describe, stale_keys
from canary_lib.config_base import ConfigError, Strict
from canary_lib.config_loader import load_config, read_yaml, validate_model
from canary_lib.config_schema import RunConfig
from canary_lib.methods import BASE, METHODS, REFERENCE_METHOD

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
    reuse_kernels: bool = True
    """local without `gpus` only: the runner keeps up to `parallel` warm kernels and lends one to each job, reset
    before every notebook (canary_lib.kernel_pool); false: every notebook starts its own kernel."""
    max_jobs_per_kernel: int = Field(12, ge=1)
    """With reuse_kernels: a kernel is shut down after this many jobs (the memory a long-lived process keeps)."""


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
    kernel_connection_file: str | None = None
    """Set by the sweep runner when the job borrows a running kernel of its pool (canary_lib.kernel_pool): the
    steps execute there instead of each starting a kernel."""

    def is_done(self) -> bool:
        return all(step.is_done() for step in self.steps)

    def state(self) -> str:
        """complete, to run, or stale (a finished stage of the run was made under other settings)."""
        if self.is_done():
            return "complete"
        for step in self.steps:
            if (
                step.run_dir is not None
                and RunDir(step.run_dir).is_complete(_RUN_STAGES[step.stage])
                and (changes := step.stale())
            ):
                return f"stale ({step.stage}: {describe(changes)})"
        return "to run"


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


# ---------------------------------------------------------------------------------------------- planning


def _abs(path: str | Path, root: Path) -> Path:
    path = Path(path)
    return path if path.is_absolute() else (root / path)


def build_plan(spec: SweepSpec, root: Path | None = None) -> Plan:
    """Expand a sweep into jobs and check every parameter name and value before anything runs.

    The steps, in order (the first problem found is the error raised): the notebooks exist
    (``_notebook_paths``), the grid is well formed (``_check_grid``), the profile's configuration loads and its
    judge address suits the executor (``_PlanBuilder``), then the jobs: prepare, the base row, every method x seed
    and the extra runs, analysis.

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
    notebooks = _notebook_paths(spec, root)
    _check_grid(spec)
    builder = _PlanBuilder(spec, root, runs_dir, results_dir, notebooks)
    prep = builder.prepare_job()
    runs = builder.base_jobs() + builder.method_jobs()
    return Plan(spec, prep, runs, builder.analysis_job())


def _notebook_paths(spec: SweepSpec, root: Path) -> dict[str, Path]:
    """Stage -> the notebook it executes; every one must exist."""
    notebooks = {stage: _abs(spec.notebooks_dir, root) / name for stage, name in NOTEBOOKS.items()}
    for stage, path in notebooks.items():
        if not path.is_file():
            raise ConfigError(f"notebook for stage {stage!r} not found: {path}")
    return notebooks


def _check_grid(spec: SweepSpec) -> None:
    """Known stages in notebook_parameters; at least one method and seed, none repeated, extra runs apart."""
    unknown_stages = sorted(set(spec.notebook_parameters) - set(NOTEBOOKS))
    if unknown_stages:
        raise ConfigError(f"notebook_parameters: unknown stage(s) {unknown_stages}; known: {list(NOTEBOOKS)}")
    if not spec.methods or not spec.seeds:
        raise ConfigError("a sweep needs at least one method and one seed")
    repeats = [
        f"{what} {sorted({v for v in values if values.count(v) > 1})}"
        for what, values in (("methods", list(spec.methods)), ("seeds", list(spec.seeds)))
        if len(set(values)) != len(values)
    ]
    if repeats:
        raise ConfigError(f"methods and seeds must not repeat: {' and '.join(repeats)} appear more than once")
    repeated = sorted(set(spec.extra_runs) & set(spec.methods))
    if repeated:
        raise ConfigError(f"extra_runs: {repeated} already in methods (each method runs once per seed)")


class _PlanBuilder:
    """The jobs of one sweep, each step's notebook parameters checked as it is made."""

    def __init__(
        self, spec: SweepSpec, root: Path, runs_dir: Path, results_dir: Path, notebooks: dict[str, Path]
    ) -> None:
        self.spec, self.root, self.runs_dir, self.results_dir = spec, root, runs_dir, results_dir
        self.notebooks = notebooks
        self.params = [str(_abs(p, root)) for p in spec.params]
        self.overrides = list(spec.overrides)
        if spec.judge_base_url:  # a running OpenAI-compatible judge server replaces a judge loaded in every job
            self.overrides += ["judge.backend=openai", f"judge.base_url={spec.judge_base_url}"]
        self.checker = _ParameterChecker(notebooks)
        check_judge_address(spec, _check_config(self.params, self.overrides, "the profile"))
        threads = spec.executor.threads_per_job
        self.env = {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")} if threads else {}
        self.nb_out = results_dir / "notebooks"

    def step(
        self,
        stage: str,
        output: Path,
        run_dir: Path | None = None,
        always: bool = False,
        config: Any = None,
        **values: Any,
    ) -> NotebookStep:
        parameters = self.checker.check(stage, {**values, **self.spec.notebook_parameters.get(stage, {})})
        return NotebookStep(
            stage,
            str(self.notebooks[stage]),
            str(output),
            parameters,
            str(run_dir) if run_dir else None,
            always,
            config,
        )

    def job(self, name: str, steps: list[NotebookStep], **kw: Any) -> Job:
        return Job(name, steps, str(self.root), self.spec.kernel_name, self.spec.cell_timeout_s, env=self.env, **kw)

    def shared(self) -> dict[str, Any]:
        return dict(PARAMS=self.params, OVERRIDES=self.overrides)

    def prepare_job(self) -> Job:
        """00_data_prep then 01_canary_design, once."""
        return self.job(
            "prepare",
            [
                self.step(stage, self.nb_out / NOTEBOOKS[stage], RESULTS_DIR=str(self.results_dir), **self.shared())
                for stage in ("data", "canary_design")
            ],
        )

    def base_jobs(self) -> list[Job]:
        """The base model evaluated for every seed (Table 1's base row), when the sweep asks for it."""
        if not self.spec.base_row:
            return []
        runs: list[Job] = []
        for seed in self.spec.seeds:
            run_dir = self.runs_dir / BASE / f"seed{seed}"
            run_overrides = self.overrides + [f"seed={seed}"]
            config = _check_config(self.params, run_overrides, f"{BASE}/seed{seed}")
            runs.append(
                self.job(
                    f"{BASE}/seed{seed}",
                    [
                        self.step(
                            "evaluate",
                            run_dir / NOTEBOOKS["evaluate"],
                            run_dir,
                            config=config,
                            PARAMS=self.params,
                            OVERRIDES=run_overrides,
                            RUN_DIR=str(run_dir),
                            BASE_MODEL=True,
                        )
                    ],
                )
            )
        return runs

    def method_jobs(self) -> list[Job]:
        """Train then evaluate, for every method x seed and every extra run."""
        runs: list[Job] = []
        grid = [(method, self.spec.seeds) for method in self.spec.methods] + list(self.spec.extra_runs.items())
        for method, seeds in grid:
            method_file = self._method_file(method)
            runs += [self._method_run(method, method_file, seed) for seed in seeds]
        return runs

    def _method_file(self, method: str) -> Path:
        method_file = _abs(self.spec.methods_dir, self.root) / f"{method}.yaml"
        if not method_file.is_file():
            raise ConfigError(f"methods: {method!r}: no parameter file {method_file}")
        if method not in METHODS:
            raise ConfigError(
                f"methods: {method!r} is not a registered method (canary_lib/methods.py); known: {', '.join(METHODS)}"
            )
        return method_file

    def _reference(self, method: str, seed: int) -> tuple[list[str], list[str], list[str]]:
        """A replaying method's extra override and the job it waits for: (overrides, needs, needs_run_dirs)."""
        if not METHODS[method].replays_reference:
            return [], [], []
        spec = self.spec
        reference = self.runs_dir / spec.reference_method / f"seed{seed}"
        if spec.reference_method not in spec.methods and not RunDir(reference).is_complete("training"):
            raise ConfigError(
                f"methods: {method!r} replays the {spec.reference_method!r} run of the same seed: "
                f"add {spec.reference_method!r} to methods (or finish {reference} first)"
            )
        return [f"method.reference_run={reference}"], [f"{spec.reference_method}/seed{seed}"], [str(reference)]

    def _method_run(self, method: str, method_file: Path, seed: int) -> Job:
        run_dir = self.runs_dir / method / f"seed{seed}"
        extra, needs, needs_dirs = self._reference(method, seed)
        run_overrides = self.overrides + [f"seed={seed}"] + extra
        run_params = self.params + [str(method_file)]
        config = _check_config(run_params, run_overrides, f"{method}/seed{seed}")
        name = config.method.name
        if name != method:  # one name per method: registry entry, parameter file, run directory
            raise ConfigError(
                f"methods: {method!r}: {method_file} gives method.name {name!r}; set method.name: {method} in it"
            )
        values = dict(PARAMS=run_params, OVERRIDES=run_overrides, RUN_DIR=str(run_dir))
        return self.job(
            f"{method}/seed{seed}",
            [
                self.step("train", run_dir / NOTEBOOKS["train"], run_dir, config=config, **values),
                self.step(
                    "evaluate", run_dir / NOTEBOOKS["evaluate"], run_dir, config=config, BASE_MODEL=False, **values
                ),
            ],
            needs=needs,
            needs_run_dirs=needs_dirs,
        )

    def analysis_job(self) -> Job:
        """04_ablations then 05_figures, once, reading every finished run."""
        return self.job(
            "analysis",
            [
                self.step(
                    stage,
                    self.nb_out / NOTEBOOKS[stage],
                    always=True,
                    RUNS_DIR=str(self.runs_dir),
                    RESULTS_DIR=str(self.results_dir),
                    **self.shared(),
                )
                for stage in ("ablations", "figures")
            ],
        )


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
        raise ConfigError(
            f"judge_base_url: the judge server is at {cfg.judge.base_url}, a loopback address, but "
            "the jobs run on SLURM compute nodes, where that is each node itself: set judge_base_url "
            "in the sweep file to the judge's address as the nodes see it (e.g. "
            "http://judge-node:8000/v1)"
        )


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
