"""benchmarks/gpu_bench.py: timed optimizer steps of the package's train_step and of the references a user would
pick (transformers Trainer, TRL SFTTrainer), on the same model and batches."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _gpu_env import BenchError
from _gpu_model import FlopCounts, ragged_batches, sync_device


def summarize_steps(
    step_seconds: Sequence[float],
    *,
    tokens: int,
    supervised: int,
    flops: FlopCounts,
    peak_flops: float,
    peak_mem_gib: float | None,
    extra: dict | None = None,
) -> dict:
    """The per-trainer figures from timed step durations."""
    median = statistics.median(step_seconds)
    return {
        "s_per_step": median,
        "s_per_step_min": min(step_seconds),
        "s_per_step_max": max(step_seconds),
        "step_seconds": list(step_seconds),
        "tokens_per_s": tokens / median,
        "supervised_tokens_per_s": supervised / median,
        "peak_mem_gib": peak_mem_gib,
        "mfu": flops.model_flops(tokens) / median / peak_flops,
        "mfu_frozen": flops.frozen_flops(tokens) / median / peak_flops,
        **(extra or {}),
    }


def time_package(
    model: Any, cfg: Any, pool: list, *, warmup: int, timed: int, device: Any, autocast: bool = True
) -> tuple[list[float], list[float]]:
    """Warm-up then timed optimizer steps of canary_lib.train.train_step, as train_from_config calls it
    (`make_optimizer`; `autocast` is train.autocast, False for the package before it used autocast)."""
    from canary_lib.train import make_optimizer, train_step

    optimizer = make_optimizer(model, cfg.train)
    model.train()
    bs = cfg.train.batch_size
    times, losses = [], []
    for step in range(warmup + timed):
        batch = [pool[(step * bs + i) % len(pool)] for i in range(bs)]
        sync_device(device)
        start = time.perf_counter()
        loss = train_step(
            model,
            optimizer,
            batch,
            lr=cfg.train.lr,
            micro_batch_size=cfg.train.micro_batch_size,
            pad_token_id=0,
            max_grad_norm=cfg.train.max_grad_norm,
            autocast=autocast,
        )
        sync_device(device)
        if step >= warmup:
            times.append(time.perf_counter() - start)
        losses.append(loss)
    del optimizer
    model.zero_grad(set_to_none=True)
    return times, losses


def ragged_steps(
    measure: Callable[..., dict], *, pool_size: int, seq_len: int, vocab: int, prompt_fraction: float
) -> dict:
    """The package's steps on examples of mixed lengths, without cuDNN attention (the package's choice,
    canary_lib.models.attention_kernels) and with it: each padded micro-batch has a new width, so a backend
    with per-shape set-up pays it again and again. The same examples for both."""
    import canary_lib.models as models

    batches = ragged_batches(pool_size, seq_len, vocab, prompt_fraction)
    out = {"lengths": [min(len(ex.input_ids) for ex in batches), max(len(ex.input_ids) for ex in batches)]}
    # tokens/s and MFU of `measure` assume full-length examples: only the step times compare here
    dropped = ("tokens_per_s", "supervised_tokens_per_s", "mfu", "mfu_frozen")
    out["without_cudnn"] = measure("package, ragged lengths, no cuDNN attention", batches=batches)
    models.CUDNN_ATTENTION = True
    try:
        out["with_cudnn"] = measure("package, ragged lengths, cuDNN attention allowed", batches=batches)
    finally:
        models.CUDNN_ATTENTION = False
    for key in ("without_cudnn", "with_cudnn"):
        out[key] = {k: v for k, v in out[key].items() if k not in dropped}
    return out


def _step_clock(device: Any) -> Any:
    """A TrainerCallback recording a synchronised clock at every optimizer step's end."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
            sync_device(device)
            self.ends.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
            sync_device(device)
            self.ends.append(time.perf_counter())

    return StepClock()


