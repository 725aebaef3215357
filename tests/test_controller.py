"""The controller (Eq. 2-3) and every schedule against hand-computed traces."""

import pytest

from canary_lib.config import ControllerSettings, load_config
from canary_lib.controller import (
    CanaryController,
    ConstantSchedule,
    ReplaySchedule,
    ema_update,
    no_ema_settings,
    shuffled_sequence,
    threshold_update,
)
from canary_lib.methods import METHODS, fixed_p_methods, make_schedule

PAPER = ControllerSettings()


def trace(schedule, risks):
    return [schedule.observe(30 * i, r) for i, r in enumerate(risks)]


def test_paper_defaults():
    s = PAPER
    assert (s.alpha, s.r_high, s.r_low, s.delta_up, s.delta_down, s.p_min, s.p_max, s.K) == (
        0.5,
        0.08,
        0.02,
        0.04,
        0.005,
        0.0,
        0.20,
        30,
    )
    assert s.p_init == s.p_min


def test_canary_controller_hand_computed_trace():
    updates = trace(CanaryController(PAPER), [0.0, 0.1, 0.2, 0.1, 0.0, 0.0, 0.0])
    # r̂: 0, .05, .125, .1125, .05625, .028125, .0140625 (starting from r̂_0 = 0)
    assert [u.risk_ema for u in updates] == pytest.approx([0, 0.05, 0.125, 0.1125, 0.05625, 0.028125, 0.0140625])
    # p: below r_low at 0 -> clipped at p_min; band holds; above r_high steps up; below r_low steps down by 0.005
    assert [u.p_after for u in updates] == pytest.approx([0, 0, 0.04, 0.08, 0.08, 0.08, 0.075])
    assert [u.p_before for u in updates[1:]] == [u.p_after for u in updates[:-1]]
    assert [u.step for u in updates] == [0, 30, 60, 90, 120, 150, 180]


def test_controller_clips_at_p_max_and_p_min():
    ctrl = CanaryController(PAPER.model_copy(update={"p_init": 0.1}))
    ups = trace(ctrl, [1.0] * 6)
    assert ups[-1].p_after == pytest.approx(0.2) and max(u.p_after for u in ups) <= 0.2
    downs = trace(ctrl, [0.0] * 200)
    assert downs[-1].p_after == 0.0


def test_p_applies_from_next_step():
    ctrl = CanaryController(PAPER)
    assert ctrl.p(0) == 0.0
    ctrl.observe(0, 1.0)
    assert ctrl.p(1) == pytest.approx(0.04)


def test_delayed_controller_acts_on_old_measurements():
    updates = trace(CanaryController(PAPER, delay_cycles=2), [0.2, 0.2, 0.0, 0.0])
    assert [u.canary_risk for u in updates] == [0.2, 0.2, 0.0, 0.0]  # logged as measured
    assert [u.p_after for u in updates] == pytest.approx([0, 0, 0.04, 0.08])
    assert [u.risk_ema for u in updates] == pytest.approx([0, 0, 0.1, 0.15])


def test_no_ema_ablation_is_raw_risk_against_r_high():
    s = no_ema_settings(PAPER)
    assert (s.alpha, s.r_low, s.r_high) == (1.0, 0.08, 0.08)
    updates = trace(CanaryController(s), [0.1, 0.1, 0.05, 0.0, 0.1])
    assert [u.risk_ema for u in updates] == [0.1, 0.1, 0.05, 0.0, 0.1]
    assert [u.p_after for u in updates] == pytest.approx([0.04, 0.08, 0.075, 0.07, 0.11])


def test_state_round_trip_restores_exactly():
    a = CanaryController(PAPER, delay_cycles=1)
    trace(a, [0.3, 0.05, 0.15])
    b = CanaryController(PAPER, delay_cycles=1)
    b.load_state_dict(a.state_dict())
    for r in [0.1, 0.0, 0.25, 0.0]:
        assert a.observe(0, r) == b.observe(0, r)


def test_invalid_risk_rejected():
    with pytest.raises(ValueError, match="canary risk"):
        CanaryController(PAPER).observe(0, 1.5)


