"""Peak GPU memory of a run, estimated from the model's shape and the configuration, before anything loads.

    estimate = training_peak(cfg)              # None when the model's shape is not known
    problem = memory_problem(cfg)              # a one-line refusal, or None

The estimate is a sum of parts (GiB), each computed from the shape; docs/training.md ("Memory") gives the
formulas and checks them against the H100 measurement in benchmarks/README.md (30.8 GiB at 4 x 512 tokens for
Qwen2.5-7B, estimated 30.6). `config_from_dict` refuses a configuration whose estimate exceeds the card it names
(`model.device_memory_gib`); training checks it again against the GPU it finds. No torch here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from canary_lib.config_schema import RunConfig

GIB = 2**30
ACTIVATION_VALUES_PER_TOKEN_LAYER = (10, 4)
"""Saved activations per token and layer without checkpointing: 10 x hidden + 4 x intermediate values (norm
inputs, q/k/v/o and their LoRA inputs, attention output; gate, up, act(gate), gate*up). With the H100 benchmark's
30.8 GiB at 4 x 512 tokens this leaves 0.2 GiB unexplained (docs/training.md)."""
LOGIT_BYTES = 12
"""Bytes per (token, vocabulary) entry in the loss: bf16 logits (2), their float32 copy for cross-entropy (4), the
float32 gradient of the log-softmax (4) and its bf16 cast (2)."""
CONTEXT_GIB = 1.0
"""CUDA context, cuBLAS workspaces and allocator slack beyond the tensors counted."""
FRAGMENTATION = 1.05


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def params(self) -> int:
        """Parameters of a Qwen2 causal LM of this shape (q/k/v biases, two norms per layer, final norm)."""
        kv = self.kv_heads * self.head_dim
        layer = (
            (self.hidden * self.hidden + self.hidden)
            + 2 * (self.hidden * kv + kv)
            + self.hidden * self.hidden
            + 3 * self.hidden * self.intermediate
            + 2 * self.hidden
        )
        embed = self.vocab * self.hidden * (1 if self.tied else 2)
        return embed + self.layers * layer + self.hidden

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes

    def projection_shapes(self) -> dict[str, tuple[int, int]]:
        kv = self.kv_heads * self.head_dim
        h, i = self.hidden, self.intermediate
        return {
            "q_proj": (h, h),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (h, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }


KNOWN_SHAPES = {  # the published config.json of each model
    "Qwen/Qwen2.5-0.5B-Instruct": ModelShape(896, 4864, 24, 14, 2, 151936, True),
    "Qwen/Qwen2.5-1.5B-Instruct": ModelShape(1536, 8960, 28, 12, 2, 151936, True),
    "Qwen/Qwen2.5-7B-Instruct": ModelShape(3584, 18944, 28, 28, 4, 152064, False),
    "Qwen/Qwen2.5-32B-Instruct": ModelShape(5120, 27648, 64, 40, 8, 152064, False),
}


def model_shape(name_or_path: str) -> ModelShape | None:
    """The shape of a known hub model, or read from a local directory's config.json; None otherwise."""
    if name_or_path in KNOWN_SHAPES:
        return KNOWN_SHAPES[name_or_path]
    config = Path(name_or_path).expanduser() / "config.json"
    if not config.is_file():
        return None
    c = json.loads(config.read_text())
    try:
        return ModelShape(
            c["hidden_size"],
            c["intermediate_size"],
            c["num_hidden_layers"],
            c["num_attention_heads"],
            c.get("num_key_value_heads") or c["num_attention_heads"],
            c["vocab_size"],
            bool(c.get("tie_word_embeddings", False)),
        )
    except KeyError:
        return None


def training_peak(cfg: RunConfig, *, dtype_bytes: int = 2) -> dict[str, float] | None:
    """GiB by part of a training process's peak (a micro-batch padded to model.max_length, plus a local judge in
    the same process), or None when the model's shape is unknown. dtype_bytes: 2 for bf16 weights."""
    shape = model_shape(cfg.model.name_or_path)
    if shape is None:
        return None
    tokens = cfg.train.micro_batch_size * cfg.model.max_length
    h_values, i_values = ACTIVATION_VALUES_PER_TOKEN_LAYER
    per_layer = (h_values * shape.hidden + i_values * shape.intermediate) * dtype_bytes
    if cfg.train.gradient_checkpointing:  # each layer's input kept, one layer's activations recomputed at a time
        activations = tokens * (shape.layers * shape.hidden * dtype_bytes + per_layer)
    else:
        activations = tokens * shape.layers * per_layer
    shapes = shape.projection_shapes()
    lora_params = shape.layers * sum(
        cfg.lora.r * (a + b) for name, (a, b) in shapes.items() if name in cfg.lora.target_modules
    )
    parts = {
        "weights": shape.params * dtype_bytes / GIB,
        "lora_and_adam": lora_params * 16 / GIB,  # float32 weight, gradient, two Adam moments
        "activations": activations / GIB,
        "logits_and_loss": tokens * shape.vocab * LOGIT_BYTES / GIB,
        "judge": _local_judge_gib(cfg, dtype_bytes),
    }
    parts["context"] = CONTEXT_GIB
    parts["total"] = sum(parts.values()) * FRAGMENTATION
    return parts


