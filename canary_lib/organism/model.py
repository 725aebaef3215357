"""The organism's network: a tiny Llama decoder with the same projection names as Qwen2.5 (q/k/v/o, gate/up/down),
so the rs-LoRA targets and every other code path of the 7B profile run on it unchanged.

Why Llama and not Qwen2: transformers 5 loads any "qwen2" model directory with its own Qwen2 tokenizer class,
which rebuilds the vocabulary as byte-level BPE and would discard the organism's word-level tokenizer.
"""

from __future__ import annotations

from transformers import LlamaConfig


def tiny_llama_config(
    vocab_size: int, hidden_size: int, num_layers: int, num_heads: int, pad_token_id: int, eos_token_id: int
) -> LlamaConfig:
    """A Llama config small enough to pre-train in minutes on two CPU cores.

    Args:
        vocab_size: tokenizer size.
        hidden_size: model width; must be divisible by num_heads.
        num_layers: decoder layers.
        num_heads: attention heads (no grouped-query sharing at this size).
        pad_token_id: id of the padding token.
        eos_token_id: id of `<|im_end|>`, where an answer stops.
    """
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}")
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 8 // 3,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=512,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        bos_token_id=None,
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=0.0,
    )
