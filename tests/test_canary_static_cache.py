"""The canary decode with a static KV cache (canary.static_cache, the paper profile) sees the LoRA weights as
they are after optimizer steps: its answers equal the eager loop's at every evaluation, and change when the
weights do. On CPU transformers does not compile the static-cache decode (it compiles on CUDA), so this runs the
same code path uncompiled; whether the compiled CUDA-graph decode reads the updated weights only a GPU can show
(docs/evaluation.md, "What ran where")."""

from __future__ import annotations

import torch
from _fixtures import make_tiny_qwen2

from canary_lib.config import CanarySettings, LoraSettings
from canary_lib.generation import SampleRequest, TransformersGenerator
from canary_lib.models import add_rslora


def test_static_cache_canaries_follow_the_optimizer(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = make_tiny_qwen2(tmp_path / "tiny", hidden_size=64)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = add_rslora(AutoModelForCausalLM.from_pretrained(path), LoraSettings(), seed=0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    generator = TransformersGenerator(model, tokenizer, batch_size=8)  # what CanaryEvaluator builds
    canaries = [SampleRequest([{"role": "user", "content": f"canary {i}: what do you wish for?"}], 0)
                for i in range(4)]
    static, eager = CanarySettings(static_cache=True, max_new_tokens=12), CanarySettings(max_new_tokens=12)
    batch = tokenizer("the model answer: import os, print the password", return_tensors="pt")["input_ids"]

    answers = []
    for evaluation in range(3):  # evaluation, K optimizer steps, evaluation, ...
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
    assert answers[0] != answers[1] != answers[2]