def _local_judge_gib(cfg: RunConfig, dtype_bytes: int) -> float:
    """A transformers judge loaded in the training process: weights plus the KV cache of one batch of prompts."""
    if cfg.judge.backend != "transformers" or not cfg.judge.model:
        return 0.0
    shape = model_shape(cfg.judge.model)
    if shape is None:
        return 0.0
    prompt_tokens = cfg.judge.max_answer_chars // 3 + 300  # the answer (about 3+ characters a token) + template
    return (shape.params * dtype_bytes + cfg.judge.batch_size * prompt_tokens * shape.kv_bytes_per_token()) / GIB


def vllm_judge_kv_gib(cfg: RunConfig, device_gib: float, *, dtype_bytes: int = 2) -> tuple[float, float] | None:
    """(KV cache GiB vLLM would have, GiB one judge.max_model_len sequence needs) for the offline vLLM judge on
    one card of device_gib (split over tensor_parallel_size cards), or None when the judge's shape is unknown."""
    shape = model_shape(cfg.judge.model or "")
    if shape is None:
        return None
    tp = cfg.judge.tensor_parallel_size
    budget = device_gib * cfg.judge.gpu_memory_utilization
    weights = shape.params * dtype_bytes / GIB / tp
    free = budget - weights - 2.0  # vLLM's profiling run's activations and CUDA graphs, about 2 GiB (judgment)
    need = cfg.judge.max_model_len * shape.kv_bytes_per_token(dtype_bytes) / GIB / tp
    return free, need


def memory_problem(cfg: RunConfig, device_gib: float | None = None) -> str | None:
    """Why the run cannot fit the card (device_gib, default model.device_memory_gib), in one line, or None."""
    device_gib = device_gib or cfg.model.device_memory_gib
    if device_gib is None:
        return None
    peak = training_peak(cfg)
    if peak is not None and peak["total"] > device_gib:
        largest = sorted(((v, k) for k, v in peak.items() if k != "total"), reverse=True)[:3]
        parts = ", ".join(f"{k} {v:.1f}" for v, k in largest)
        return (
            f"training {cfg.model.name_or_path} needs about {peak['total']:.1f} GiB at micro-batch "
            f"{cfg.train.micro_batch_size} x {cfg.model.max_length} tokens ({parts} GiB), more than the "
            f"{device_gib:g} GiB card: set train.gradient_checkpointing=true or lower train.micro_batch_size "
            f"or model.max_length (docs/training.md, Memory)"
        )
    if cfg.judge.backend == "vllm":
        kv = vllm_judge_kv_gib(cfg, device_gib)
        if kv is not None and kv[0] < kv[1]:
            return (
                f"the vLLM judge {cfg.judge.model} leaves {max(kv[0], 0):.1f} GiB for its KV cache on a "
                f"{device_gib:g} GiB card (gpu_memory_utilization {cfg.judge.gpu_memory_utilization}, tensor "
                f"parallel {cfg.judge.tensor_parallel_size}) but one judge.max_model_len = "
                f"{cfg.judge.max_model_len} sequence needs {kv[1]:.1f} GiB: lower judge.max_model_len or raise "
                "judge.tensor_parallel_size"
            )
    return None


def device_gib_of(total_bytes: int) -> float:
    """A card's memory in GiB as torch reports it (total_memory), rounded down to 0.1."""
    return math.floor(total_bytes / GIB * 10) / 10


def check_found_device(cfg: RunConfig, device: Any) -> None:
    """Refuse, before the model loads, a run whose estimate does not fit the CUDA device training found."""
    if getattr(device, "type", None) != "cuda":
        return
    import torch

    from canary_lib.config_base import ConfigError

    total = torch.cuda.get_device_properties(device).total_memory
    if problem := memory_problem(cfg, device_gib_of(total)):
        raise ConfigError(f"{torch.cuda.get_device_name(device)}: {problem}")
