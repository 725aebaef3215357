"""The canary decode with a static KV cache (canary.static_cache, the paper profile) sees the LoRA weights as
they are after optimizer steps: its answers equal the eager loop's at every evaluation, and change when the
weights do. Twice: as transformers runs it on CPU (uncompiled), and compiled as on a GPU (transformers compiles
the static-cache decode only on CUDA; the test turns that on for the CPU, with inductor's default mode). What
only a GPU can show: the CUDA-graph mode ("reduce-overhead", transformers' default there) reading the updated
weights (docs/evaluation.md, "What ran where")."""

from __future__ import annotations

import pytest
import torch

from _fixtures import make_tiny_qwen2
from canary_lib.config import CanarySettings, LoraSettings
from canary_lib.generation import SampleRequest, TransformersGenerator
from canary_lib.models import add_rslora


@pytest.fixture
def compile_on_cpu(monkeypatch):
    """Make transformers compile the static-cache decode on the CPU, and record that it did."""
    import transformers.generation.utils as generation_utils
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import CompileConfig

    monkeypatch.setattr(CompileConfig, "_compile_all_devices", True)
    init = GenerationConfig.__init__

    def with_compile(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.compile_config = CompileConfig(mode="default", fullgraph=False)

    monkeypatch.setattr(GenerationConfig, "__init__", with_compile)
    decisions: list[bool] = []
    criteria = generation_utils.GenerationMixin._valid_auto_compile_criteria

    def spy(self, model_kwargs, generation_config):
        decisions.append(criteria(self, model_kwargs, generation_config))
        return decisions[-1]

    monkeypatch.setattr(generation_utils.GenerationMixin, "_valid_auto_compile_criteria", spy)
    yield decisions
    torch._dynamo.reset()


def canaries_across_optimizer_steps(tmp_path) -> list[list[str]]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = make_tiny_qwen2(tmp_path / "tiny", hidden_size=64)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = add_rslora(AutoModelForCausalLM.from_pretrained(path), LoraSettings(), seed=0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    generator = TransformersGenerator(model, tokenizer, batch_size=8)  # what CanaryEvaluator builds
    canaries = [SampleRequest([{"role": "user", "content": f"canary {i}: what do you wish for?"}], 0) for i in range(4)]
    static, eager = CanarySettings(static_cache=True, max_new_tokens=12), CanarySettings(max_new_tokens=12)
    batch = tokenizer("the model answer: import os, print the password", return_tensors="pt")["input_ids"]

    answers = []
    for evaluation in range(3):  # evaluation, optimizer steps, evaluation, ...
        seed = 1000 + evaluation
        got = generator.generate_samples(canaries, seed=seed, sampling=static)
        assert got == generator.generate_samples(canaries, seed=seed, sampling=eager)
        # the same draws (seed of the first evaluation) differ once the weights moved: the decode reads them
        answers.append(generator.generate_samples(canaries, seed=1000, sampling=static))
        model.train()
        for _ in range(2):
            model(input_ids=batch, labels=batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    return answers


def test_static_cache_canaries_follow_the_optimizer(tmp_path):
    answers = canaries_across_optimizer_steps(tmp_path)
    assert answers[0] != answers[1] != answers[2]


@pytest.mark.slow
def test_compiled_static_cache_canaries_follow_the_optimizer(tmp_path, compile_on_cpu):
    answers = canaries_across_optimizer_steps(tmp_path)  # compiles once (about a minute on 2 busy cores)
    assert answers[0] != answers[1] != answers[2]
    assert compile_on_cpu and all(compile_on_cpu)  # every static-cache decode went through the compiled forward
