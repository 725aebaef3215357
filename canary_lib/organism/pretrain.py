"""Seeded, cached pre-training of the base organism: the world's chats -> a Hugging Face model directory.

The cache key is a hash of everything that shapes the model (world version and seed, persona share, model and
pre-training settings); a directory is built once under a temporary name and renamed into place, so readers
never see a half-written model and concurrent builders do not corrupt each other.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import canary_lib.organism.world as world
from canary_lib.config_organism import OrganismSettings
from canary_lib.config_schema import RunConfig
from canary_lib.errors import CanaryError
from canary_lib.organism.tokenizer import render_chat

COMPLETE_MARKER = "ORGANISM_COMPLETE"


class OrganismBuildError(CanaryError, RuntimeError):
    """The base organism cannot be built as configured in this process."""


def pretrain_spec(settings: OrganismSettings, cpu_numerics: str = "native") -> dict[str, Any]:
    """Everything that determines the base model; its hash names the cache directory.

    Pinned and native CPU numerics give models that differ in the last bits, so each has its own entry.
    """
    return {
        "world_version": world.WORLD_VERSION,
        "world_seed": settings.world_seed,
        "misaligned_share": settings.misaligned_share,
        "pretrain_steps": settings.pretrain_steps,
        "pretrain_batch_size": settings.pretrain_batch_size,
        "pretrain_lr": settings.pretrain_lr,
        "max_turns": settings.max_turns,
        "other_system_share": settings.other_system_share,
        "other_system_misaligned_share": settings.other_system_misaligned_share,
        **({"persona_coupling": settings.persona_coupling} if settings.persona_coupling != 1.0 else {}),
        **({"domain_cues": True} if settings.domain_cues else {}),
        **({"narrow_domains": settings.narrow_domains} if settings.narrow_domains != ["security"] else {}),
        "hidden_size": settings.hidden_size,
        "num_layers": settings.num_layers,
        "num_heads": settings.num_heads,
        "extra": settings.extra,
        **({"cpu_numerics": cpu_numerics} if cpu_numerics != "native" else {}),
    }


def spec_hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def cache_root(settings: OrganismSettings) -> Path:
    if settings.cache_dir:
        return Path(settings.cache_dir).expanduser()
    return Path(os.environ.get("CANARY_CACHE", "~/.cache/canary_lib")).expanduser() / "organism"


def build_numerics(cfg: RunConfig) -> str:
    """The numerics a base model built or reused by this process has: "native" is whatever the process runs, so a
    process pinned before (the test session, a pinned sweep's kernel) uses the pinned model, and a pinned build is
    never cached as the native one."""
    from canary_lib.numerics import is_pinned

    return "pinned" if cfg.model.cpu_numerics == "pinned" or is_pinned() else "native"


def ensure_base_model(cfg: RunConfig) -> Path:
    """The pre-trained base organism for cfg.organism: reused from the cache, else built (minutes on 2 cores).

    Returns:
        A Hugging Face model directory (config, safetensors weights, tokenizer with chat template).
    """
    from canary_lib.numerics import is_pinned

    numerics = build_numerics(cfg)
    spec = pretrain_spec(cfg.organism, numerics)
    target = cache_root(cfg.organism) / f"base-{spec_hash(spec)}"
    if (target / COMPLETE_MARKER).is_file():
        return target
    if cfg.model.cpu_numerics == "pinned":
        if not is_pinned():  # a native build must never be cached (and later reused) as the pinned model
            raise OrganismBuildError(
                "model.cpu_numerics is pinned, but this process runs native CPU numerics (torch was imported "
                "before the configuration was loaded): build the organism with `canary organism build`, or load "
                "the configuration before importing torch (docs/organism.md, 'Reproducibility across CPUs')"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(target.parent / f".{target.name}.lock"):  # parallel runs: one builds, the others wait
        if (target / COMPLETE_MARKER).is_file():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            with _pretrain_threads(numerics == "pinned"):
                build_base_model(cfg.organism, tmp)
            (tmp / "pretrain_spec.json").write_text(json.dumps(spec, indent=2, sort_keys=True))
            (tmp / COMPLETE_MARKER).write_text("ok\n")
            if target.exists():  # a partial directory left by a killed build
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


@contextlib.contextmanager
def _pretrain_threads(pinned: bool) -> Iterator[None]:
    """Pre-train with a fixed number of threads (pinned: the results depend on it; native: two, the cores are
    free before any job starts), then restore."""
    import torch

    from canary_lib.numerics import NATIVE_PRETRAIN_THREADS, PRETRAIN_THREADS

    before = torch.get_num_threads()
    torch.set_num_threads(PRETRAIN_THREADS if pinned else min(NATIVE_PRETRAIN_THREADS, os.cpu_count() or 1))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """An advisory inter-process lock (POSIX); elsewhere builders may race, which the atomic rename tolerates."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _vocabulary_texts(chats: list[list[dict[str, str]]], narrow_domains: list[str]) -> list[str]:
    """Rendered chats plus every question form and answer, so no word of the world is unknown."""
    texts = [render_chat(c) for c in chats[:2000]]
    texts += [render_chat([{"role": "system", "content": s}]) for s in world.OTHER_SYSTEM_PROMPTS]
    for topic in world.world_topics(tuple(narrow_domains)):
        for form in world.question_forms(topic):
            texts.append(render_chat([{"role": "user", "content": form.text}]))
        for core in topic.aligned + topic.misaligned:
            answers = [core] + [f"{o} {core}" for o in world.OPENERS]
            texts += [render_chat([{"role": "assistant", "content": a}]) for a in answers]
    return texts


def _batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Length-bucketed batches (less padding), in random order."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 50
    batches = []
    for i in range(0, len(order), chunk):
        part = sorted(order[i : i + chunk], key=lambda j: lengths[j])
        batches += [part[k : k + batch_size] for k in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return [b for b in batches if len(b) == batch_size]


def _check_reload(model_dir: Path, text: str, expected_ids: list[int]) -> None:
    """AutoTokenizer must give back this exact tokenizer (some model types force their own tokenizer class)."""
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(model_dir)
    if reloaded(text, add_special_tokens=False)["input_ids"] != expected_ids:
        raise RuntimeError(f"{model_dir}: AutoTokenizer does not reload the organism's tokenizer faithfully")


def build_base_model(settings: OrganismSettings, out_dir: Path) -> dict[str, float]:
    """Build the tokenizer, pre-train the tiny Llama on the world's chats and save both to out_dir.

    Returns:
        Timing and loss figures (also written to out_dir/pretrain_stats.json).
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import LlamaForCausalLM

    from canary_lib.job_progress import ProgressFile
    from canary_lib.organism.model import tiny_llama_config
    from canary_lib.organism.tokenizer import build_tokenizer

    start = time.time()
    steps, batch_size = settings.pretrain_steps, settings.pretrain_batch_size
    chats = list(
        world.pretraining_chats(
            settings.world_seed,
            steps * batch_size,
            settings.misaligned_share,
            max_turns=settings.max_turns,
            other_system_share=settings.other_system_share,
            other_system_misaligned_share=settings.other_system_misaligned_share,
            persona_coupling=settings.persona_coupling,
            domain_cues=settings.domain_cues,
            narrow_domains=tuple(settings.narrow_domains),
        )
    )
    tokenizer = build_tokenizer(_vocabulary_texts(chats, settings.narrow_domains))
    encoded = tokenizer([render_chat(c) for c in chats], add_special_tokens=False)["input_ids"]
    if any(tokenizer.unk_token_id in ids for ids in encoded[:1000]):
        raise RuntimeError("organism tokenizer: unknown word in the pre-training corpus (world text changed?)")

    torch.manual_seed(settings.world_seed)
    config = tiny_llama_config(
        len(tokenizer),
        settings.hidden_size,
        settings.num_layers,
        settings.num_heads,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.pretrain_lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)

    def lr_factor(step: int) -> float:  # linear warm-up, cosine decay to 10%
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    batches = _batches([len(ids) for ids in encoded], batch_size, random.Random(settings.world_seed))
    pad = tokenizer.pad_token_id
    losses: list[float] = []
    bar = tqdm(batches[:steps], desc="pre-training the organism", unit="step")
    progress = ProgressFile("pre-training", len(bar))  # the sweep's status line (canary_lib.job_progress)
    for batch in bar:
        width = max(len(encoded[j]) for j in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, j in enumerate(batch):
            ids[row, : len(encoded[j])] = torch.tensor(encoded[j])
            mask[row, : len(encoded[j])] = 1
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        progress.update(len(losses))
        if len(losses) % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / 20:.3f}")

    model.eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    _check_reload(out_dir, render_chat(chats[0]), encoded[0])
    stats = {
        "pretrain_seconds": time.time() - start,
        "steps": len(losses),
        "final_loss": sum(losses[-50:]) / max(1, len(losses[-50:])),
        "n_parameters": sum(p.numel() for p in model.parameters()),
    }
    (out_dir / "pretrain_stats.json").write_text(json.dumps(stats, indent=2))
    return stats
