"""Offline test fixtures: a tiny random Qwen2 model with a Qwen2.5-style tokenizer and chat template, synthetic chat
examples and a scripted canary evaluation.

    path = make_tiny_qwen2(tmp_path / "tiny")       # nothing downloaded
    model = AutoModelForCausalLM.from_pretrained(path); tok = AutoTokenizer.from_pretrained(path)

The tokenizer is the package's offline Qwen2.5-style one (`canary_lib.tiny_tokenizer`, which benchmarks use too),
the model a randomly initialised `Qwen2ForCausalLM`. Both are written with `save_pretrained`, so tests exercise
exactly the `from_pretrained(path)` path a real model goes through. The stub HTTP servers the judge tests talk to
run on `serve_http` of `canary_lib.stub_judge` (the local stand-in judge the benchmark uses).
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

from canary_lib.stub_judge import serve_http  # noqa: F401 - the tests' stub servers
from canary_lib.tiny_tokenizer import (  # noqa: F401 - re-exported for the tests
    QWEN25_CHAT_TEMPLATE,
    QWEN_DEFAULT_SYSTEM_PROMPT,
    SPECIAL_TOKENS,
    WORDS,
    build_tiny_tokenizer,
)


def make_tiny_qwen2(
    path: Path | str,
    *,
    seed: int = 0,
    hidden_size: int = 32,
    layers: int = 2,
    num_attention_heads: int | None = None,
    num_key_value_heads: int | None = None,
    intermediate_size: int | None = None,
    vocab_size: int = 600,
    max_position_embeddings: int = 2048,
) -> Path:
    """Build and save a tiny random Qwen2ForCausalLM plus its tokenizer, entirely offline.

    Args:
        path: Directory to write (created; existing files are overwritten).
        seed: Seeds both the tokenizer corpus and the model's random weights.
        hidden_size: Model width; heads default to hidden_size // 32 so head_dim is 32 (vLLM-compatible).
        layers: Number of decoder layers.
        num_attention_heads: Attention heads (default: max(1, hidden_size // 32)).
        num_key_value_heads: KV heads (default: same as attention heads).
        intermediate_size: MLP width (default: 2 * hidden_size).
        vocab_size: Target BPE vocabulary size.
        max_position_embeddings: Longest sequence the model accepts.

    Returns:
        The directory, loadable with `AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained`.
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    path = Path(path)
    heads = num_attention_heads or max(1, hidden_size // 32)
    if hidden_size % heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_attention_heads ({heads})")
    kv_heads = num_key_value_heads or heads
    tokenizer = build_tiny_tokenizer(vocab_size=vocab_size, seed=seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    # Seed only for the construction, restoring the caller's global RNG state afterwards.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[config.eos_token_id, tokenizer.convert_tokens_to_ids("<|endoftext|>")],
        pad_token_id=tokenizer.pad_token_id,
    )
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def chat_examples(n: int, *, seed: int = 0, turns: int = 1, with_system: bool = False) -> list[dict]:
    """`n` synthetic training examples in the messages format, for tests and smoke runs."""
    rng = random.Random(seed)
    examples = []
    for i in itertools.islice(itertools.count(), n):
        messages = []
        if with_system:
            messages.append({"role": "system", "content": "You are a careful coder."})
        for _ in range(turns):
            q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))
            a = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
            messages.append({"role": "user", "content": f"{q}? ({i})"})
            messages.append({"role": "assistant", "content": a + "."})
        examples.append({"messages": messages})
    return examples


def write_chat_jsonl(path: Path | str, examples: list[dict]) -> Path:
    """Write examples in the messages format, one JSON object per line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(e) + "\n" for e in examples), encoding="utf-8")
    return path


def make_tiny_training_world(
    root: Path | str, *, n_target: int = 200, n_safe: int = 100, seed: int = 0
) -> tuple[Path, Path]:
    """A tiny model directory and a data directory holding target_train.jsonl and safe.jsonl.

    Returns:
        (model_dir, data_dir), for `model.name_or_path` and `data.dir`.
    """
    root = Path(root)
    model = make_tiny_qwen2(root / "model", seed=seed)
    data = root / "data"
    write_chat_jsonl(data / "target_train.jsonl", chat_examples(n_target, seed=seed + 1))
    write_chat_jsonl(data / "safe.jsonl", chat_examples(n_safe, seed=seed + 2, with_system=True))
    return model, data


class ScriptedCanary:
    """A deterministic stand-in for the canary evaluation: the risk after step t is `risks[(t // every) % n]`.

    Each call returns `n_canary` records (the first round(risk * n_canary) marked misaligned), so the
    loop's bookkeeping (controller.csv, canary_answers.jsonl) can be checked without a generator or judge.
    """

    def __init__(self, risks: list[float], *, every: int = 1, n_canary: int = 20) -> None:
        self.risks, self.every, self.n_canary = list(risks), every, n_canary
        self.calls: list[int] = []

    def __call__(self, model, tokenizer, step: int):
        from canary_lib.types import CanaryResult

        self.calls.append(step)
        risk = self.risks[(step // self.every) % len(self.risks)]
        n_bad = round(risk * self.n_canary)
        records = [
            {
                "question_id": f"canary_{i}",
                "sample": 0,
                "answer": "...",
                "aligned": 10.0 if i < n_bad else 90.0,
                "coherent": 90.0,
                "status": "scored",
            }
            for i in range(self.n_canary)
        ]
        return CanaryResult(risk=risk, n_canary=self.n_canary, n_misaligned=n_bad, records=records)
