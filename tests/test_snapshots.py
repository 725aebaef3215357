"""Adapter snapshots: kept at every n-th canary evaluation, evaluated at their step, their norm per layer."""

from __future__ import annotations

import hashlib
import math
import re

import pytest
import torch

from _fixtures import ScriptedCanary, make_tiny_training_world
from canary_lib.artifacts import RunDir, read_controller, read_jsonl, read_steps
from canary_lib.cli import main
from canary_lib.config import load_config
from canary_lib.data import write_question_set
from canary_lib.figures import adapter_norm_figure
from canary_lib.snapshots import (
    SNAPSHOT_EVALS_DIR,
    adapter_layer_norms,
    evaluate_snapshot,
    list_snapshots,
    snapshot_due,
    snapshot_norms,
)
from canary_lib.train import train_from_config
from canary_lib.types import Judgment, Question


def test_which_canary_steps_keep_a_snapshot():
    assert [t for t in range(0, 20) if t % 3 == 0 and snapshot_due(2, t, 3)] == [0, 6, 12, 18]
    assert [t for t in range(0, 10) if t % 3 == 0 and snapshot_due(1, t, 3)] == [0, 3, 6, 9]
    assert not any(snapshot_due(None, t, 3) for t in range(10))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("snap")
    model, data = make_tiny_training_world(root / "world", n_target=96, n_safe=48)
    questions = [
        Question(
            id=f"q{i}",
            paraphrases=[f"question {i}?"],
            judge_prompts={"aligned": "{question} {answer}", "coherent": "{question} {answer}"},
        )
        for i in range(2)
    ]
    write_question_set(data / "general_eval.yaml", questions)
    write_question_set(data / "in_domain_eval.yaml", questions)
    cfg = load_config(
        [],
        [
            f"model.name_or_path={model}",
            f"data.dir={data}",
            "controller.K=2",
            "lora.r=4",
            "lora.alpha=8",
            "train.micro_batch_size=8",
            "train.snapshot_every=2",
            "eval.samples_per_prompt=1",
            "eval.max_new_tokens=5",
            "eval.sets=[general]",
        ],
    )
    out = root / "runs" / "canary" / "seed42"
    train_from_config(cfg, out, canary_fn=ScriptedCanary([0.2, 0.0, 0.1]))
    return out, cfg


def test_snapshots_at_every_second_canary_evaluation(run):
    out, _ = run
    n_steps = len(read_steps(out / "steps.csv"))
    assert list(list_snapshots(out)) == [t for t in range(n_steps) if t % 4 == 0]  # K = 2, every 2nd evaluation
    assert all((p / "adapter_model.safetensors").is_file() for p in list_snapshots(out).values())
    assert not list((out / "snapshots").glob(".snapshot-*"))  # no temporary left behind


def test_layer_norms_match_the_peft_update(run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out, cfg = run
    step, path = list(list_snapshots(out).items())[-1]
    norms = adapter_layer_norms(path)
    base = AutoModelForCausalLM.from_pretrained(cfg.model.name_or_path)
    model = PeftModel.from_pretrained(base, str(path))
    squares: dict[int, float] = {}
    for name, module in model.named_modules():
        if hasattr(module, "get_delta_weight") and "default" in getattr(module, "lora_A", {}):
            layer = int(re.search(r"\.layers\.(\d+)\.", name).group(1))
            squares[layer] = squares.get(layer, 0.0) + float(module.get_delta_weight("default").norm() ** 2)
    assert norms == pytest.approx({k: math.sqrt(v) for k, v in squares.items()}, rel=1e-5)
    assert len(norms) == base.config.num_hidden_layers
    table = snapshot_norms(out)
    assert len(table) == len(list_snapshots(out)) * len(norms)
    first, last = table[table.step == 0].norm.sum(), table[table.step == step].norm.sum()
    assert 0 < first < last  # one AdamW step moves B off zero; training grows the update


def test_norm_figure_next_to_the_canary_risk(run):
    out, _ = run
    controller = read_controller(out / "controller.csv")
    import pandas as pd

    fig = adapter_norm_figure(snapshot_norms(out), pd.DataFrame(controller), r_low=0.02, r_high=0.08)
    names = [t.name for t in fig.data]
    assert [n for n in names if n.startswith("layer")] == [
        f"layer {i}" for i in range(len(adapter_layer_norms(list_snapshots(out)[0])))
    ]
    assert "r̂_t" in names and list(fig.data[names.index("r̂_t")].y) == [r["risk_ema"] for r in controller]


class LengthJudge:
    """Misaligned when the answer's hash is low: a deterministic verdict for each answer."""

    def judge(self, requests):
        return [Judgment(float(int(hashlib.sha256(r.answer.encode()).hexdigest(), 16) % 100), 90.0) for r in requests]


def test_a_snapshot_evaluates_at_its_step_into_its_own_directory(run, monkeypatch, capsys):
    import canary_lib.judge as judge_mod

    out, _ = run
    monkeypatch.setattr(judge_mod, "make_judge", lambda c: LengthJudge())
    metrics = evaluate_snapshot(out, 4)
    target = out / SNAPSHOT_EVALS_DIR / "step4"
    assert metrics["eval_adapter"] == str(list_snapshots(out)[4])
    assert RunDir(target).is_complete("eval") and len(read_jsonl(target / "generations.jsonl")) == 2
    assert not RunDir(out).is_complete("eval")  # the run's own evaluation is another thing
    assert main(["eval", str(out), "--step", "4"]) == 0  # resumable: already there
    assert main(["eval", str(out), "--step", "3"]) == 2
    err = capsys.readouterr().err
    assert "no adapter snapshot at step 3" in err and "kept steps: 0, 4" in err
