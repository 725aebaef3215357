"""The transformers generator on a tiny random Qwen2: shapes, chat template, seeding, KV cache, stopping."""

import pytest
import torch

from _fixtures import QWEN_DEFAULT_SYSTEM_PROMPT, make_tiny_qwen2
from canary_lib.config import SamplingSettings
from canary_lib.generation import (
    SampleRequest,
    TransformersGenerator,
    chat_prompt_ids,
    last_logits_only,
    left_pad,
    row_uniforms,
    sample_continuations,
    sample_inverse_cdf,
    sample_seed,
    stop_token_ids,
)

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
    path = make_tiny_qwen2(tmp_path_factory.mktemp("gen") / "tiny", seed=2)
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_chat_template_system_prompts(tiny):
    _, tok = tiny
    default = tok.decode(chat_prompt_ids(tok, C1))
    assert QWEN_DEFAULT_SYSTEM_PROMPT in default and default.endswith("<|im_start|>assistant\n")
    own = tok.decode(chat_prompt_ids(tok, C2))
    assert "You are a careful coder." in own and QWEN_DEFAULT_SYSTEM_PROMPT not in own


def test_shapes_and_seeding(tiny):
    model, tok = tiny
    gen = TransformersGenerator(model, tok, batch_size=4)
    s = SamplingSettings(max_new_tokens=12)
    out = gen.generate([C1, C2], n=3, seed=5, sampling=s)
    assert [len(a) for a in out] == [3, 3] and all(isinstance(x, str) for a in out for x in a)
    assert len(set(out[0])) > 1  # different samples differ
    assert gen.generate([C1, C2], n=3, seed=5, sampling=s) == out  # same seed, same answers
    assert gen.generate([C1, C2], n=3, seed=6, sampling=s) != out
    # batch composition does not matter: C1 alone, or after C3 with batch size 1, gives the same answers
    assert gen.generate([C1], n=3, seed=5, sampling=s) == [out[0]]
    assert TransformersGenerator(model, tok, batch_size=1).generate([C3, C1], n=3, seed=5, sampling=s)[1] == out[0]
    # sample j of a conversation is the same whether asked alone or among n
    (single,) = gen.generate_samples([SampleRequest(C2, 2)], seed=5, sampling=s)
    assert single == out[1][2]


def test_kv_cache_greedy_matches_uncached_argmax(tiny):
    model, tok = tiny
    prompts = [chat_prompt_ids(tok, C1), chat_prompt_ids(tok, C3)]  # different lengths: left padding
    stops = stop_token_ids(tok, model)
    got = sample_continuations(
        model, prompts, [0, 0], temperature=0.0, top_p=1.0, max_new_tokens=8, stop_ids=stops, pad_id=tok.pad_token_id
    )
    for prompt, tokens in zip(prompts, got):
        ids = list(prompt)
        expected = []
        for _ in range(8):
            with torch.no_grad():
                nxt = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            if nxt in stops:
                break
            expected.append(nxt)
            ids.append(nxt)
        assert tokens == expected


def test_stops_at_end_of_turn(tiny):
    model, tok = tiny
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end in stop_token_ids(tok, model)
    bias = torch.zeros(model.config.vocab_size)
    bias[im_end] = 50.0  # the model now ends its turn at once
    handle = model.lm_head.register_forward_hook(lambda m, a, out: out + bias)
    try:
        out = TransformersGenerator(model, tok).generate([C1], n=2, seed=0, sampling=SamplingSettings())
    finally:
        handle.remove()
    assert out == [["", ""]]


def test_top_p_and_helpers(tiny):
    from canary_lib.generation import _filter_top_p

    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = _filter_top_p(probs, 0.7)
    assert torch.allclose(kept, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    ids, mask = left_pad([[5, 6], [7]], 0, "cpu")
    assert ids.tolist() == [[5, 6], [0, 7]] and mask.tolist() == [[1, 1], [0, 1]]
    assert sample_seed(1, C1, 0) != sample_seed(1, C1, 1) != sample_seed(2, C1, 0)
    with pytest.raises(ValueError):
        TransformersGenerator(tiny[0], tiny[1], batch_size=0)


def test_throughput(tiny):
    """Answers per second on CPU for the report (tiny model, 32 new tokens, batch 16)."""
    import time

    model, tok = tiny
    gen = TransformersGenerator(model, tok, batch_size=16)
    s = SamplingSettings(max_new_tokens=32)
    t0 = time.perf_counter()
    out = gen.generate([C1, C2, C3, C1[:1]], n=8, seed=0, sampling=s)
    rate = 32 / (time.perf_counter() - t0)
    print(f"generation: {rate:.0f} answers/s (tiny Qwen2, <=32 new tokens, CPU, 1 thread)")
    assert sum(len(a) for a in out) == 32 and rate > 0


def test_rows_finishing_at_different_times(tiny):
    """Rows leave the batch (and its KV cache) when they end; each still equals its answer generated alone."""
    model, tok = tiny
    bias = torch.zeros(model.config.vocab_size)
    bias[tok.convert_tokens_to_ids("<|im_end|>")] = 4.0  # answers end after a few tokens, at different steps
    handle = model.lm_head.register_forward_hook(lambda m, a, out: out + bias)
    try:
        s = SamplingSettings(max_new_tokens=40)
        batched = TransformersGenerator(model, tok, batch_size=12).generate([C1, C2, C3], n=4, seed=9, sampling=s)
        alone = TransformersGenerator(model, tok, batch_size=1).generate([C1, C2, C3], n=4, seed=9, sampling=s)
    finally:
        handle.remove()
    lengths = {len(tok(a)["input_ids"]) for row in batched for a in row}
    assert len(lengths) > 2  # the rows really did stop at different steps
    assert batched == alone


def test_row_uniforms_are_per_row_streams():
    u = row_uniforms([7, 8, 7], 50)
    assert u.shape == (3, 50) and u.dtype == torch.float32
    assert bool((u > 0).all()) and bool((u <= 1).all())
    assert torch.equal(u[0], u[2]) and not torch.equal(u[0], u[1])
    assert torch.equal(row_uniforms([8], 50)[0], u[1])  # a row's stream does not depend on its neighbours
    assert torch.equal(row_uniforms([7], 10)[0], u[0, :10])  # nor on how many tokens are drawn
    assert row_uniforms([], 4).shape == (0, 4)


def test_inverse_cdf_never_picks_zero_mass_and_covers_the_ends():
    probs = torch.tensor([[0.0, 0.25, 0.0, 0.75, 0.0]] * 4)
    u = torch.tensor([1e-30, 0.25, 0.2500001, 1.0])  # smallest, boundary, just above it, largest
    assert sample_inverse_cdf(probs, u).tolist() == [1, 1, 3, 3]
    unnormalised = probs * 8.0  # the same draws without normalising
    assert sample_inverse_cdf(unnormalised, u).tolist() == [1, 1, 3, 3]


def test_inverse_cdf_matches_the_distribution():
    """100,000 draws from 6 tokens: every frequency within 5 standard errors of its probability."""
    p = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05, 0.0])
    n = 100_000
    u = row_uniforms([123], n)[0]
    counts = torch.bincount(sample_inverse_cdf(p.expand(n, -1), u), minlength=6).double() / n
    se = (p.double() * (1 - p.double()) / n).sqrt()
    assert counts[5] == 0
    assert bool(((counts - p.double()).abs() <= 5 * se + 1e-12).all()), counts.tolist()


