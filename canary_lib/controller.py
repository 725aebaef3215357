"""The canary controller (Eq. 2 and 3 of the paper), a P/PI alternative, and every schedule of p_t behind one
small interface.

A schedule answers two questions: "which p do I use for the step about to be drawn?" (`p`) and "here is a canary
measurement taken after step t" (`observe`). Every method and ablation of Tables 1 and 2 is a schedule, built
from the run's configuration by a function in canary_lib/methods.py, which names them in `METHODS`. The bottom
of the package: plain numbers in, nothing of the package imported, no torch. The choices and their reasons are
in docs/decisions.md.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypeVar


class ControllerParams(Protocol):
    """The controller's parameters as plain numbers (Eq. 2 and 3, the P/PI gains). canary_lib.config's
    ControllerSettings is one, validated; this module reads them and imports nothing of the package."""

    alpha: float
    r_high: float
    r_low: float
    delta_up: float
    delta_down: float
    p_min: float
    p_max: float
    p_init: float
    kp: float | None
    ki: float | None

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> Any: ...


S = TypeVar("S", bound=ControllerParams)


@dataclass(frozen=True)
class ControllerUpdate:
    step: int
    canary_risk: float
    """r_t measured after this step."""
    risk_ema: float
    """r̂_t after the update (for delayed: the EMA of the delayed signal)."""
    p_before: float
    """p used for this step."""
    p_after: float
    """p used from the next step on."""

    def as_dict(self) -> dict:
        return asdict(self)


def ema_update(previous: float, risk: float, alpha: float) -> float:
    """Eq. 2: r̂_t = alpha * r_t + (1 - alpha) * r̂_{t-1}."""
    return alpha * risk + (1.0 - alpha) * previous


def threshold_update(p: float, risk_ema: float, s: ControllerParams) -> float:
    """Eq. 3: step p up above r_high, down below r_low, hold in between; clipped to [p_min, p_max]."""
    if risk_ema > s.r_high:
        return min(s.p_max, p + s.delta_up)
    if risk_ema < s.r_low:
        return max(s.p_min, p - s.delta_down)
    return p


def no_ema_settings(s: S) -> S:
    """The no-EMA ablation: no smoothing (alpha = 1) and no hysteresis band (r_low = r_high).

    What remains is one threshold, r_high: p goes up by delta_up when r_t > r_high and down by delta_down when
    r_t < r_high (with M = 20, r_t takes values k/20, so it never equals 0.08 exactly).
    """
    copied: S = s.model_copy(update={"alpha": 1.0, "r_low": s.r_high})  # pydantic's model_copy keeps the type
    return copied


class Schedule(Protocol):
    uses_canary: bool

    def p(self, step: int) -> float: ...

    def observe(self, step: int, canary_risk: float) -> ControllerUpdate: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class CanaryController:
    """Closed loop: EMA of the canary risk (Eq. 2), threshold controller with hysteresis (Eq. 3).

    With `delay_cycles = D > 0` each measurement is queued and the controller acts on the one taken D evaluations
    earlier; during the first D evaluations there is nothing old enough to act on, so p and r̂ hold.
    """

    uses_canary = True

    def __init__(self, settings: ControllerParams, delay_cycles: int = 0) -> None:
        if delay_cycles < 0:
            raise ValueError(f"delay_cycles must be >= 0, got {delay_cycles}")
        self.settings = settings
        self.delay_cycles = delay_cycles
        self._p = settings.p_init
        self._risk_ema = 0.0  # r̂_0 = 0 (Algorithm 1, line 1)
        self._queue: list[float] = []

    def p(self, step: int) -> float:
        return self._p

    def observe(self, step: int, canary_risk: float) -> ControllerUpdate:
        if not 0.0 <= canary_risk <= 1.0:
            raise ValueError(f"canary risk must be in [0, 1], got {canary_risk}")
        p_before = self._p
        self._queue.append(canary_risk)
        if len(self._queue) > self.delay_cycles:
            acted_on = self._queue.pop(0)
            self._risk_ema = ema_update(self._risk_ema, acted_on, self.settings.alpha)
            self._p = self._next_p()
        return ControllerUpdate(step, canary_risk, self._risk_ema, p_before, self._p)

    def _next_p(self) -> float:
        """The rule that turns the new r̂_t into p_t: Eq. 3 (PIController replaces it)."""
        return threshold_update(self._p, self._risk_ema, self.settings)

    def state_dict(self) -> dict:
        return {"p": self._p, "risk_ema": self._risk_ema, "queue": list(self._queue)}

    def load_state_dict(self, state: dict) -> None:
        self._p = float(state["p"])
        self._risk_ema = float(state["risk_ema"])
        self._queue = [float(r) for r in state["queue"]]


def proportional_gains(s: ControllerParams) -> tuple[float, float]:
    """(kp, ki) of the P/PI rule: the settings' values, or the defaults derived from Eq. 3's own parameters.

    kp = (p_max - p_min) / (r_high - r_low): the P term spans the hysteresis band, from p_min at r_low to p_max at
    r_high (where Eq. 3 starts stepping up). ki = delta_down / r_low: at r̂ = 0 the integral releases safe data at
    Eq. 3's own rate, delta_down per evaluation. docs/decisions.md, "Beyond the paper".
    """
    kp = s.kp
    if kp is None:
        if s.r_high <= s.r_low:
            raise ValueError("the default kp spans [r_low, r_high]: set controller.kp when r_low = r_high")
        kp = (s.p_max - s.p_min) / (s.r_high - s.r_low)
    ki = s.ki
    if ki is None:
        if s.r_low <= 0:
            raise ValueError("the default ki is delta_down / r_low: set controller.ki when r_low = 0")
        ki = s.delta_down / s.r_low
    return kp, ki


def pi_update(risk_ema: float, integral: float, kp: float, ki: float, s: ControllerParams) -> tuple[float, float]:
    """The P/PI alternative to Eq. 3: error e = r̂_t - r_low, integral I_t = clip(I_{t-1} + ki e, 0, p_max - p_min)
    (clamped so it never winds up beyond what p can use), p_t = clip(p_min + kp e + I_t, p_min, p_max).
    Returns (p_t, I_t); with ki = 0 it is a pure proportional controller."""
    error = risk_ema - s.r_low
    integral = min(s.p_max - s.p_min, max(0.0, integral + ki * error))
    return min(s.p_max, max(s.p_min, s.p_min + kp * error + integral)), integral


class PIController(CanaryController):
    """Closed loop: EMA of the canary risk (Eq. 2), then a proportional (ki = 0) or PI rule (`pi_update`) instead
    of Eq. 3; everything else (the EMA, r̂_0 = 0, p_init, the delay queue) is CanaryController's."""

    def __init__(self, settings: ControllerParams, integral: bool = True, delay_cycles: int = 0) -> None:
        super().__init__(settings, delay_cycles)
        self.kp, ki = proportional_gains(settings)
        self.ki = ki if integral else 0.0
        self._integral = 0.0

    def _next_p(self) -> float:
        p, self._integral = pi_update(self._risk_ema, self._integral, self.kp, self.ki, self.settings)
        return p

    def state_dict(self) -> dict:
        return {**super().state_dict(), "integral": self._integral}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._integral = float(state["integral"])


