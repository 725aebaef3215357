"""Algorithm 1's step planner: statistics, T accounting, canary steps, data cursors and exact resume."""

import math

import pytest

from canary_lib.planner import StepPlanner


def run(planner, p=lambda t: 0.0):
    steps = []
    while (s := planner.next_step(p(planner.step))) is not None:
        steps.append(s)
    return steps


def test_fixed_p_gives_that_fraction_of_safe_steps():
    steps = run(StepPlanner(n_target=16 * 2000, n_safe=500, batch_size=16, K=30, seed=1), lambda t: 0.2)
    safe = sum(s.source == "safe" for s in steps)
    # 2000 target steps; safe steps ~ Geometric: expected 2000 * 0.2 / 0.8 = 500, sd ~ 25
    assert abs(safe / len(steps) - 0.2) < 0.02


def test_T_counts_only_target_steps_and_ends_at_zero():
    planner = StepPlanner(n_target=100, n_safe=40, batch_size=16, K=5, seed=3)
    assert planner.n_target_batches == math.ceil(100 / 16) == 7
    steps = run(planner, lambda t: 0.5)
    target = [s for s in steps if s.source == "target"]
    assert len(target) == 7 and steps[-1].target_remaining == 0 and steps[-1].source == "target"
    remaining = 7
    for s in steps:
        remaining -= s.source == "target"
        assert s.target_remaining == remaining
    assert planner.done and planner.next_step(0.5) is None


def test_canary_after_every_K_steps_including_step_zero():
    steps = run(StepPlanner(n_target=16 * 50, n_safe=10, batch_size=16, K=7, seed=0), lambda t: 0.3)
    assert [s.step for s in steps if s.canary_after] == [t for t in range(len(steps)) if t % 7 == 0]
    assert steps[0].canary_after


def test_target_visited_once_in_seeded_order():
    a = run(StepPlanner(n_target=50, n_safe=0, batch_size=16, K=5, seed=9))
    seen = [i for s in a for i in s.indices]
    assert sorted(seen) == list(range(50)) and seen != list(range(50))
    assert [len(s.indices) for s in a] == [16, 16, 16, 2]
    b = run(StepPlanner(n_target=50, n_safe=0, batch_size=16, K=5, seed=9))
    assert [s.indices for s in a] == [s.indices for s in b]


def test_safe_drawn_without_replacement_then_reshuffled():
    planner = StepPlanner(n_target=16 * 400, n_safe=48, batch_size=16, K=5, seed=2)
    steps = run(planner, lambda t: 0.5)
    safe = [i for s in steps if s.source == "safe" for i in s.indices]
    epochs = [safe[k : k + 48] for k in range(0, len(safe) - 47, 48)]
    assert len(epochs) >= 3
    assert all(sorted(e) == list(range(48)) for e in epochs)
    assert epochs[0] != epochs[1]


def test_target_order_does_not_depend_on_p():
    a = [s.indices for s in run(StepPlanner(n_target=80, n_safe=20, batch_size=8, K=5, seed=4)) if s.source == "target"]
    b = [
        s.indices
        for s in run(StepPlanner(n_target=80, n_safe=20, batch_size=8, K=5, seed=4), lambda t: 0.6)
        if s.source == "target"
    ]
    assert a == b


