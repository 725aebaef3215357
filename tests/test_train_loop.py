"""Algorithm 1's training loop on a tiny offline Qwen2: artifacts contract, determinism, Eq. 2-3 trace, bad input.

Run: .venv/bin/pytest tests/test_train_loop.py
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from _fixtures import ScriptedCanary, make_tiny_training_world, write_chat_jsonl
from canary_lib.artifacts import CONTROLLER_COLUMNS, STEPS_COLUMNS, RunDir, read_controller, read_steps
from canary_lib.config import load_config
from canary_lib.methods import METHODS, fixed_p_method
from canary_lib.train import TrainingDataError, load_training_data, lr_at, train_from_config

RISKS = [0.3, 0.2, 0.0, 0.1, 0.0, 0.05, 0.0, 0.0, 0.2, 0.0, 0.15, 0.0, 0.0]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_tiny_training_world(tmp_path_factory.mktemp("world"), n_target=200, n_safe=100)


def tiny_config(world, *overrides: str):
    model, data = world
    base = [
        f"model.name_or_path={model}",
        f"data.dir={data}",
        "controller.K=2",
        "controller.p_init=0.1",
        "train.checkpoint_every=4",
        "train.micro_batch_size=8",
        "lora.r=4",
        "lora.alpha=8",
    ]
    return load_config([], base + list(overrides))


@pytest.fixture(scope="module")
def canary_run(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "canary"
    canary = ScriptedCanary(RISKS)
    metrics = train_from_config(tiny_config(world), out, canary_fn=canary)
    return out, metrics, canary


# ---------------------------------------------------------------------------------------------- lr horizon


def test_lr_warmup_then_decay_driven_by_target_progress():
    t0 = 10
    # warm-up: (step + 1) / (warmup + 1), reaching the full rate at step = warmup
    assert lr_at(0, 10, t0, 1.0, 5) == pytest.approx(1 / 6)
    assert lr_at(5, 10, t0, 1.0, 5) == pytest.approx(1.0)
    # decay follows T only: a safe step has the lr of the target step that follows it
    assert lr_at(40, 4, t0, 1.0, 5) == lr_at(41, 4, t0, 1.0, 5) == pytest.approx(0.4)
    assert lr_at(99, 1, t0, 1.0, 0) == pytest.approx(0.1)  # last target batch: base_lr / T0
    assert lr_at(7, 0, t0, 1.0, 0) == 0.0
    with pytest.raises(ValueError):
        lr_at(0, 11, t0, 1.0, 5)


# ---------------------------------------------------------------------------------------------- contract


def test_steps_csv_contract(canary_run):
    out, metrics, _ = canary_run
    with open(out / "steps.csv", newline="") as fh:
        assert next(csv.reader(fh)) == STEPS_COLUMNS
    steps = read_steps(out / "steps.csv")
    assert [r["step"] for r in steps] == list(range(len(steps)))
    t0 = math.ceil(200 / 16)
    assert sum(r["source"] == "target" for r in steps) == t0
    assert {r["source"] for r in steps} == {"safe", "target"}  # p_init = 0.1 up to 0.2: some safe steps
    previous = t0
    for row in steps:  # T counts target steps only
        assert row["target_remaining"] == previous - (row["source"] == "target")
        previous = row["target_remaining"]
        before = row["target_remaining"] + (row["source"] == "target")
        assert row["lr"] == pytest.approx(lr_at(row["step"], before, t0, 1e-4, 5))
        assert math.isfinite(row["loss"]) and row["loss"] > 0
    assert steps[-1]["target_remaining"] == 0 and steps[-1]["source"] == "target"


def test_controller_trace_recomputes_from_canary_risk_with_eq2_eq3(canary_run):
    out, _, canary = canary_run
    with open(out / "controller.csv", newline="") as fh:
        assert next(csv.reader(fh)) == CONTROLLER_COLUMNS
    rows = read_controller(out / "controller.csv")
    steps = read_steps(out / "steps.csv")
    assert [r["step"] for r in rows] == [s["step"] for s in steps if s["step"] % 2 == 0] == canary.calls
    # Eq. 2 (alpha 0.5, r_hat_0 = 0) and Eq. 3 (paper thresholds and steps, clipped to [0, 0.2]), by hand
    r_hat, p = 0.0, 0.1
    for row in rows:
        assert row["p_before"] == p
        r_hat = 0.5 * row["canary_risk"] + 0.5 * r_hat
        if r_hat > 0.08:
            p = min(0.2, p + 0.04)
        elif r_hat < 0.02:
            p = max(0.0, p - 0.005)
        assert row["risk_ema"] == r_hat and row["p_after"] == p
        assert row["n_canary"] == 20 and row["n_misaligned"] == round(row["canary_risk"] * 20)
        assert row["seconds"] >= 0
    # the new p applies from the next step on
    p_after = {r["step"]: r["p_after"] for r in rows}
    for prev, row in zip(steps, steps[1:]):
        assert row["p"] == p_after.get(prev["step"], prev["p"])
    assert steps[0]["p"] == 0.1


def test_metrics_adapter_and_answers(canary_run):
    out, metrics, _ = canary_run
    run = RunDir(out)
    assert run.is_complete("training") and not run.checkpoint_dir.exists()
    steps = read_steps(out / "steps.csv")
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == metrics
    assert metrics["n_steps"] == len(steps)
    assert metrics["n_safe_steps"] == sum(r["source"] == "safe" for r in steps)
    assert metrics["avg_p"] == pytest.approx(sum(r["p"] for r in steps) / len(steps))
    for key in ("train_seconds", "canary_seconds", "seconds_per_step"):
        assert metrics[key] > 0
    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["r"] == 4 and adapter_config["use_rslora"] is True
    assert sorted(adapter_config["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    assert not adapter_config.get("modules_to_save")
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    answers = [json.loads(line) for line in (out / "canary_answers.jsonl").read_text().splitlines()]
    assert len(answers) == 20 * len(read_controller(out / "controller.csv"))
    assert {a["step"] for a in answers} == {r["step"] for r in read_controller(out / "controller.csv")}
    config = (out / "config.yaml").read_text()
    assert "git_commit" in config and "package_version" in config


def test_complete_run_is_not_retrained(canary_run, world):
    out, metrics, _ = canary_run
    before = (out / "steps.csv").stat().st_mtime_ns
    canary = ScriptedCanary(RISKS)
    assert train_from_config(tiny_config(world), out, canary_fn=canary) == metrics
    assert canary.calls == [] and (out / "steps.csv").stat().st_mtime_ns == before


def test_trained_adapter_loads_and_changes_the_model(canary_run, world):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out, _, _ = canary_run
    base = AutoModelForCausalLM.from_pretrained(world[0])
    ids = torch.tensor([[1, 5, 9, 30, 2]])
    with torch.no_grad():
        before = base(ids).logits.clone()
        after = PeftModel.from_pretrained(base, out / "adapter")(ids).logits
    assert not torch.allclose(before, after)


# ---------------------------------------------------------------------------------------------- determinism


def _trace(out: Path) -> tuple[str, list[list[str]]]:
    """steps.csv text and controller.csv without its wall-clock column."""
    with open(out / "controller.csv", newline="") as fh:
        controller = [row[:-1] for row in csv.reader(fh)]
    return (out / "steps.csv").read_text(), controller


def test_same_seed_same_trace_other_seed_other_draws(canary_run, world, tmp_path):
    out, _, _ = canary_run
    train_from_config(tiny_config(world), tmp_path / "again", canary_fn=ScriptedCanary(RISKS))
    assert _trace(tmp_path / "again") == _trace(out)
    train_from_config(tiny_config(world, "seed=7"), tmp_path / "seed7", canary_fn=ScriptedCanary(RISKS))
    sources = [r["source"] for r in read_steps(out / "steps.csv")]
    assert [r["source"] for r in read_steps(tmp_path / "seed7" / "steps.csv")] != sources


def test_open_loop_without_monitoring_needs_no_canary(world, tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "fixed_50", fixed_p_method(0.5))  # a fixed-p level is one registry entry
    cfg = tiny_config(world, "method.name=fixed_50", "canary.monitor_open_loop=false", "train.max_target_examples=48")
    metrics = train_from_config(cfg, tmp_path / "fixed")
    steps = read_steps(tmp_path / "fixed" / "steps.csv")
    assert sum(r["source"] == "target" for r in steps) == 3 and all(r["p"] == 0.5 for r in steps)
    assert metrics["n_canary_evals"] == 0 and read_controller(tmp_path / "fixed" / "controller.csv") == []


def test_open_loop_monitoring_logs_risk_without_moving_p(world, tmp_path):
    cfg = tiny_config(world, "method.name=no_defense", "train.max_target_examples=64")
    canary = ScriptedCanary([0.5])
    train_from_config(cfg, tmp_path / "nodef", canary_fn=canary)
    rows = read_controller(tmp_path / "nodef" / "controller.csv")
    assert canary.calls == [0, 2] and [r["p_after"] for r in rows] == [0.0, 0.0]
    assert [r["risk_ema"] for r in rows] == [0.25, 0.375]
    assert all(r["source"] == "target" for r in read_steps(tmp_path / "nodef" / "steps.csv"))


# ---------------------------------------------------------------------------------------------- bad input


def _config_with_data(world, data_dir: Path, *overrides: str):
    model, _ = world
    return load_config([], [f"model.name_or_path={model / 'does-not-exist'}", f"data.dir={data_dir}", *overrides])


def test_missing_data_refused_before_model_load(world, tmp_path):
    # the model path does not exist: reaching model loading would raise something else
    with pytest.raises(TrainingDataError, match="target_train.jsonl: training data file not found"):
        train_from_config(_config_with_data(world, tmp_path), tmp_path / "run", canary_fn=ScriptedCanary([0]))
    assert not (tmp_path / "run").exists()


def test_empty_and_malformed_data_refused(world, tmp_path):
    (tmp_path / "target_train.jsonl").write_text("\n")
    with pytest.raises(TrainingDataError, match="target_train.jsonl holds no examples"):
        train_from_config(_config_with_data(world, tmp_path), tmp_path / "run", canary_fn=ScriptedCanary([0]))
    (tmp_path / "target_train.jsonl").write_text(
        json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
        + "\n"
        + json.dumps({"messages": [{"role": "user", "content": "only a question"}]})
        + "\n"
    )
    with pytest.raises(
        TrainingDataError, match=r"target_train.jsonl row 1: the last message must be a non-empty assistant"
    ):
        train_from_config(_config_with_data(world, tmp_path), tmp_path / "run", canary_fn=ScriptedCanary([0]))


def test_safe_data_required_unless_the_method_never_draws_it(world, tmp_path):
    write_chat_jsonl(
        tmp_path / "target_train.jsonl",
        [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}],
    )
    with pytest.raises(TrainingDataError, match="safe.jsonl: training data file not found"):
        train_from_config(_config_with_data(world, tmp_path), tmp_path / "run", canary_fn=ScriptedCanary([0]))
    for name in ("no_defense", "secure_control"):  # MethodSpec.needs_safe_data is False
        target, safe = load_training_data(_config_with_data(world, tmp_path, f"method.name={name}"))
        assert len(target) == 1 and safe == []


def test_loss_and_update_do_not_depend_on_micro_batch_size(world):
    """Gradient accumulation is exact: token sums over micro-batches / the batch's token count."""
    from canary_lib.chat import encode_chat, read_chat_jsonl
    from canary_lib.models import add_rslora, load_model_and_tokenizer
    from canary_lib.train import train_step

    cfg = tiny_config(world)
    chats = read_chat_jsonl(world[1] / "target_train.jsonl")[:8]
    results = []
    for micro in (8, 3, 1):
        model, tok = load_model_and_tokenizer(cfg)
        model = add_rslora(model, cfg.lora, seed=0)
        with torch.no_grad():  # make B non-zero so the first step's gradient reaches A as well
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.fill_(0.01)
        batch = [encode_chat(c, tok, 2048) for c in chats]
        batch[0] = encode_chat(chats[0], tok, 8)  # fully truncated: no supervised token, adds no loss
        assert batch[0].n_supervised == 0
        params = [p for p in model.parameters() if p.requires_grad]
        initial = torch.cat([p.detach().flatten() for p in params]).clone()
        optimizer = torch.optim.AdamW(params, lr=1e-3)
        loss = train_step(
            model, optimizer, batch, lr=1e-3, micro_batch_size=micro, pad_token_id=tok.pad_token_id, max_grad_norm=None
        )
        results.append((loss, torch.cat([p.detach().flatten() for p in params])))
        assert not torch.allclose(results[-1][1], initial)  # the step did move the adapter
    for loss, weights in results[1:]:
        assert loss == pytest.approx(results[0][0], rel=1e-5)
        assert torch.allclose(weights, results[0][1], atol=1e-6)


def test_every_example_is_encoded_once_per_session_on_either_step(world, tmp_path, monkeypatch):
    """The loop trains on the ids encoded before the model loads: each example once, however often it is drawn."""
    import canary_lib.train as train_module

    calls: list[int] = []
    encode = train_module.encode_chat
    monkeypatch.setattr(train_module, "encode_chat", lambda *a, **k: calls.append(1) or encode(*a, **k))
    target, safe = load_training_data(tiny_config(world))
    for step in ("standard", "lean"):
        calls.clear()
        metrics = train_from_config(
            tiny_config(world, f"train.step={step}", "train.epochs=2", "lora.dropout=0"),
            tmp_path / step,
            canary_fn=ScriptedCanary(RISKS * 4),
        )
        assert metrics["n_steps"] * 16 > 2 * len(target)  # examples were drawn more than once ...
        assert len(calls) == len(target) + len(safe)  # ... and encoded once