class _OpenLoop:
    """p_t does not depend on the canaries; measurements are still smoothed and logged for the traces."""

    uses_canary = False

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self._risk_ema = 0.0

    def p(self, step: int) -> float:  # pragma: no cover - overridden
        raise NotImplementedError

    def observe(self, step: int, canary_risk: float) -> ControllerUpdate:
        self._risk_ema = ema_update(self._risk_ema, canary_risk, self.alpha)
        return ControllerUpdate(step, canary_risk, self._risk_ema, self.p(step), self.p(step + 1))

    def state_dict(self) -> dict:
        return {"risk_ema": self._risk_ema}

    def load_state_dict(self, state: dict) -> None:
        self._risk_ema = float(state["risk_ema"])


class ConstantSchedule(_OpenLoop):
    def __init__(self, p: float, alpha: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        super().__init__(alpha)
        self.value = p

    def p(self, step: int) -> float:
        return self.value


class ReplaySchedule(_OpenLoop):
    """Replays a per-step p sequence. A run that draws more steps than the sequence has wraps around, so the
    distribution of p (and so the expected safe-data volume) stays that of the sequence."""

    def __init__(self, sequence: list[float], alpha: float = 0.5) -> None:
        if not sequence:
            raise ValueError("cannot replay an empty p sequence")
        super().__init__(alpha)
        self.sequence = [float(p) for p in sequence]

    def p(self, step: int) -> float:
        return self.sequence[step % len(self.sequence)]


def shuffled_sequence(sequence: list[float], seed: int) -> list[float]:
    """A seeded permutation: the same multiset of p values (same safe-data volume), only their timing changes."""
    out = list(sequence)
    random.Random(f"shuffle-{seed}").shuffle(out)
    return out
