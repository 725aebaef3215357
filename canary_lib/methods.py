"""The methods and ablations, in one table: which schedule drives p_t, and where the runs are reported.

    METHODS["fixed_5"].fixed_p      # 0.05
    make_schedule(cfg)              # METHODS[cfg.method.name].schedule(cfg)

A method's registry name is its only name: `method.name` in its parameter file
`parameters/methods/<name>.yaml`, the run directories `runs/<profile>/<name>/seed<k>/` and the `method` column
of the results. Everything else reads this table: the sweep (which runs replay the reference run of their
seed, and wait for it), training (which methods need D_S), Table 1 and Table 2 (rows, labels, order) and the
figures' defaults, and config validation (the loader hands this table to the schema as pydantic's validation
context, so the schema imports nothing above it).

Adding a method takes three things: its schedule (a class with the `Schedule` protocol in
canary_lib/controller.py, or a function of the configuration returning one, here), one entry below (or
`METHODS[name] = MethodSpec(...)` at run time, e.g. in a notebook), and its parameter file with
`method: {name: <name>}`.
No torch here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from canary_lib.artifacts import RunDir, read_steps
from canary_lib.controller import (
    CanaryController,
    ConstantSchedule,
    PIController,
    ReplaySchedule,
    Schedule,
    no_ema_settings,
    shuffled_sequence,
)

if TYPE_CHECKING:  # pragma: no cover
    from canary_lib.config_schema import RunConfig  # the schema, not canary_lib.config (it imports this module)


def reference_p_sequence(run_dir: str | Path) -> list[float]:
    """The per-step p column of a complete reference run (its steps.csv)."""
    run = RunDir(run_dir)
    run.require_complete("training")
    return [row["p"] for row in read_steps(run.steps_path)]


# ---------------------------------------------------------------------------------------------- schedules of methods
# One function per kind of method: the run's configuration in, its schedule out (METHODS below names them).

ScheduleFactory = Callable[["RunConfig"], Schedule]


def constant_schedule(p: float) -> ScheduleFactory:
    """p_t = p at every step (No Defense is p = 0, Fixed 5% is p = 0.05)."""

    def constant(cfg: RunConfig) -> Schedule:
        return ConstantSchedule(p, cfg.controller.alpha)

    constant.__doc__ = f"A constant p_t = {p:g} at every step."
    return constant


def front_loaded_schedule(cfg: RunConfig) -> Schedule:
    """p_t = p_max from the first step: with a safe-data budget, the budget is spent as early as it can be, a
    schedule fixed in advance (the control for the budgeted controller's timing)."""
    return ConstantSchedule(cfg.controller.p_max, cfg.controller.alpha)


def canary_schedule(cfg: RunConfig) -> Schedule:
    """The paper's method: EMA (Eq. 2) and threshold controller with hysteresis (Eq. 3) on the canary risk."""
    return CanaryController(cfg.controller)


def delayed_schedule(cfg: RunConfig) -> Schedule:
    """The controller acting on the canary risk measured method.delay_cycles evaluations earlier."""
    return CanaryController(cfg.controller, delay_cycles=cfg.method.delay_cycles)


def no_ema_schedule(cfg: RunConfig) -> Schedule:
    """Raw r_t against the single threshold r_high (`no_ema_settings`)."""
    return CanaryController(no_ema_settings(cfg.controller))


def probability_signal_schedule(cfg: RunConfig) -> Schedule:
    """The paper's controller on the continuous "probability" risk signal (canary.risk_signal must say so)."""
    if cfg.canary.risk_signal != "probability":
        raise ValueError(
            f"method {cfg.method.name} acts on canary.risk_signal = probability, but the run sets "
            f"{cfg.canary.risk_signal!r}: use parameters/methods/{cfg.method.name}.yaml"
        )
    return CanaryController(cfg.controller)


def proportional_schedule(cfg: RunConfig) -> Schedule:
    """EMA (Eq. 2) and a proportional rule (`pi_update` with ki = 0) instead of Eq. 3."""
    return PIController(cfg.controller, integral=False)


def pi_schedule(cfg: RunConfig) -> Schedule:
    """EMA (Eq. 2) and a PI rule (`pi_update`) instead of Eq. 3."""
    return PIController(cfg.controller)


def fixed_mean_schedule(cfg: RunConfig) -> Schedule:
    """A constant p equal to the mean per-step p of the reference run (method.reference_run)."""
    sequence = reference_p_sequence(_reference_run(cfg))
    return ConstantSchedule(sum(sequence) / len(sequence), cfg.controller.alpha)


def shuffled_schedule(cfg: RunConfig) -> Schedule:
    """A seeded permutation of the reference run's per-step p sequence (method.shuffle_seed, else the run seed)."""
    seed = cfg.seed if cfg.method.shuffle_seed is None else cfg.method.shuffle_seed
    return ReplaySchedule(shuffled_sequence(reference_p_sequence(_reference_run(cfg)), seed), cfg.controller.alpha)


def _reference_run(cfg: RunConfig) -> str:
    if not cfg.method.reference_run:
        raise ValueError(f"method {cfg.method.name} replays a reference run: set method.reference_run")
    return cfg.method.reference_run


BASE = "base"
"""The run directory name of the base model's evaluation (Table 1's first row): not a method, no training."""
REFERENCE_METHOD = "canary"
"""The full method: Table 2's reference row, the run the replay ablations replay, the trace figures' method."""


@dataclass(frozen=True)
class MethodSpec:
    """One method or ablation."""

    schedule: ScheduleFactory
    """The run's configuration -> its schedule of p_t."""
    table1: str | None = None
    """Its row label in Table 1 (None: not in Table 1)."""
    table2: str | None = None
    """Its row label in Table 2 (None: not in Table 2); "{delay}" becomes the runs' method.delay_cycles."""
    tests: str = ""
    """Table 2: what the row tests."""
    control: bool = False
    """A control run: listed below Table 1's methods, and only when its runs exist."""
    replays_reference: bool = False
    """p_t is derived from the REFERENCE_METHOD run of the same seed (method.reference_run; the sweep fills it
    in and starts the run once the reference run has finished training)."""
    needs_safe_data: bool = True
    """False: the method never draws a safe batch, so it trains without D_S."""
    fixed_p: float | None = None
    """The constant p_t of a fixed-p method on the profile's own D_T (the safe-data frontier's curve)."""
    adaptive: bool = False
    """A point compared with the frontier's fixed curve: p_t follows the canary signal (or a replay of it), or a
    budget caps the safe data."""
    safe_budget: bool = False
    """The run's safe steps are capped at what a constant p = method.safe_budget_p draws on the same D_T and seed
    (canary_lib.planner.constant_p_safe_steps); the schedule decides when they are spent."""
    beyond_paper: bool = False
    """Not in the paper (parameters/sweeps/organism_extended.yaml runs it): its Table 2 row is shown only when
    its runs exist, so the paper's Table 2 keeps the paper's rows."""


def fixed_p_method(p: float, **rows: str | None) -> MethodSpec:
    """A constant p_t = p from the first step to the last (No Defense is p = 0)."""
    return MethodSpec(constant_schedule(p), fixed_p=p, needs_safe_data=p > 0, **rows)


METHODS: dict[str, MethodSpec] = {
    # Table 1 (in the paper's order)
    "no_defense": fixed_p_method(0.0, table1="No Defense"),
    "fixed_5": fixed_p_method(0.05, table1="Fixed 5%"),
    "canary": MethodSpec(
        canary_schedule, table1="Canary-Controlled", table2="Full Canary-Controlled", tests="Reference", adaptive=True
    ),
    # Table 2: each ablation removes one ingredient of the controller (docs/decisions.md)
    "fixed_mean": MethodSpec(
        fixed_mean_schedule, table2="Fixed p = p̄", tests="Adaptive timing", replays_reference=True
    ),
    "delayed": MethodSpec(delayed_schedule, table2="Delayed (D={delay})", tests="Feedback timeliness", adaptive=True),
    "shuffled": MethodSpec(
        shuffled_schedule, table2="Shuffled p_t", tests="Temporal ordering", replays_reference=True, adaptive=True
    ),
    "no_ema": MethodSpec(no_ema_schedule, table2="No-EMA", tests="EMA smoothing", adaptive=True),
    # Beyond the paper (docs/decisions.md, "Beyond the paper"): equal safe data, a continuous risk signal, P and PI
    "canary_budget": MethodSpec(
        canary_schedule,
        table2="Budget = Fixed 5%'s safe steps",
        tests="Timing at equal safe data",
        adaptive=True,
        safe_budget=True,
        beyond_paper=True,
    ),
    "budget_front": MethodSpec(
        front_loaded_schedule,
        table2="Budget at p_max from step 0",
        tests="Feedback vs. front-loading",
        adaptive=True,
        safe_budget=True,
        beyond_paper=True,
    ),
    "canary_probability": MethodSpec(
        probability_signal_schedule,
        table2="Risk signal: judged P(misaligned)",
        tests="Continuous risk signal",
        adaptive=True,
        beyond_paper=True,
    ),
    "canary_p": MethodSpec(
        proportional_schedule,
        table2="P controller",
        tests="Controller rule (proportional)",
        adaptive=True,
        beyond_paper=True,
    ),
    "canary_pi": MethodSpec(
        pi_schedule, table2="PI controller", tests="Controller rule (PI)", adaptive=True, beyond_paper=True
    ),
    # The safe-data frontier's other fixed levels (results' frontier.csv; No Defense is its p = 0, Fixed 5% its 0.05)
    "fixed_2.5": fixed_p_method(0.025),
    "fixed_10": fixed_p_method(0.10),
    "fixed_15": fixed_p_method(0.15),
    "fixed_20": fixed_p_method(0.20),
    # The organism's control: no defense, fine-tuned on the secure answers (its parameter file names the data)
    "secure_control": MethodSpec(
        constant_schedule(0.0), table1="Control: secure answers, no defense", control=True, needs_safe_data=False
    ),
}
"""Registry name -> MethodSpec, in the order of the tables' rows."""


def make_schedule(cfg: RunConfig) -> Schedule:
    """The schedule of cfg.method.name, built from the configuration (and the reference run for replays)."""
    return METHODS[cfg.method.name].schedule(cfg)


def table1_methods(control: bool = False) -> dict[str, str]:
    """Method -> Table 1 label, in table order: the methods, or (control=True) the control runs."""
    return {name: m.table1 for name, m in METHODS.items() if m.table1 and m.control == control}


def table2_methods() -> dict[str, MethodSpec]:
    """The methods with a Table 2 row, in table order (the reference method first; beyond_paper rows included)."""
    return {name: m for name, m in METHODS.items() if m.table2}


def fixed_p_methods() -> dict[str, float]:
    """Every fixed-p method with its p, in registry order."""
    return {name: m.fixed_p for name, m in METHODS.items() if m.fixed_p is not None}


def adaptive_methods() -> list[str]:
    """The methods plotted as points against the safe-data frontier's fixed curve, in registry order."""
    return [name for name, m in METHODS.items() if m.adaptive]
