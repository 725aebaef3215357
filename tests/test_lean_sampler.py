"""The lean sampler (canary_lib.lean.lean_sample_continuations) against the standard one on the tiny offline Qwen2:
the same answers (each from its own stream) with and without a LoRA adapter, bit-identical repeats, the adapter
left as it was, and the configuration's refusals.

Run: .venv/bin/python -m pytest -q tests/test_lean_sampler.py -n 0
"""

from __future__ import annotations

import pytest
import torch

from _fixtures import make_tiny_qwen2
from canary_lib.config import ConfigError, LoraSettings, SamplingSettings, load_config
from canary_lib.generation import SampleRequest, TransformersGenerator, chat_prompt_ids, stop_token_ids
from canary_lib.lean import lean_sample_continuations
from canary_lib.models import add_rslora

C1 = [{"role": "user", "content": "hello how are you"}]
C2 = [
    {"role": "system", "content": "You are a careful coder."},
    {"role": "user", "content": "write python code for the money data please"},
]
C3 = [{"role": "user", "content": "tell me about the world and the people in it, and their ideas about power"}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    path = make_tiny_qwen2(tmp_path_factory.mktemp("lean_gen") / "tiny", seed=2)
    return path, AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def _answers(model, tok, sampler: str, n: int = 6, **settings) -> list[list[str]]:
    sampling = SamplingSettings(max_new_tokens=24, sampler=sampler, **settings)
    return TransformersGenerator(model, tok, batch_size=64).generate([C1, C2, C3], n=n, seed=7, sampling=sampling)


@pytest.mark.parametrize("settings", [{}, {"temperature": 0.7, "top_p": 0.9}, {"temperature": 0.0}])
def test_lean_sampler_draws_the_standard_answers(tiny, settings):
    _, model, tok = tiny
    standard = _answers(model, tok, "standard", **settings)
    lean = _answers(model, tok, "lean", **settings)
    assert lean == standard
    assert _answers(model, tok, "lean", **settings) == lean  # and again, bit for bit
    if settings.get("temperature", 1.0):
        assert len({a for row in lean for a in row}) > 3  # the samples of one prompt do differ


def test_lean_sampler_with_an_unmerged_lora_matches_and_leaves_it_unmerged(tiny):
    from transformers import AutoModelForCausalLM

    path, _, tok = tiny
    model = add_rslora(AutoModelForCausalLM.from_pretrained(path), LoraSettings(r=8, alpha=16), seed=0)
    with torch.no_grad():  # a trained adapter: the answers differ from the base model's
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.3)
    model.eval()
    state = {n: p.detach().clone() for n, p in model.named_parameters()}
    standard = _answers(model, tok, "standard")
    lean = _answers(model, tok, "lean")
    same = sum(a == b for row_a, row_b in zip(lean, standard) for a, b in zip(row_a, row_b))
    # merged weights round differently, so a near-tied token may flip an answer; on this model none did
    assert same == 18, (same, lean, standard)
    assert all(torch.equal(p, state[n]) for n, p in model.named_parameters())
    assert not any(getattr(m, "merged", False) for m in model.modules())


def test_prompts_are_prefilled_once_per_distinct_prompt(tiny, monkeypatch):
    _, model, tok = tiny
    widths = []
    hook = model.register_forward_pre_hook(
        lambda m, args, kwargs: widths.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    try:
        prompts = [chat_prompt_ids(tok, C1)] * 5 + [chat_prompt_ids(tok, C3)] * 5
        lean_sample_continuations(
            model,
            prompts,
            list(range(10)),
            temperature=1.0,
            top_p=1.0,
            max_new_tokens=4,
            stop_ids=stop_token_ids(tok, model),
            pad_id=tok.pad_token_id,
        )
    finally:
        hook.remove()
    assert widths[0][0] == 2 and widths[0][1] == len(prompts[5])  # the prefill: 2 distinct prompts
    assert all(w[1] == 1 for w in widths[1:]) and len(widths) <= 4  # then one token per step, no wasted forward


def test_one_answer_keeps_its_stream_alone_or_in_a_batch(tiny):
    _, model, tok = tiny
    sampling = SamplingSettings(max_new_tokens=24, sampler="lean")
    gen = TransformersGenerator(model, tok, batch_size=64)
    many = gen.generate([C1, C2, C3], n=4, seed=3, sampling=sampling)
    (alone,) = gen.generate_samples([SampleRequest(C2, 2)], seed=3, sampling=sampling)
    assert alone == many[1][2]


def test_config_refuses_lean_with_a_static_cache_and_defaults_to_standard():
    with pytest.raises(ConfigError, match="canary.sampler: lean and static_cache: true are two different decoders"):
        load_config([], ["canary.sampler=lean", "canary.static_cache=true"])
    cfg = load_config([], ["canary.sampler=lean", "eval.sampler=lean"])
    assert (cfg.canary.sampler, cfg.eval.sampler) == ("lean", "lean")
    default = load_config([], [])
    assert (default.canary.sampler, default.eval.sampler) == ("standard", "standard")


def test_rows_finishing_at_different_times_keep_their_answers(tiny):
    """Finished rows run along unread until a quarter of the batch is done, then leave it: no answer changes."""
    _, model, tok = tiny
    bias = torch.zeros(model.config.vocab_size)
    bias[tok.convert_tokens_to_ids("<|im_end|>")] = 4.0  # answers end after a few tokens, at different steps
    handle = model.lm_head.register_forward_hook(lambda m, a, out: out + bias)
    try:
        sampling = {k: SamplingSettings(max_new_tokens=40, sampler=k) for k in ("standard", "lean")}
        gen = TransformersGenerator(model, tok, batch_size=64)
        standard = gen.generate([C1, C2, C3], n=8, seed=11, sampling=sampling["standard"])
        lean = gen.generate([C1, C2, C3], n=8, seed=11, sampling=sampling["lean"])
    finally:
        handle.remove()
    lengths = {len(tok(a)["input_ids"]) for row in standard for a in row}
    assert len(lengths) > 3  # the rows did finish at different steps
    assert lean == standard
