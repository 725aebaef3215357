"""The canary judge configured apart from the evaluation judge, and the keys this adds that never bind a run."""

from __future__ import annotations

import pytest

from canary_lib.artifacts import RunDir
from canary_lib.binding import check_training, config_changes
from canary_lib.config import RunConfig, canary_judge_settings, load_config, write_run_config
from canary_lib.data import write_question_set
from canary_lib.evaluate import make_canary_fn
from canary_lib.types import Judgment, Question


def test_the_canary_judge_defaults_to_the_evaluation_judge():
    cfg = load_config([], ["judge.backend=openai", "judge.model=qwen-32b"])
    assert cfg.canary.judge is None and canary_judge_settings(cfg) is cfg.judge
    cfg = load_config(
        [],
        [
            "judge.backend=openai",
            "judge.model=gpt-4o",
            "canary.judge.backend=openai",
            "canary.judge.model=qwen-32b",
            "canary.judge.base_url=http://judge:8000/v1",
        ],
    )
    assert canary_judge_settings(cfg).model == "qwen-32b" and cfg.judge.model == "gpt-4o"
    with pytest.raises(Exception, match="canary.judge.model"):
        load_config([], ["canary.judge.backend=openai"])  # the same checks as the evaluation judge


def test_a_configuration_recorded_before_these_keys_binds_unchanged():
    now = RunConfig().model_dump(mode="json")
    before = {
        **now,
        "canary": {k: v for k, v in now["canary"].items() if k != "judge"},
        "train": {k: v for k, v in now["train"].items() if k != "snapshot_every"},
    }
    before.pop("tracking")
    assert config_changes(before, now, lambda k: True) == []


def test_tracking_and_snapshots_never_bind_a_run(tmp_path):
    cfg = load_config([], [])
    run = RunDir(tmp_path / "run")
    write_run_config(run, cfg)
    check_training(run, load_config([], ["tracking.backend=wandb", "tracking.project=x", "train.snapshot_every=3"]))
    with pytest.raises(Exception, match="canary.judge"):  # a canary judge shapes training: it binds
        check_training(run, load_config([], ["canary.judge.backend=openai", "canary.judge.model=m"]))


class Recorder:
    def __init__(self, cfgs):
        self.cfgs = cfgs

    def __call__(self, cfg):
        self.cfgs.append(cfg)
        return self

    def judge(self, requests):
        return [Judgment(80.0, 90.0) for _ in requests]


def test_canary_evaluations_use_the_canary_judge(tmp_path, monkeypatch):
    import canary_lib.judge as judge_mod

    write_question_set(
        tmp_path / "canaries.yaml",
        [
            Question(
                id=f"c{i}",
                paraphrases=[f"canary {i}?"],
                judge_prompts={"aligned": "{question} {answer}", "coherent": "{question} {answer}"},
            )
            for i in range(2)
        ],
    )
    cfg = load_config(
        [],
        [
            f"data.dir={tmp_path}",
            "canary.n_prompts=2",
            "judge.backend=exact",
            "canary.judge.backend=openai",
            "canary.judge.model=qwen-32b",
        ],
    )
    made, checked = [], []
    monkeypatch.setattr(judge_mod, "make_judge", Recorder(made))
    monkeypatch.setattr(judge_mod, "check_judge_server", lambda url, model, **kw: checked.append((url, model)))
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    fn = make_canary_fn(cfg)
    assert checked == [(judge_mod.OPENAI_URL, "qwen-32b")]  # the pre-flight asks the canary judge, not judge.*
    _ = fn.judge  # built on first use
    assert [c.judge.model for c in made] == ["qwen-32b"] and made[0].canary.judge.model == "qwen-32b"


def test_training_refuses_a_canary_judge_without_its_key_before_the_model_loads(tmp_path, monkeypatch):
    from canary_lib.preflight import PreflightError

    write_question_set(
        tmp_path / "canaries.yaml",
        [
            Question(
                id="c0",
                paraphrases=["canary?"],
                judge_prompts={"aligned": "{question} {answer}", "coherent": "{question} {answer}"},
            )
        ],
    )
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cfg = load_config(
        [],
        [
            f"data.dir={tmp_path}",
            "canary.n_prompts=1",
            "judge.backend=exact",
            "canary.judge.backend=openai",
            "canary.judge.model=gpt-4o",
        ],
    )
    with pytest.raises(PreflightError, match="OPENAI_API_KEY"):
        make_canary_fn(cfg)


def test_canary_questions_need_judge_prompts_when_the_canary_judge_is_an_llm(tmp_path):
    from canary_lib.evaluate import EvaluationError

    write_question_set(
        tmp_path / "canaries.yaml",
        [Question(id="c0", paraphrases=["canary?"], judge_prompts={"aligned": "{question} {answer}"})],
    )
    make_canary_fn(load_config([], [f"data.dir={tmp_path}", "canary.n_prompts=1"]))  # exact judge: no prompts used
    with pytest.raises(EvaluationError, match="no judge prompt"):
        make_canary_fn(
            load_config(
                [],
                [
                    f"data.dir={tmp_path}",
                    "canary.n_prompts=1",
                    "canary.judge.backend=openai",
                    "canary.judge.model=m",
                    "canary.judge.base_url=http://127.0.0.1:9/v1",
                ],
            )
        )
