"""Algorithm 1's step planner: which source each training step draws from, and which examples.

    planner = StepPlanner(n_target=len(d_t), n_safe=len(d_s), batch_size=16, K=30, seed=42)
    while (step := planner.next_step(schedule.p(planner.step))) is not None:
        train_on(step.source, step.indices)
        if step.canary_after: ...

Each step draws u ~ U(0, 1); u < p_t is a safe step (a batch of D_S), otherwise a target step (the next batch of
D_T) and T decreases by one. T starts at the number of target batches in `epochs` passes over D_T (one pass by
default, as in the paper), and planning stops when it reaches 0: safe steps add to the step count, they do not
count against T. Each pass visits D_T in its own seeded order (the last pass may stop early for a fractional
`epochs`); D_S is drawn without replacement and reshuffled when exhausted. A step is planned only when asked
for, with the p of that moment: there is no prefetching that could apply a stale p.

With a safe-data budget (`safe_budget`, a number of safe steps) the schedule still chooses p_t, but once the
run has drawn that many safe steps every later step is drawn with p = 0: the controller decides when safe data
is spent, the budget caps how much. `constant_p_safe_steps` gives the budget that equals what a constant p (Fixed
5%: 0.05) draws on the same run, exactly, because both read the same u stream.

Plain Python (no torch); the three random streams (u, D_T order, D_S order) are independent, so changing p never
changes which target batch comes next.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

SAFE, TARGET = "safe", "target"


@dataclass(frozen=True)
class PlannedStep:
    step: int
    source: str
    """"safe" or "target"."""
    p: float
    """The p_t this step was drawn with."""
    u: float
    target_remaining: int
    """T after this step."""
    indices: tuple[int, ...]
    """Example indices into D_S (safe) or D_T (target)."""
    canary_after: bool
    """Canary evaluation after this step: step mod K == 0 (step 0 included), as in Algorithm 1."""


def _u_stream(seed: int) -> random.Random:
    """The uniform draws u of a run's steps (one per step, whatever the source)."""
    return random.Random(f"{seed}-u")


