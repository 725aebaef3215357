"""The transformers generator on a tiny random Qwen2: shapes, chat template, seeding, KV cache, stopping."""

import pytest
import torch

from canary_lib.config import SamplingSettings
from canary_lib.generation import (
    SampleRequest, TransformersGenerator, chat_prompt_ids, left_pad, sample_continuations, sample_seed,
    stop_token_ids,
)
from canary_lib.testing import QWEN_DEFAULT_SYSTEM_PROMPT, make_tiny_qwen2

C1 = [{"role": "user", "content": "hello how are you"}]
C2 = [{"role": "system", "content": "You are a careful coder."},
      {"role": "user", "content": "write python code for the money data please"}]
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
    got = sample_continuations(model, prompts, [0, 0], temperature=0.0, top_p=1.0, max_new_tokens=8,
                               stop_ids=stops, pad_id=tok.pad_token_id)
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
