"""The organism's network: a tiny Qwen2 decoder, so every Qwen2.5 code path (rs-LoRA targets included) runs on it."""

from __future__ import annotations

from transformers import Qwen2Config


def tiny_qwen2_config(vocab_size: int, hidden_size: int, num_layers: int, num_heads: int,
                      pad_token_id: int, eos_token_id: int) -> Qwen2Config:
    """A Qwen2 config small enough to pre-train in minutes on two CPU cores.

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
    return Qwen2Config(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=hidden_size * 8 // 3,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
        max_position_embeddings=512, rope_theta=10000.0, tie_word_embeddings=True,
        pad_token_id=pad_token_id, eos_token_id=eos_token_id, bos_token_id=None,
        use_sliding_window=False, attention_dropout=0.0,
    )