def constant_p_safe_steps(p: float, *, n_target_batches: int, seed: int) -> int:
    """How many safe steps a constant p draws in a run of `n_target_batches` target steps with this seed.

    Exactly the count of the fixed-p run of the same seed and D_T (its planner reads the same u stream), so a
    budget set to it spends the same amount of safe data as, e.g., Fixed 5%, seed by seed.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"p must be in [0, 1), got {p}")
    u = _u_stream(seed)
    safe = targets = 0
    while targets < n_target_batches:
        if u.random() < p:
            safe += 1
        else:
            targets += 1
    return safe


def _rng_state(rng: random.Random) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _set_rng_state(rng: random.Random, state: list) -> None:
    version, internal, gauss = state
    rng.setstate((version, tuple(internal), gauss))


class StepPlanner:
    def __init__(
        self,
        *,
        n_target: int,
        n_safe: int,
        batch_size: int,
        K: int,
        seed: int,
        epochs: float = 1.0,
        safe_budget: int | None = None,
    ) -> None:
        if n_target < 1:
            raise ValueError(f"D_T is empty (n_target={n_target}): nothing to train on")
        bad_budget = safe_budget is not None and safe_budget < 0
        if n_safe < 0 or batch_size < 1 or K < 1 or not epochs > 0 or bad_budget:
            raise ValueError(
                f"invalid planner sizes: n_safe={n_safe}, batch_size={batch_size}, K={K}, "
                f"epochs={epochs}, safe_budget={safe_budget}"
            )
        self.n_target, self.n_safe, self.batch_size, self.K, self.seed = n_target, n_safe, batch_size, K, seed
        self.epochs = epochs
        self.batches_per_epoch = math.ceil(n_target / batch_size)
        self.n_target_batches = max(1, math.ceil(epochs * self.batches_per_epoch - 1e-9))
        """T0: target steps in the whole run (`epochs` passes over D_T)."""
        self.target_remaining = self.n_target_batches
        self.safe_budget = safe_budget
        """At most this many safe steps in the run (None: no cap)."""
        self.safe_steps = 0
        self.step = 0
        self._u_rng = _u_stream(seed)
        self._target_epoch = 0
        self._target_order = self._target_permutation(0)
        self._target_cursor = 0
        self._safe_epoch = 0
        self._safe_cursor = 0
        self._safe_order = self._safe_permutation(0)

    @property
    def done(self) -> bool:
        return self.target_remaining == 0

    @property
    def budget_spent(self) -> bool:
        return self.safe_budget is not None and self.safe_steps >= self.safe_budget

    def _target_permutation(self, epoch: int) -> list[int]:
        order = list(range(self.n_target))
        random.Random(f"{self.seed}-target" if epoch == 0 else f"{self.seed}-target-{epoch}").shuffle(order)
        return order

    def _safe_permutation(self, epoch: int) -> list[int]:
        order = list(range(self.n_safe))
        random.Random(f"{self.seed}-safe-{epoch}").shuffle(order)
        return order

    def _next_safe_batch(self) -> tuple[int, ...]:
        if self.n_safe == 0:
            raise ValueError("a safe step was drawn (u < p_t) but D_S is empty: provide safe data or use p = 0")
        batch: list[int] = []
        while len(batch) < self.batch_size:
            if self._safe_cursor == self.n_safe:  # exhausted: reshuffle for a new pass
                self._safe_epoch += 1
                self._safe_order = self._safe_permutation(self._safe_epoch)
                self._safe_cursor = 0
            take = min(self.batch_size - len(batch), self.n_safe - self._safe_cursor)
            batch.extend(self._safe_order[self._safe_cursor : self._safe_cursor + take])
            self._safe_cursor += take
        return tuple(batch)

    def _next_target_batch(self) -> tuple[int, ...]:
        if self._target_cursor == self.n_target:  # a pass is over: the next one in its own order
            self._target_epoch += 1
            self._target_order = self._target_permutation(self._target_epoch)
            self._target_cursor = 0
        start = self._target_cursor
        self._target_cursor = min(start + self.batch_size, self.n_target)
        return tuple(self._target_order[start : self._target_cursor])

    def next_step(self, p: float) -> PlannedStep | None:
        """Plan the next step with the p of this moment (0 once a safe budget is spent); None once T has reached 0.
        The PlannedStep carries the p it was drawn with."""
        if self.done:
            return None
        if not 0.0 <= p < 1.0:
            raise ValueError(f"p must be in [0, 1), got {p}: with p = 1 no target step is ever drawn")
        if self.budget_spent:
            p = 0.0
        u = self._u_rng.random()
        if u < p:
            source, indices = SAFE, self._next_safe_batch()
            self.safe_steps += 1
        else:
            source, indices = TARGET, self._next_target_batch()
            self.target_remaining -= 1
        planned = PlannedStep(self.step, source, p, u, self.target_remaining, indices, self.step % self.K == 0)
        self.step += 1
        return planned

    def state_dict(self) -> dict:
        return {
            "sizes": [self.n_target, self.n_safe, self.batch_size, self.K, self.seed, self.epochs],
            "step": self.step,
            "target_remaining": self.target_remaining,
            "safe_budget": self.safe_budget,
            "safe_steps": self.safe_steps,
            "target_epoch": self._target_epoch,
            "target_cursor": self._target_cursor,
            "safe_epoch": self._safe_epoch,
            "safe_cursor": self._safe_cursor,
            "u_rng": _rng_state(self._u_rng),
        }

    def load_state_dict(self, state: dict) -> None:
        sizes = [self.n_target, self.n_safe, self.batch_size, self.K, self.seed, self.epochs]
        if list(state["sizes"]) != sizes:
            raise ValueError(
                f"checkpoint was planned for (n_target, n_safe, batch, K, seed, epochs) = "
                f"{state['sizes']}, "
                f"this run has {sizes}: the data or configuration changed since the checkpoint"
            )
        if state.get("safe_budget") != self.safe_budget:
            raise ValueError(
                f"checkpoint was planned with a safe budget of {state.get('safe_budget')} steps, this "
                f"run has {self.safe_budget}: the configuration changed since the checkpoint"
            )
        self.step = state["step"]
        self.target_remaining = state["target_remaining"]
        self.safe_steps = state.get("safe_steps", 0)  # checkpoints older than the budget have none (and no budget)
        self._target_epoch = state["target_epoch"]
        self._target_order = self._target_permutation(self._target_epoch)
        self._target_cursor = state["target_cursor"]
        self._safe_epoch = state["safe_epoch"]
        self._safe_cursor = state["safe_cursor"]
        self._safe_order = self._safe_permutation(self._safe_epoch)
        _set_rng_state(self._u_rng, state["u_rng"])