def test_state_round_trip_continues_identically():
    p = lambda t: 0.1 + 0.3 * ((t // 10) % 2)  # noqa: E731 - p changes over time like a controller's
    full = run(StepPlanner(n_target=16 * 40, n_safe=30, batch_size=16, K=5, seed=5), p)
    first = StepPlanner(n_target=16 * 40, n_safe=30, batch_size=16, K=5, seed=5)
    head = [first.next_step(p(first.step)) for _ in range(23)]
    resumed = StepPlanner(n_target=16 * 40, n_safe=30, batch_size=16, K=5, seed=5)
    resumed.load_state_dict(first.state_dict())
    assert head + run(resumed, p) == full


def test_bad_inputs():
    with pytest.raises(ValueError, match="D_T is empty"):
        StepPlanner(n_target=0, n_safe=1, batch_size=16, K=1, seed=0)
    with pytest.raises(ValueError, match="D_S is empty"):
        run(StepPlanner(n_target=1000, n_safe=0, batch_size=1, K=1, seed=0), lambda t: 0.5)
    with pytest.raises(ValueError, match="no target step"):
        StepPlanner(n_target=10, n_safe=10, batch_size=1, K=1, seed=0).next_step(1.0)
    planner = StepPlanner(n_target=10, n_safe=10, batch_size=1, K=1, seed=0)
    other = StepPlanner(n_target=11, n_safe=10, batch_size=1, K=1, seed=0)
    with pytest.raises(ValueError, match="changed since the checkpoint"):
        other.load_state_dict(planner.state_dict())


def test_epochs_visit_each_example_once_per_pass_in_new_orders():
    planner = StepPlanner(n_target=50, n_safe=0, batch_size=16, K=5, seed=9, epochs=2)
    steps = run(planner)
    assert planner.n_target_batches == 8 and len(steps) == 8
    passes = [[i for s in steps[k : k + 4] for i in s.indices] for k in (0, 4)]
    assert all(sorted(p) == list(range(50)) for p in passes)
    assert passes[0] != passes[1]
    # the first pass is exactly the one-epoch run's order (epochs=1 runs are unchanged)
    one = run(StepPlanner(n_target=50, n_safe=0, batch_size=16, K=5, seed=9))
    assert [s.indices for s in one] == [s.indices for s in steps[:4]]


def test_fractional_epochs_round_target_steps_up():
    planner = StepPlanner(n_target=160, n_safe=0, batch_size=16, K=5, seed=0, epochs=1.25)
    assert planner.n_target_batches == 13  # ceil(1.25 x 10)
    assert len(run(planner)) == 13


def test_epochs_resume_across_a_pass_boundary():
    p = lambda t: 0.3  # noqa: E731
    full = run(StepPlanner(n_target=40, n_safe=30, batch_size=8, K=5, seed=5, epochs=3), p)
    first = StepPlanner(n_target=40, n_safe=30, batch_size=8, K=5, seed=5, epochs=3)
    head = [first.next_step(p(first.step)) for _ in range(9)]
    resumed = StepPlanner(n_target=40, n_safe=30, batch_size=8, K=5, seed=5, epochs=3)
    resumed.load_state_dict(first.state_dict())
    assert head + run(resumed, p) == full
    with pytest.raises(ValueError, match="changed since the checkpoint"):
        StepPlanner(n_target=40, n_safe=30, batch_size=8, K=5, seed=5, epochs=2).load_state_dict(first.state_dict())
    with pytest.raises(ValueError, match="epochs"):
        StepPlanner(n_target=40, n_safe=30, batch_size=8, K=5, seed=5, epochs=0)


# ---------------------------------------------------------------------------------------------- safe-data budget


def test_budget_equals_the_safe_steps_of_the_constant_p_run_of_the_same_seed():
    from canary_lib.planner import constant_p_safe_steps

    for seed in (0, 42, 123):
        fixed = StepPlanner(n_target=16 * 300, n_safe=64, batch_size=16, K=30, seed=seed)
        safe = sum(s.source == "safe" for s in run(fixed, lambda t: 0.05))
        assert constant_p_safe_steps(0.05, n_target_batches=fixed.n_target_batches, seed=seed) == safe
    assert constant_p_safe_steps(0.0, n_target_batches=50, seed=1) == 0
    with pytest.raises(ValueError, match="p must be in"):
        constant_p_safe_steps(1.0, n_target_batches=5, seed=1)


def test_budget_caps_safe_steps_then_draws_with_p_zero():
    planner = StepPlanner(n_target=16 * 200, n_safe=64, batch_size=16, K=30, seed=7, safe_budget=12)
    steps = run(planner, lambda t: 0.5)  # a schedule that would spend far more than the budget
    safe = [s for s in steps if s.source == "safe"]
    assert len(safe) == 12 == planner.safe_steps and planner.budget_spent
    after = [s for s in steps if s.step > safe[-1].step]
    assert after and all(s.p == 0.0 and s.source == "target" for s in after)
    assert all(s.p == 0.5 for s in steps if s.step <= safe[-1].step)
    # the u stream is the same as without a budget: the budget changes only the sources after it is spent
    free = run(StepPlanner(n_target=16 * 200, n_safe=64, batch_size=16, K=30, seed=7), lambda t: 0.5)
    assert [s.u for s in steps[: len(free)]] == [s.u for s in free[: len(steps)]]


def test_budget_zero_never_draws_safe_and_a_budget_never_binding_changes_nothing():
    steps = run(StepPlanner(n_target=16 * 50, n_safe=8, batch_size=16, K=5, seed=3, safe_budget=0), lambda t: 0.3)
    assert all(s.source == "target" and s.p == 0.0 for s in steps)
    capped = run(StepPlanner(n_target=16 * 50, n_safe=8, batch_size=16, K=5, seed=3, safe_budget=10**6), lambda t: 0.3)
    free = run(StepPlanner(n_target=16 * 50, n_safe=8, batch_size=16, K=5, seed=3), lambda t: 0.3)
    assert capped == free


def test_budget_resumes_exactly_and_refuses_a_changed_budget():
    def make(budget=20):
        return StepPlanner(n_target=16 * 120, n_safe=40, batch_size=16, K=10, seed=5, safe_budget=budget)

    whole = run(make(), lambda t: 0.3)
    first = make()
    head = [first.next_step(0.3) for _ in range(40)]
    state = first.state_dict()
    second = make()
    second.load_state_dict(state)
    assert head + run(second, lambda t: 0.3) == whole
    with pytest.raises(ValueError, match="safe budget"):
        make(budget=21).load_state_dict(state)
