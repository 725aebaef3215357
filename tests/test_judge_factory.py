"""make_judge: each backend from the config, clear errors for what cannot work."""

import pytest

from _fixtures import make_tiny_qwen2
from canary_lib.config import JudgeSettings, load_config
from canary_lib.judge import LLMJudge, OpenAIBackend, TransformersBackend, make_judge


def test_openai_backend_from_config(monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "secret-value")
    cfg = load_config(
        overrides=[
            "judge.backend=openai",
            "judge.model=qwen-judge",
            "judge.scorer=digits",
            "judge.base_url=http://127.0.0.1:8000/v1",
            "judge.api_key_env=MY_JUDGE_KEY",
            "judge.concurrency=3",
            "judge.digit_prune_below=0.01",
        ]
    )
    judge = make_judge(cfg)
    assert isinstance(judge, LLMJudge) and isinstance(judge.backend, OpenAIBackend)
    assert (judge.backend.url, judge.settings.scorer, judge.backend.concurrency, judge.settings.digit_prune_below) == (
        "http://127.0.0.1:8000/v1/chat/completions",
        "digits",
        3,
        0.01,
    )
    assert "secret-value" not in str(vars(judge)) + str(vars(judge.backend))  # only in the HTTP client's headers


def test_transformers_backend_from_config(tmp_path):
    path = make_tiny_qwen2(tmp_path / "judge")
    cfg = load_config(
        overrides=["judge.backend=transformers", f"judge.model={path}", "model.device=cpu", "judge.scorer=logprob"]
    )
    judge = make_judge(cfg)
    assert isinstance(judge.backend, TransformersBackend) and judge.settings.scorer == "logprob"
    assert judge.backend.max_batch == cfg.judge.batch_size


def test_missing_model_and_bad_scorer():
    with pytest.raises(ValueError, match="judge.model"):
        make_judge(load_config(overrides=["judge.backend=transformers"]))
    with pytest.raises(ValueError, match="judge.model"):
        make_judge(load_config(overrides=["judge.backend=openai"]))
    with pytest.raises(ValueError, match="scorer"):
        JudgeSettings(scorer="vibes")


def test_exact_backend_is_the_organism_judge():
    from canary_lib.organism import ExactJudge

    assert isinstance(make_judge(load_config(overrides=["judge.backend=exact"])), ExactJudge)


def test_hosted_openai_needs_a_key(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(ValueError, match="NO_SUCH_KEY_VAR"):
        make_judge(
            load_config(
                overrides=[
                    "judge.backend=openai",
                    "judge.model=gpt-4o-2024-08-06",
                    "judge.api_key_env=NO_SUCH_KEY_VAR",
                    "judge.scorer=logprob",
                ]
            )
        )