def time_reference(
    kind: str,
    model: Any,
    tokenizer: Any,
    cfg: Any,
    pool: list,
    *,
    warmup: int,
    timed: int,
    device: Any,
    workdir: Path,
    bf16: bool | None = None,
) -> tuple[list[float], dict]:
    """The same steps through transformers.Trainer ("trainer") or trl.SFTTrainer ("sft").

    Each step's time is the gap between consecutive `on_step_end` callbacks (data loading, 4 micro-batches,
    clipping, optimizer step, scheduler): the first `warmup` gaps (and the set-up before step 0) are dropped.

    Returns:
        (timed step durations, facts about the run: trainer class, optimizer, bf16 autocast, mean loss).
    """
    common = dict(
        output_dir=str(workdir / f"ref-{kind}"),
        per_device_train_batch_size=cfg.train.micro_batch_size,
        gradient_accumulation_steps=cfg.train.batch_size // cfg.train.micro_batch_size,
        max_steps=warmup + timed,
        learning_rate=cfg.train.lr,
        weight_decay=cfg.train.weight_decay,
        max_grad_norm=cfg.train.max_grad_norm or 0.0,
        lr_scheduler_type="constant",
        warmup_steps=0,
        logging_steps=10_000,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        bf16=device.type == "cuda" if bf16 is None else bf16,  # a user's choice on a GPU
        use_cpu=device.type == "cpu",
        gradient_checkpointing=False,  # as the package (train.gradient_checkpointing: false); SFTConfig defaults True
        dataloader_num_workers=0,
        dataloader_pin_memory=device.type == "cuda",
        seed=0,
    )
    clock = _step_clock(device)
    saved = _snapshot_forwards(model)
    if kind == "trainer":
        from transformers import Trainer, TrainingArguments, default_data_collator

        rows = [
            {"input_ids": ex.input_ids, "attention_mask": [1] * len(ex.input_ids), "labels": ex.labels} for ex in pool
        ]
        trainer = Trainer(
            model=model,
            args=TrainingArguments(**common, remove_unused_columns=False),
            train_dataset=rows,
            data_collator=default_data_collator,
            callbacks=[clock],
        )
    elif kind == "sft":
        # Pre-tokenized rows with labels (prompt -100). The explicit fingerprint skips datasets' dill hashing of
        # the table, which failed with carried wheels (PicklingError on a pyarrow type) in a simulated GPU image.
        import pyarrow as pa
        from datasets import Dataset
        from datasets.table import InMemoryTable
        from trl import SFTConfig, SFTTrainer

        table = pa.Table.from_pylist([{"input_ids": ex.input_ids, "labels": ex.labels} for ex in pool])
        args = SFTConfig(**common, dataset_kwargs={"skip_prepare_dataset": True}, max_length=None, packing=False)
        dataset = Dataset(InMemoryTable(table), fingerprint="gpu-bench")
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=[clock]
        )
    else:
        raise BenchError(f"unknown reference {kind!r}")
    model.train()
    info = {
        "trainer": type(trainer).__name__,
        "optim": str(getattr(trainer.args.optim, "value", trainer.args.optim)),
        "bf16_autocast": bool(trainer.args.bf16),
    }
    try:
        info["train_loss"] = float(trainer.train().training_loss)
    finally:
        _release_trainer(trainer, model, saved)
    gaps = [b - a for a, b in zip(clock.ends, clock.ends[1:])]
    if len(gaps) != warmup + timed:
        raise RuntimeError(f"{kind}: expected {warmup + timed} optimizer steps, the callback saw {len(gaps)}")
    return gaps[warmup:], info


def _forward_owners(model: Any) -> list[Any]:
    return [model, model.get_base_model()] if hasattr(model, "get_base_model") else [model]


def _snapshot_forwards(model: Any) -> list[tuple[Any, Any]]:
    """The instance-level `forward` of the model and its base model (None: the class's), to undo patches."""
    return [(owner, owner.__dict__.get("forward")) for owner in _forward_owners(model)]


def _release_trainer(trainer: Any, model: Any, saved: list[tuple[Any, Any]]) -> None:
    """Free the reference's optimizer and undo its patches of `forward` (accelerate's autocast wrapper, TRL's
    fused LM head), so the package's later steps and the canary evaluation run the model as the package leaves it."""
    import gc

    import torch

    trainer.accelerator.free_memory()
    trainer.optimizer = trainer.lr_scheduler = None
    for owner, forward in saved:
        owner.__dict__.pop("_original_forward", None)
        if forward is None:
            owner.__dict__.pop("forward", None)
        else:
            owner.forward = forward
    model.zero_grad(set_to_none=True)
    del trainer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