def test_open_loop_schedules_ignore_risk_but_log_it():
    s = ConstantSchedule(0.05)
    ups = trace(s, [1.0, 1.0])
    assert [u.p_after for u in ups] == [0.05, 0.05]
    assert ups[1].risk_ema == pytest.approx(0.75)
    assert not s.uses_canary
    r = ReplaySchedule([0.0, 0.1, 0.2])
    assert [r.p(t) for t in range(5)] == [0.0, 0.1, 0.2, 0.0, 0.1]


def test_shuffle_is_a_seeded_permutation():
    seq = [i / 100 for i in range(50)]
    a, b, c = shuffled_sequence(seq, 1), shuffled_sequence(seq, 1), shuffled_sequence(seq, 2)
    assert a == b and a != c and sorted(a) == seq and a != seq


def test_ema_and_threshold_are_the_equations():
    assert ema_update(0.2, 0.6, 0.25) == pytest.approx(0.25 * 0.6 + 0.75 * 0.2)
    assert threshold_update(0.1, 0.05, PAPER) == 0.1


def _write_reference(run_dir, ps):
    from canary_lib.artifacts import STEPS_COLUMNS, RunDir, write_csv_atomic

    run = RunDir(run_dir)
    rows = [dict(step=i, source="target", p=p, target_remaining=0, loss=1.0, lr=1e-4) for i, p in enumerate(ps)]
    write_csv_atomic(run.steps_path, rows, STEPS_COLUMNS)
    return run


def test_make_schedule_for_every_method(tmp_path):
    ref = _write_reference(tmp_path / "ref", [0.0, 0.04, 0.08, 0.08])
    kinds = {}
    for name in ["no_defense", "fixed_5", "canary", "delayed", "no_ema", "secure_control"]:
        kinds[name] = make_schedule(load_config(overrides=[f"method.name={name}"]))
    assert kinds["no_defense"].p(0) == 0.0 and kinds["fixed_5"].p(0) == 0.05 and kinds["secure_control"].p(9) == 0.0
    assert [kinds[m].uses_canary for m in ("no_defense", "fixed_5", "canary")] == [False, False, True]
    assert kinds["delayed"].delay_cycles == 5 and kinds["no_ema"].settings.alpha == 1.0
    replay = [f"method.reference_run={ref.path}"]
    with pytest.raises(Exception, match="not complete"):
        make_schedule(load_config(overrides=["method.name=fixed_mean", *replay]))
    ref.mark_complete("training")
    fixed_mean = make_schedule(load_config(overrides=["method.name=fixed_mean", *replay]))
    assert fixed_mean.p(7) == pytest.approx(0.05)
    shuffled = make_schedule(load_config(overrides=["method.name=shuffled", *replay]))
    assert sorted(shuffled.sequence) == [0.0, 0.04, 0.08, 0.08]


def test_registry_derives_what_each_method_needs():
    assert [m for m, spec in METHODS.items() if spec.replays_reference] == ["fixed_mean", "shuffled"]
    assert [m for m, spec in METHODS.items() if not spec.needs_safe_data] == ["no_defense", "secure_control"]
    fixed = fixed_p_methods()
    assert (fixed["no_defense"], fixed["fixed_5"]) == (0.0, 0.05) and "secure_control" not in fixed


# ---------------------------------------------------------------------------------------------- P and PI


def test_pi_default_gains_come_from_eq3_parameters():
    from canary_lib.controller import proportional_gains

    kp, ki = proportional_gains(PAPER)
    assert kp == pytest.approx(0.20 / 0.06) and ki == pytest.approx(0.005 / 0.02)
    assert proportional_gains(PAPER.model_copy(update={"kp": 1.5, "ki": 0.0})) == (1.5, 0.0)
    with pytest.raises(ValueError, match="set controller.ki"):
        proportional_gains(PAPER.model_copy(update={"r_low": 0.0}))
    with pytest.raises(ValueError, match="set controller.kp"):
        proportional_gains(PAPER.model_copy(update={"r_low": 0.08}))


