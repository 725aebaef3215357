"""Loading the base model and tokenizer, device/dtype choice, and the rs-LoRA adapter of the paper.

    model, tokenizer = load_model_and_tokenizer(cfg)        # cfg: RunConfig
    model = add_rslora(model, cfg.lora, seed=cfg.seed)      # peft model, only the LoRA weights train

`cfg.model.name_or_path` is a Hugging Face id, a local directory, or "organism" (the CPU model organism,
built and cached by canary_lib.organism). All of them go through the same `from_pretrained` path.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from canary_lib.config_schema import LoraSettings, ModelConfig, RunConfig
from canary_lib.errors import CanaryError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

CUDNN_ATTENTION = False
"""Let SDPA pick its cuDNN backend inside `attention_kernels` (off; benchmarks/gpu_bench.py turns it on to compare)."""


@contextmanager
def attention_kernels() -> Iterator[None]:
    """Scaled dot-product attention without its cuDNN backend (flash, memory-efficient and math stay allowed).

    On an H100, PyTorch prefers cuDNN attention, which builds a cuDNN graph for every new shape: every decode
    step has a new key length and every padded training micro-batch a new width, so the graphs are built over
    and over (about 60 ms each; the first canary evaluation took 30.8 s against 15.6 s for the same decode once
    the graphs existed; benchmarks/README.md). The other backends need no per-shape set-up.
    """
    if CUDNN_ATTENTION:
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
        yield


def base_dtype(model: Any) -> torch.dtype:
    """The dtype of the frozen base weights (a peft model's LoRA weights may be float32 on a bf16 base)."""
    floating = [p for p in model.parameters() if p.is_floating_point()]
    return next((p.dtype for p in floating if not p.requires_grad), floating[0].dtype)


def mixed_precision(model: Any, enabled: bool = True) -> AbstractContextManager:
    """bf16 autocast when the base weights are bf16, else nothing.

    peft keeps the LoRA weights in float32 on a bf16 base (master weights for the optimizer). Without autocast
    every LoRA projection casts its input to float32 and runs float32 matrix products: 18% of an H100 step's
    GPU time for Qwen2.5-7B, plus the casts (benchmarks/README.md). Under autocast they run in bf16 and the
    weights stay float32, as transformers' Trainer does with `bf16=True`. float16 bases are left alone (they
    would need loss scaling); float32 models (the CPU organism) are unchanged.
    """
    if not enabled or base_dtype(model) != torch.bfloat16:
        return nullcontext()
    device = next(model.parameters()).device
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def resolve_model_path(cfg: RunConfig) -> str:
    """The directory or hub id to load: "organism" is built (or reused from the cache) first."""
    if cfg.model.name_or_path == "organism":
        from canary_lib.organism import ensure_base_model  # heavy, and only needed for the organism profile

        return str(ensure_base_model(cfg))
    return cfg.model.name_or_path


class ModelSetupError(CanaryError, ValueError):
    """The model cannot be placed or found as configured (device, path, LoRA target modules)."""


def choose_device(model_cfg: ModelConfig) -> torch.device:
    """cuda when available (or as configured), else cpu."""
    if model_cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(model_cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelSetupError(f"model.device is {model_cfg.device!r} but no CUDA device is available (use auto or cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ModelSetupError(
            f"model.device is {model_cfg.device!r} but only {torch.cuda.device_count()} CUDA device(s) are visible"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ModelSetupError("model.device is 'mps' but no MPS device is available (use auto or cpu)")
    return device


def check_model_source(model_cfg: ModelConfig) -> None:
    """Refuse, before anything loads, a device that is not there or a local model path that does not exist
    (transformers would read the path as a hub id and answer "Repo id must be in the form ...")."""
    choose_device(model_cfg)
    name = model_cfg.name_or_path
    if name == "organism":
        return
    path = Path(name).expanduser()
    looks_local = name.startswith(("/", ".", "~")) or name.count("/") > 1 or path.exists()
    if looks_local and not path.is_dir():
        raise ModelSetupError(
            f"model.name_or_path {name!r}: no model directory there "
            f"({'it is a file' if path.exists() else 'not found'})"
        )


def choose_dtype(model_cfg: ModelConfig, device: torch.device) -> torch.dtype:
    """auto: bfloat16 on a GPU that supports it, float32 otherwise (CPU, older GPUs)."""
    if model_cfg.dtype != "auto":
        return _DTYPES[model_cfg.dtype]
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_tokenizer(path: str, model_cfg: ModelConfig) -> Any:
    """The model's own tokenizer; it must carry a chat template (training and canaries use it)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        path, revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code
    )
    if not tokenizer.chat_template:
        raise ValueError(f"{path}: the tokenizer has no chat template; an instruction-tuned model is required")
    if tokenizer.pad_token is None:  # only used for padding, which is masked out of attention and loss
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_pretrained(path: str, model_cfg: ModelConfig) -> tuple[Any, Any]:
    """A causal LM from `path` on model_cfg's device and dtype, and its tokenizer (the base model, a local judge)."""
    from transformers import AutoModelForCausalLM

    device = choose_device(model_cfg)
    tokenizer = load_tokenizer(path, model_cfg)
    model = AutoModelForCausalLM.from_pretrained(
        path,
        dtype=choose_dtype(model_cfg, device),
        revision=model_cfg.revision,
        trust_remote_code=model_cfg.trust_remote_code,
    ).to(device)
    return model, tokenizer


def load_model_and_tokenizer(cfg: RunConfig) -> tuple[Any, Any]:
    """Load the base causal LM (on the chosen device and dtype) and its tokenizer.

    Args:
        cfg: The run configuration (its `model` section, and the organism section for "organism").

    Returns:
        (model, tokenizer); the model is in train mode with gradient checkpointing if configured.
    """
    pinned = cfg.model.cpu_numerics == "pinned"
    if pinned or cfg.model.name_or_path == "organism":  # native organism runs too: the same bits however started
        from canary_lib.numerics import PINNED_THREADS, check_cpu_numerics

        torch.set_num_threads(PINNED_THREADS)
        if pinned:
            check_cpu_numerics()
    model, tokenizer = load_pretrained(resolve_model_path(cfg), cfg.model)
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model, tokenizer


def lora_config(lora: LoraSettings) -> Any:
    """peft LoraConfig of the paper: rs-LoRA on the given projections, no bias, nothing else trainable.

    No `modules_to_save`, so the saved adapter holds LoRA matrices only and vLLM can load it.
    """
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        use_rslora=lora.use_rslora,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def add_rslora(model: Any, lora: LoraSettings, seed: int) -> Any:
    """Wrap `model` with a freshly initialised, seeded LoRA adapter (A: Kaiming-uniform, B: zeros).

    The initialisation draws from a forked torch RNG seeded with `seed`, so it is reproducible and does not
    disturb the caller's random state. Adapter weights stay in float32 even on a bf16 base model.
    """
    from peft import get_peft_model

    names = [name for name, _ in model.named_modules()]
    missing = [m for m in lora.target_modules if not any(n == m or n.endswith("." + m) for n in names)]
    if missing:  # peft raises only if *no* module matches; a typo in one name must not pass silently
        raise ModelSetupError(f"lora.target_modules {missing} match no module of the model")
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return get_peft_model(model, lora_config(lora), autocast_adapter_dtype=True)
