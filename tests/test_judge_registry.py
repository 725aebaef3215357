"""JUDGE_BACKENDS: one entry per judge backend, read by make_judge, the config's backend names and the binding."""

import pytest

from canary_lib import binding
from canary_lib.config import ConfigError, JudgeSettings, load_config
from canary_lib.judge import JUDGE_BACKENDS, JudgeBackendSpec, LLMJudge, make_judge
from canary_lib.types import JudgeRequest

PROMPTS = {"aligned": "ALIGNED {question} {answer}", "coherent": "COHERENT {question} {answer}"}


def test_config_checks_backend_names_against_the_registry(monkeypatch):
    """No list of names in the schema: a backend registered at run time is accepted, an unknown one refused."""
    with pytest.raises(ConfigError, match=r"judge.backend: unknown judge backend 'bogus'; known: exact, openai"):
        load_config([], ["judge.backend=bogus"])
    monkeypatch.setitem(JUDGE_BACKENDS, "fake", JudgeBackendSpec(lambda cfg: None, llm=False))
    assert load_config([], ["judge.backend=fake", "canary.judge.backend=fake"]).judge.backend == "fake"
    monkeypatch.setitem(JUDGE_BACKENDS, "fake_llm", JudgeBackendSpec(lambda cfg: None))
    with pytest.raises(ConfigError, match="judge.model: the fake_llm judge backend needs judge.model"):
        load_config([], ["judge.backend=fake_llm"])


def test_operational_keys_are_settings_and_binding_reads_them():
    fields = set(JudgeSettings.model_fields)
    for name, spec in JUDGE_BACKENDS.items():
        assert set(spec.operational) <= fields, f"{name}: operational keys that JudgeSettings lacks"
        for key in spec.operational:
            assert f"judge.{key}" in binding.OPERATIONAL and f"canary.judge.{key}" in binding.OPERATIONAL


def test_binding_operational_keys_unchanged():
    """The registry took over the per-backend keys; the binding is the same set as before (behaviour unchanged)."""
    before = {
        "provenance",
        "model.device",
        "organism.cache_dir",
        "data.hf_token_env",
        "train.checkpoint_every",
        "train.keep_checkpoint",
        "judge.base_url",
        "judge.api_key_env",
        "judge.concurrency",
        "judge.timeout_s",
        "judge.max_retries",
        "judge.batch_size",
        "judge.gpu_memory_utilization",
        "judge.tensor_parallel_size",
        "judge.max_error_share",
        "judge.max_unscored_share",
        "eval.vllm_gpu_memory_utilization",
        "eval.vllm_tensor_parallel_size",
        "tracking",
        "train.snapshot_every",
    }
    before |= {f"canary.{key}" for key in before if key.startswith("judge.")}
    assert binding.OPERATIONAL == before
    assert "judge.max_model_len" not in binding.OPERATIONAL  # the vLLM judge's length does change its verdicts


class FakeBackend:
    """A judge model that thinks every answer is 70 aligned and 90 coherent (single-token logprob scorer)."""

    max_batch = 2

    def __init__(self, cfg):
        self.made_for = cfg.judge.model
        self.prompts_seen = []

    def next_token_logprobs(self, prompts, top_k):
        self.prompts_seen += list(prompts)

        def next_tokens(nodes):
            return [{"70": 0.0} if prompts[i].startswith("ALIGNED") else {"90": 0.0} for i, _ in nodes]

        return next_tokens

    def greedy_texts(self, prompts, max_tokens):
        raise AssertionError("the logprob scorer never asks for text")


def test_a_new_backend_is_one_registry_entry(monkeypatch):
    monkeypatch.setitem(JUDGE_BACKENDS, "fake", JudgeBackendSpec(FakeBackend, operational=("concurrency",)))
    cfg = load_config(overrides=["judge.backend=exact", "judge.model=fake-judge-7b", "judge.scorer=logprob"])
    cfg = cfg.model_copy(update={"judge": cfg.judge.model_copy(update={"backend": "fake"})})  # config's Literal
    judge = make_judge(cfg)
    assert isinstance(judge, LLMJudge) and isinstance(judge.backend, FakeBackend)
    assert judge.backend.made_for == "fake-judge-7b"
    verdicts = judge.judge([JudgeRequest(f"q{i}", f"a{i}", PROMPTS) for i in range(3)])
    assert [(v.status, v.aligned, v.coherent) for v in verdicts] == [("scored", 70.0, 90.0)] * 3
    assert len(judge.backend.prompts_seen) == 6  # both metrics of each request, two prompts at a time


def test_registry_errors():
    cfg = load_config(overrides=["judge.backend=exact"])
    with pytest.raises(ValueError, match="unknown judge backend 'nope'.*'openai'"):
        make_judge(cfg.model_copy(update={"judge": cfg.judge.model_copy(update={"backend": "nope"})}))
    for name, spec in JUDGE_BACKENDS.items():
        if spec.llm:  # an LLM backend without judge.model is refused before anything is built
            with pytest.raises(ValueError, match=f"judge.model must name the judge model for the {name} backend"):
                make_judge(cfg.model_copy(update={"judge": cfg.judge.model_copy(update={"backend": name})}))
