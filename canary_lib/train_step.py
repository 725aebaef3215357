"""One optimizer step of the training loop (the standard step) and the optimizer it updates.

    optimizer = make_optimizer(model, cfg.train)             # AdamW over the LoRA parameters
    loss = train_step(model, optimizer, batch, lr=lr, micro_batch_size=4, pad_token_id=pad, max_grad_norm=1.0)

`optimizer_step` is the update after the gradients are in, shared by this step and the lean one
(`canary_lib.lean.lean_train_step`). The loop that calls them is `canary_lib.train`; the loss normalisation and
accumulation are documented in docs/training.md.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from canary_lib.chat import IGNORE_INDEX, EncodedChat, collate
from canary_lib.config_schema import TrainSettings
from canary_lib.models import attention_kernels, mixed_precision


def make_optimizer(model: Any, settings: TrainSettings) -> torch.optim.Optimizer:
    """AdamW over the trainable (LoRA) parameters; the fused CUDA kernel on a GPU (one launch, not hundreds)."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = bool(params) and params[0].device.type == "cuda"
    return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay, fused=fused or None)


def train_step(
    model: Any,
    optimizer: torch.optim.Optimizer,
    batch: list[EncodedChat],
    *,
    lr: float,
    micro_batch_size: int,
    pad_token_id: int,
    max_grad_norm: float | None,
    autocast: bool = True,
) -> float:
    """One optimizer step on `batch`, accumulated over micro-batches; returns the batch's mean token loss.

    The loss is the mean over all supervised tokens of the whole batch (token sums of each micro-batch divided
    by the batch's token count), so the gradient equals that of one forward pass on the full batch. With
    `autocast`, a bf16 base model runs under bf16 autocast (`canary_lib.models.mixed_precision`).
    """
    device = next(model.parameters()).device
    n_tokens = max(1, sum(ex.n_supervised for ex in batch))
    total = 0.0
    for start in range(0, len(batch), micro_batch_size):
        tensors = {k: v.to(device) for k, v in collate(batch[start : start + micro_batch_size], pad_token_id).items()}
        with attention_kernels(), mixed_precision(model, autocast):
            logits = model(
                input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"], use_cache=False
            ).logits
            # next-token prediction: position i predicts token i + 1. Only supervised positions are upcast to
            # float32, which keeps memory small with a 152k vocabulary and long prompts.
            labels = tensors["labels"][:, 1:]
            supervised = labels != IGNORE_INDEX
            loss_sum = F.cross_entropy(logits[:, :-1][supervised].float(), labels[supervised], reduction="sum")
        (loss_sum / n_tokens).backward()
        total += loss_sum.item()
    optimizer_step(optimizer, lr=lr, max_grad_norm=max_grad_norm)
    return total / n_tokens


def optimizer_step(optimizer: torch.optim.Optimizer, *, lr: float, max_grad_norm: float | None) -> None:
    """The update after a step's gradients are in: clip, set this step's lr, step, clear (both step kinds)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