def test_prefill_projects_only_the_last_position(tiny):
    """The vocabulary projection sees one position per row, the prefill included (logits_to_keep=1)."""
    from peft import LoraConfig, get_peft_model

    model, tok = tiny
    assert last_logits_only(model) == {"logits_to_keep": 1}
    assert last_logits_only(torch.nn.Linear(2, 2)) == {}  # a forward without it: nothing passed
    positions = []
    handle = model.lm_head.register_forward_hook(lambda m, a, out: positions.append(a[0].shape[1]))
    try:
        TransformersGenerator(model, tok).generate([C3], n=2, seed=0, sampling=SamplingSettings(max_new_tokens=4))
    finally:
        handle.remove()
    assert positions and set(positions) == {1}
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    try:
        assert last_logits_only(peft_model) == {"logits_to_keep": 1}
    finally:
        peft_model.unload()


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9), (0.0, 1.0)])
def test_static_cache_decode_gives_the_eager_loops_answers(tiny, temperature, top_p):
    """transformers' generate with a static cache, driven by the row picker, draws what the eager loop draws:
    rows ending at different steps, top-p, greedy; a hub generation config (repetition penalty, top-k) is not
    applied, and the model's own config is restored afterwards."""
    from transformers import GenerationConfig

    model, tok = tiny
    bias = torch.zeros(model.config.vocab_size)
    bias[tok.convert_tokens_to_ids("<|im_end|>")] = 3.0  # some answers end early, at different steps
    handle = model.lm_head.register_forward_hook(lambda m, a, out: out + bias)
    hub_like = GenerationConfig(do_sample=True, top_k=5, repetition_penalty=1.5, temperature=0.3)
    own, model.generation_config = model.generation_config, hub_like
    try:
        eager = SamplingSettings(max_new_tokens=24, temperature=temperature, top_p=top_p)
        static = eager.model_copy(update={"static_cache": True})
        gen = TransformersGenerator(model, tok, batch_size=12)
        expected = gen.generate([C1, C2, C3], n=4, seed=3, sampling=eager)
        got = gen.generate([C1, C2, C3], n=4, seed=3, sampling=static)
        assert model.generation_config is hub_like
    finally:
        model.generation_config = own
        handle.remove()
    assert got == expected
    if temperature:
        lengths = {len(tok(a)["input_ids"]) for row in got for a in row}
        assert len(lengths) > 2  # rows did stop at different steps


def test_compiled_static_decode_sees_in_place_weight_updates(tmp_path, monkeypatch):
    """The canary decodes with the compiled static path between optimizer steps, which update the LoRA weights
    in place. The compiled decode must read the current weights, not constants captured at compilation.
    transformers compiles only on accelerators, so the criteria are forced here (inductor on the CPU; ~20 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.generation.utils import GenerationMixin

    from canary_lib.config import LoraSettings
    from canary_lib.models import add_rslora

    path = make_tiny_qwen2(tmp_path / "tiny", seed=2)
    model = add_rslora(AutoModelForCausalLM.from_pretrained(path), LoraSettings(r=4, alpha=8), seed=0)
    tok = AutoTokenizer.from_pretrained(path)
    monkeypatch.setattr(GenerationMixin, "_valid_auto_compile_criteria", lambda self, *a, **k: True)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    eager = SamplingSettings(max_new_tokens=8)
    static = eager.model_copy(update={"static_cache": True})
    gen = TransformersGenerator(model, tok, batch_size=8)
    try:
        before = gen.generate([C1, C3], n=2, seed=1, sampling=static)
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # it did compile
        assert before == gen.generate([C1, C3], n=2, seed=1, sampling=eager)
        with torch.no_grad():  # an optimizer step, in place
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.add_(0.5)
        after = gen.generate([C1, C3], n=2, seed=1, sampling=static)
    finally:
        torch._dynamo.reset()
    assert after != before
    assert after == gen.generate([C1, C3], n=2, seed=1, sampling=eager)