def test_proportional_controller_hand_computed_trace():
    from canary_lib.controller import PIController

    updates = trace(PIController(PAPER, integral=False), [0.0, 0.1, 0.2, 0.1, 0.0, 0.0])
    # r̂ as in the Eq. 3 trace; p = clip(kp (r̂ - 0.02), 0, 0.2) with kp = 0.2 / 0.06: the band is the P band
    kp = 0.2 / 0.06
    expected = [min(0.2, max(0.0, kp * (r - 0.02))) for r in [0, 0.05, 0.125, 0.1125, 0.05625, 0.028125]]
    assert [u.p_after for u in updates] == pytest.approx(expected)
    assert updates[2].p_after == pytest.approx(0.2) and updates[0].p_after == 0.0
    assert [u.p_before for u in updates[1:]] == [u.p_after for u in updates[:-1]]


def test_pi_integral_holds_p_after_the_risk_falls_and_releases_at_delta_down():
    from canary_lib.controller import PIController

    pi, p_only = PIController(PAPER), PIController(PAPER, integral=False)
    risks = [0.3] * 6 + [0.0] * 30
    pi_trace, p_trace = trace(pi, risks), trace(p_only, risks)
    assert pi_trace[5].p_after == pytest.approx(0.2)
    # once r̂ ~ 0 the P term alone drops p to p_min, while the integral keeps safe data flowing ...
    assert p_trace[-1].p_after == 0.0 and pi_trace[-1].p_after > 0.0
    # ... and releases it at Eq. 3's own rate: ki * (0 - r_low) = -delta_down per evaluation once r̂ ~ 0
    late = [u.p_after for u in pi_trace[-5:]]
    assert [a - b for a, b in zip(late, late[1:])] == pytest.approx([0.005] * 4, abs=1e-4)
    assert all(PAPER.p_min <= u.p_after <= PAPER.p_max for u in pi_trace)


def test_pi_integral_does_not_wind_up_beyond_p_range():
    from canary_lib.controller import PIController

    long, short = PIController(PAPER), PIController(PAPER)
    trace(long, [1.0] * 500)  # a long saturation: the integral is clamped at p_max - p_min ...
    trace(short, [1.0] * 60)
    assert long.state_dict() == short.state_dict() and long.state_dict()["integral"] == pytest.approx(0.2)
    # ... so the release afterwards is the same as after a short one, and p comes down within the run
    release = [u.p_after for u in trace(long, [0.0] * 60)]
    assert release == [u.p_after for u in trace(short, [0.0] * 60)] and release[-1] < 0.2


def test_pi_state_round_trip_restores_exactly():
    from canary_lib.controller import PIController

    a = PIController(PAPER)
    trace(a, [0.1, 0.3, 0.05])
    b = PIController(PAPER)
    b.load_state_dict(a.state_dict())
    assert [u.p_after for u in trace(a, [0.2, 0.0, 0.4])] == [u.p_after for u in trace(b, [0.2, 0.0, 0.4])]
    with pytest.raises(ValueError, match="canary risk"):
        a.observe(0, 1.5)


def test_beyond_paper_methods_build_their_schedules_and_check_their_settings():
    from canary_lib.controller import PIController

    budget = make_schedule(load_config(["parameters/methods/canary_budget.yaml"]))
    assert isinstance(budget, CanaryController) and METHODS["canary_budget"].safe_budget
    p_only = make_schedule(load_config(["parameters/methods/canary_p.yaml"]))
    pi = make_schedule(load_config(["parameters/methods/canary_pi.yaml"]))
    assert isinstance(p_only, PIController) and p_only.ki == 0.0 and pi.ki == pytest.approx(0.25)
    prob = load_config(["parameters/methods/canary_probability.yaml"])
    assert prob.canary.risk_signal == "probability" and isinstance(make_schedule(prob), CanaryController)
    with pytest.raises(ValueError, match="risk_signal = probability"):
        make_schedule(load_config(overrides=["method.name=canary_probability"]))
    front = make_schedule(load_config(["parameters/methods/budget_front.yaml"], ["controller.p_max=0.3"]))
    assert not front.uses_canary and [front.p(step) for step in (0, 1, 500)] == [0.3, 0.3, 0.3]
    assert METHODS["budget_front"].safe_budget
    new = ["canary_budget", "budget_front", "canary_probability", "canary_p", "canary_pi"]
    assert all(METHODS[m].adaptive and METHODS[m].beyond_paper and METHODS[m].table2 for m in new)
    assert not any(METHODS[m].beyond_paper for m in METHODS if m not in new)
