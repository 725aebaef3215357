"""How large one adapter snapshot is: measured for the organism profile (an rs-LoRA adapter on the organism's
network, saved as peft saves it), computed for the paper profile (rs-LoRA r=32 on Qwen2.5-7B's projections).

    .venv/bin/python benchmarks/snapshot_size.py       # prints both; docs/training.md, "Adapter snapshots"
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from canary_lib.config import load_config

# Qwen2.5-7B-Instruct's config.json: 28 layers, hidden 3584, MLP 18944, 4 key/value heads of 128 dimensions.
QWEN25_7B = {"layers": 28, "hidden": 3584, "intermediate": 18944, "kv": 4 * 128}


def lora_parameters(r: int, shapes: dict[str, tuple[int, int]], layers: int) -> int:
    """A and B of every adapted module: r x (in + out) each, per layer."""
    return layers * sum(r * (n_in + n_out) for n_in, n_out in shapes.values())


def paper_snapshot_bytes() -> tuple[int, int]:
    cfg = load_config(["parameters/paper.yaml"])
    h, m, kv = QWEN25_7B["hidden"], QWEN25_7B["intermediate"], QWEN25_7B["kv"]
    shapes = {
        "q_proj": (h, h),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (h, h),
        "gate_proj": (h, m),
        "up_proj": (h, m),
        "down_proj": (m, h),
    }
    shapes = {k: v for k, v in shapes.items() if k in cfg.lora.target_modules}
    n = lora_parameters(cfg.lora.r, shapes, QWEN25_7B["layers"])
    return n, 4 * n  # LoRA weights stay float32 (the base model is bf16): 4 bytes each


def paper_parameters_from_peft() -> int:
    """The same count from peft itself: rs-LoRA on a Qwen2.5-7B-shaped model on the meta device (no memory)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from canary_lib.models import add_rslora

    cfg = load_config(["parameters/paper.yaml"])
    shape = Qwen2Config(
        vocab_size=152064,
        hidden_size=QWEN25_7B["hidden"],
        intermediate_size=QWEN25_7B["intermediate"],
        num_hidden_layers=QWEN25_7B["layers"],
        num_attention_heads=28,
        num_key_value_heads=4,
    )
    with torch.device("meta"):
        model = Qwen2ForCausalLM(shape)
    model = add_rslora(model, cfg.lora, seed=0)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def organism_snapshot_bytes() -> tuple[int, int]:
    from transformers import LlamaForCausalLM

    from canary_lib.models import add_rslora
    from canary_lib.organism.model import tiny_llama_config

    cfg = load_config(["parameters/organism.yaml"])
    o = cfg.organism
    model = LlamaForCausalLM(tiny_llama_config(512, o.hidden_size, o.num_layers, o.num_heads, 0, 1))
    model = add_rslora(model, cfg.lora, seed=0)
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        size = sum(f.stat().st_size for f in Path(tmp).iterdir())
    return n, size


if __name__ == "__main__":
    n, size = organism_snapshot_bytes()
    print(f"organism: {n:,} LoRA parameters, one snapshot directory {size:,} bytes ({size / 2**10:.0f} KiB), measured")
    n, size = paper_snapshot_bytes()
    print(
        f"paper:    {n:,} LoRA parameters, about {size:,} bytes ({size / 2**20:.0f} MiB) of float32 weights, "
        f"computed (peft on a meta-device Qwen2.5-7B shape: {paper_parameters_from_peft():,} parameters)"
    )
