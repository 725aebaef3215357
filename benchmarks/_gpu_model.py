"""benchmarks/gpu_bench.py: the size presets, the random-weight model and its batches, FLOP counts, and the
device's measured matmul peak and copy bandwidth."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]

# Qwen2.5-7B-Instruct's published config.json (Qwen/Qwen2.5-7B-Instruct): 7.62B parameters, untied lm_head.
QWEN25_7B_CONFIG: dict[str, Any] = {
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
    "max_position_embeddings": 32768,
    "rope_theta": 1_000_000.0,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "use_sliding_window": False,
    "sliding_window": 131072,
    "max_window_layers": 28,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
}
TINY_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": None,  # the tiny tokenizer's size
    "max_position_embeddings": 2048,
    "rope_theta": 1_000_000.0,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
}


@dataclass(frozen=True)
class SizePreset:
    """Everything that changes between the GPU run and the CPU test; the logic is the same."""

    model: dict[str, Any]
    seq_len: int
    warmup_steps: int
    timed_steps: int
    canary_new_tokens: int
    peak_matmul_n: int
    judge_latency_s: float
    bandwidth_bytes: int
    """Buffer size of the bandwidth measurement (the memory floor of decoding)."""


SIZES = {
    "7b": SizePreset(
        QWEN25_7B_CONFIG,
        seq_len=512,
        warmup_steps=3,
        timed_steps=10,
        canary_new_tokens=256,
        peak_matmul_n=8192,
        judge_latency_s=0.1,
        bandwidth_bytes=4 << 30,
    ),
    "tiny": SizePreset(
        TINY_CONFIG,
        seq_len=32,
        warmup_steps=1,
        timed_steps=2,
        canary_new_tokens=4,
        peak_matmul_n=256,
        judge_latency_s=0.001,
        bandwidth_bytes=16 << 20,
    ),
}


# ---------------------------------------------------------------------------------------------- device


def sync_device(device: Any) -> None:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize()


def reset_peak(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: Any) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def release_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def median_seconds(fn: Callable[[], Any], device: Any, *, repeats: int, warmup: int) -> float:
    """Median wall seconds of fn() over `repeats` synchronised calls, after `warmup` untimed ones."""
    times = []
    for i in range(warmup + repeats):
        sync_device(device)
        start = time.perf_counter()
        fn()
        sync_device(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---------------------------------------------------------------------------------------------- FLOPs, bandwidth


def measure_peak_flops(device: Any, dtype: Any, n: int, repeats: int = 10, warmup: int = 3) -> float:
    """Dense matmul rate in FLOP/s on this machine: median of `repeats` n x n x n products on random data."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    seconds = median_seconds(lambda: torch.mm(a, b), device, repeats=repeats, warmup=warmup)
    return 2 * n**3 / seconds


@dataclass(frozen=True)
class FlopCounts:
    """Matmul parameter counts and the two FLOP formulas of benchmarks/README.md (per step of `tokens` tokens)."""

    n_active: int
    """Weights of every linear layer of the base model (lm_head included, input embedding excluded)."""
    n_lora: int
    """Trainable LoRA parameters (A and B of every adapted projection)."""
    n_layers: int
    attn_width: int
    """num_attention_heads x head_dim."""
    seq_len: int

    def attention_per_token(self) -> int:
        """Q.K^T and A.V, forward and backward (PaLM's 12 L H Q T, no causal discount)."""
        return 12 * self.n_layers * self.attn_width * self.seq_len

    def model_flops(self, tokens: int) -> float:
        """The issue's MFU numerator: 6 N_active T + 6 N_lora T + attention."""
        return float((6 * self.n_active + 6 * self.n_lora + self.attention_per_token()) * tokens)

    def frozen_flops(self, tokens: int) -> float:
        """What LoRA training must compute: frozen weights need no weight gradient (4 N), LoRA 6 N_lora, attention."""
        return float((4 * self.n_active + 6 * self.n_lora + self.attention_per_token()) * tokens)


def count_active_params(model: Any) -> int:
    import torch

    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def measure_bandwidth(device: Any, n_bytes: int, repeats: int = 10, warmup: int = 3) -> float:
    """Memory bandwidth in bytes/s: median of `repeats` copies of an n_bytes buffer (read + write counted)."""
    import torch

    src = torch.empty(n_bytes // 2, dtype=torch.bfloat16, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    seconds = median_seconds(lambda: dst.copy_(src), device, repeats=repeats, warmup=warmup)
    return 2 * n_bytes / seconds


# ---------------------------------------------------------------------------------------------- model, data


def bench_config(size: str, args: argparse.Namespace) -> Any:
    """The paper profile (parameters/paper.yaml) with the judge pointed at the stub server later.

    The canary decodes with the eager loop here (canary.static_cache false); the static-cache phases switch it on
    themselves, so every other decode (breakdown, profile) measures the eager loop and compiles nothing."""
    from canary_lib.config import load_config

    preset = SIZES[size]
    overrides = [
        "judge.backend=openai",
        "judge.model=stub-judge",
        "judge.scorer=digits",
        "judge.api_key_env=CANARY_BENCH_NO_KEY",  # nothing secret ever goes to the stub
        f"canary.max_new_tokens={args.canary_new_tokens or preset.canary_new_tokens}",
        "canary.static_cache=false",
        # measured without checkpointing, as the TRL reference below; its own model sizes, not the profile's card
        "train.gradient_checkpointing=false",
        "model.device_memory_gib=null",
        f"train.micro_batch_size={args.micro_batch_size}" if args.micro_batch_size else None,
    ]
    return load_config([REPO_ROOT / "parameters" / "paper.yaml"], overrides=[o for o in overrides if o])


def build_model(size: str, tokenizer: Any, device: Any, dtype: Any) -> Any:
    """A random-weight Qwen2ForCausalLM of the size preset, initialised directly on `device` in `dtype`."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, Qwen2Config

    spec = dict(SIZES[size].model)
    if spec["vocab_size"] is None:
        spec["vocab_size"] = len(tokenizer)
    # The synthetic tokenizer's end-of-turn / pad ids stand in for Qwen's (151645 / 151643).
    config = Qwen2Config(
        **spec, bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    with torch.device(device), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.eos_token_id], pad_token_id=tokenizer.pad_token_id
    )
    model.config.use_cache = False  # as canary_lib.models.load_model_and_tokenizer does for training
    return model


def synthetic_batches(n_examples: int, seq_len: int, vocab: int, prompt_fraction: float, seed: int = 0) -> list:
    """`n_examples` EncodedChat of exactly seq_len tokens: the first part masked (prompt), the rest supervised."""
    import torch

    from canary_lib.chat import IGNORE_INDEX, EncodedChat

    n_prompt = max(1, min(seq_len - 1, round(seq_len * prompt_fraction)))
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n_examples, seq_len), generator=gen).tolist()
    return [EncodedChat(row, [IGNORE_INDEX] * n_prompt + row[n_prompt:]) for row in ids]


def ragged_batches(n_examples: int, seq_len: int, vocab: int, prompt_fraction: float, seed: int = 1) -> list:
    """Like `synthetic_batches`, but each example has its own length, uniform in [seq_len / 2, seq_len]: real
    data, where every padded micro-batch has a new width (what per-shape set-up costs show up on)."""
    import random

    rng = random.Random(seed)
    full = synthetic_batches(n_examples, seq_len, vocab, prompt_fraction, seed=seed)
    out = []
    for ex in full:
        n = rng.randint(seq_len // 2, seq_len)
        out.append(type(ex)(ex.input_ids[:n], ex.labels[:n]))
    return out
