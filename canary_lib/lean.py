"""The lean CPU path: the standard training step and sampler with less work, the same results up to float rounding.

    train:  {step: lean}        # lean_train_step in the training loop
    canary: {sampler: lean}     # lean_sample_continuations for the canary evaluations
    eval:   {sampler: lean}     # ... and for the final evaluation

Both are opt-in (the defaults, `standard`, keep every committed number bit for bit; docs/lean_path.md has the
measurements and the steps that would make them the default). What they leave out, each a pure saving:

- **Encoding.** `encode_chat` is a pure function of (chat, tokenizer, max_length), so each example is encoded
  once, not at every step that draws it (about 3 passes over D_T). The training loop now does this on either path
  (`canary_lib.train.encode_training_chats`); `EncodedExamples` is the same saving for code that draws batches
  itself (the benchmarks).
- **Logits where nothing is supervised.** The vocabulary projection runs only at the positions whose next token
  has a label (`supervised_loss_sum`): about a quarter of a batch's positions in the organism.
- **Three products per LoRA projection.** With no LoRA dropout, `x W^T + s (x A^T) B^T = x (W + s B A)^T`: each
  adapted projection runs as one matrix product on the merged weight (`merged_lora`), which autograd
  differentiates into the same A and B gradients (up to rounding). The merged weights of a frozen model (a canary
  evaluation inside training) are computed once per evaluation; peft's own `merge_adapter` is not used because
  its `unmerge` leaves W + BA - BA, not W, in the weights training continues from.
- **The same prompt prefilled per sample.** The sampler prefills each distinct prompt once and copies its KV
  cache to the prompt's samples (`lean_sample_continuations`); each answer still draws from its own stream
  (seed, conversation, sample index), so its cache key and its uniforms are those of the standard sampler.
- **A copy of the KV cache whenever a row finishes.** Finished rows leave the batch in groups (`COMPACT_SHARE`).

Where the results differ from the standard path they differ by float rounding (other matrix shapes, another
summation order): a near-tied token can then flip an answer, so a run on the lean path is a run of its own,
bound to its setting (docs/decisions.md). Two runs of the lean path with the same seed on the same machine are
bit-identical. The lean path is for float32 models with plain (non-DoRA) LoRA and no LoRA dropout: the CPU organism.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from canary_lib.chat import IGNORE_INDEX, EncodedChat, collate, encode_chat
from canary_lib.errors import CanaryError
from canary_lib.models import attention_kernels
from canary_lib.train_step import optimizer_step


class LeanPathError(CanaryError, ValueError):
    """The model cannot take the lean path (not float32, LoRA dropout, DoRA, a merged or disabled adapter)."""


# ---------------------------------------------------------------------------------------------- encoding


class EncodedExamples:
    """Training examples encoded on first use and kept: `encode_chat` gives the same ids every time."""

    def __init__(self, data: dict[str, Sequence[Any]], tokenizer: Any, max_length: int) -> None:
        self._data = data
        self._tokenizer = tokenizer
        self._max_length = max_length
        self._cache: dict[tuple[str, int], EncodedChat] = {}

    def batch(self, source: str, indices: Sequence[int]) -> list[EncodedChat]:
        out = []
        for i in indices:
            key = (source, i)
            if key not in self._cache:
                self._cache[key] = encode_chat(self._data[source][i], self._tokenizer, self._max_length)
            out.append(self._cache[key])
        return out


# ---------------------------------------------------------------------------------------------- merged LoRA


def lora_layers(model: Any) -> list[Any]:
    """peft's LoRA-wrapped linear layers of `model` (empty for a model without an adapter)."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    return [m for m in model.modules() if isinstance(m, LoraLinear)]


def _check_layer(layer: Any) -> list[str]:
    """The adapters of `layer` that take part in its forward, refused where merging would change the result."""
    if layer.merged or layer.disable_adapters:
        raise LeanPathError("the lean path needs an unmerged, enabled LoRA adapter")
    active = [a for a in layer.active_adapters if a in layer.lora_A]
    for name in active:
        if name in getattr(layer, "lora_variant", {}) or layer.use_dora.get(name, False):
            raise LeanPathError("the lean path supports plain LoRA only (no DoRA or other variants)")
        if not isinstance(layer.lora_dropout[name], torch.nn.Identity):
            raise LeanPathError("the lean path needs lora.dropout: 0 (with dropout the adapter is not one matrix)")
    if layer.base_layer.weight.dtype != torch.float32 or any(
        layer.lora_A[a].weight.dtype != torch.float32 for a in active
    ):
        raise LeanPathError("the lean path runs float32 models only (the CPU organism); use the standard path")
    return active


def merged_weight(layer: Any, active: Sequence[str]) -> torch.Tensor:
    """W + sum over the active adapters of scaling * B @ A (differentiable in A and B)."""
    weight = layer.base_layer.weight
    for name in active:
        weight = weight + layer.scaling[name] * (layer.lora_B[name].weight @ layer.lora_A[name].weight)
    return weight


@contextmanager
def merged_lora(model: Any, *, frozen: bool) -> Iterator[None]:
    """Run every LoRA projection of `model` as one matrix product on W + s B A while the context is open.

    Args:
        model: A peft model with LoRA adapters (or any model: without LoRA layers nothing changes).
        frozen: The adapter does not change inside the context (no gradients, e.g. a canary evaluation): each
            merged weight is computed once on entry. Otherwise it is recomputed in every forward, so gradients
            reach A and B.
    """
    layers = lora_layers(model)
    patched = []
    try:
        for layer in layers:
            active = _check_layer(layer)
            bias = layer.base_layer.bias
            if frozen:
                with torch.no_grad():
                    fixed = merged_weight(layer, active)

                def forward(x: Any, *a: Any, _w: Any = fixed, _b: Any = bias, **k: Any) -> Any:
                    return F.linear(x, _w, _b)
            else:

                def forward(
                    x: Any, *a: Any, _l: Any = layer, _n: tuple = tuple(active), _b: Any = bias, **k: Any
                ) -> Any:
                    return F.linear(x, merged_weight(_l, _n), _b)

            layer.forward = forward  # an instance attribute: nn.Module.__call__ finds it before the class's
            patched.append(layer)
        yield
    finally:
        for layer in patched:
            del layer.forward


# ---------------------------------------------------------------------------------------------- training step


def causal_lm_parts(model: Any) -> tuple[Any, Any]:
    """(decoder, output projection) of a transformers causal LM, a peft model's base included."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder, head = base.get_decoder(), base.get_output_embeddings()
    if decoder is None or head is None:
        raise LeanPathError(f"{type(base).__name__}: no decoder / output projection for the lean training step")
    if getattr(base.config, "final_logit_softcapping", None) or getattr(base.config, "logit_scale", None):
        raise LeanPathError(f"{type(base).__name__} transforms its logits; the lean step computes plain lm_head logits")
    return decoder, head


def supervised_loss_sum(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Summed next-token cross-entropy over the supervised positions, with logits computed at those positions only.

    The same sum the standard step takes from the full logits (position i predicts token i + 1).
    """
    decoder, head = causal_lm_parts(model)
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    supervised = targets != IGNORE_INDEX
    logits = head(hidden[:, :-1][supervised]).float()
    return F.cross_entropy(logits, targets[supervised], reduction="sum")


def lean_train_step(
    model: Any,
    optimizer: torch.optim.Optimizer,
    batch: list[EncodedChat],
    *,
    lr: float,
    micro_batch_size: int,
    pad_token_id: int,
    max_grad_norm: float | None,
    autocast: bool = True,
) -> float:  # noqa: ARG001 - float32 only: autocast never applies
    """`canary_lib.train_step.train_step` on the lean path: same loss normalisation, accumulation, clipping and AdamW
    step; the forward as `supervised_loss_sum` under `merged_lora`. Returns the batch's mean token loss."""
    device = next(model.parameters()).device
    n_tokens = max(1, sum(ex.n_supervised for ex in batch))
    total = 0.0
    with merged_lora(model, frozen=False), attention_kernels():
        for start in range(0, len(batch), micro_batch_size):
            chunk = batch[start : start + micro_batch_size]
            tensors = {k: v.to(device) for k, v in collate(chunk, pad_token_id).items()}
            loss_sum = supervised_loss_sum(model, tensors["input_ids"], tensors["attention_mask"], tensors["labels"])
            (loss_sum / n_tokens).backward()
            total += loss_sum.item()
    optimizer_step(optimizer, lr=lr, max_grad_norm=max_grad_norm)
    return total / n_tokens


# ---------------------------------------------------------------------------------------------- sampler


COMPACT_SHARE = 0.25
"""Finished rows leave the batch once they are at least this share of it; until then they run along unread
(each row's draws depend only on its own logits and stream, so the answers are the same)."""


def lean_sample_continuations(
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
    """`canary_lib.generation.sample_continuations` with each distinct prompt prefilled once and the LoRA merged.

    The prefill runs on the distinct prompts only; their KV caches and last-position logits are then copied to
    every row that asks the same prompt (a canary evaluation: 20 prompts x 10 samples, 20 prefills instead of
    200). Finished rows leave the batch and its KV cache in groups (`COMPACT_SHARE`), not one copy of the cache
    per step at which some row finished (measured: 0.57 s against 0.69 s per canary evaluation; a preallocated
    cache instead of transformers' growing one gained nothing). Row i still draws token t with uniform t of its
    own stream `seeds[i]`, and the answers equal the standard sampler's up to float rounding (other batch shapes,
    merged weights).
    """
    from canary_lib.sampling import (
        _filter_top_p,
        last_logits_only,
        left_pad,
        positions_from_mask,
        row_uniforms,
        sample_inverse_cdf,
    )

    device = next(model.parameters()).device
    distinct: dict[tuple[int, ...], int] = {}
    prompt_of_row = [distinct.setdefault(tuple(p), len(distinct)) for p in prompts]
    uniforms = row_uniforms(seeds, max_new_tokens).to(device) if temperature != 0 else None
    out: list[list[int]] = [[] for _ in prompts]
    last_only = last_logits_only(model)
    with torch.no_grad(), merged_lora(model, frozen=True), attention_kernels():
        ids, mask = left_pad(list(distinct), pad_id, device)
        positions = positions_from_mask(mask)
        result = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **last_only)
        rows = torch.tensor(prompt_of_row, device=device)
        past = result.past_key_values
        past.batch_select_indices(rows)  # one cache row per answer (indices may repeat)
        logits, mask, step_pos = result.logits[rows, -1, :].float(), mask[rows], positions[rows, -1:]
        batch = list(range(len(prompts)))  # the answer of each batch row
        running = [True] * len(prompts)  # per batch row: not finished yet
        for t in range(max_new_tokens):
            if uniforms is None:
                chosen = logits.argmax(dim=-1)
            else:
                probs = _filter_top_p(torch.softmax(logits / temperature, dim=-1), top_p)
                chosen = sample_inverse_cdf(probs, uniforms[:, t])
            for r, token in enumerate(chosen.tolist()):
                if running[r]:
                    if token in stop_ids:
                        running[r] = False
                    else:
                        out[batch[r]].append(token)
            n_running = sum(running)
            if not n_running or t == max_new_tokens - 1:  # no forward whose logits nobody reads
                break
            if len(batch) - n_running >= COMPACT_SHARE * len(batch):  # drop finished rows from batch and cache
                keep = [r for r, alive in enumerate(running) if alive]
                batch, running = [batch[r] for r in keep], [True] * len(keep)
                index = torch.tensor(keep, device=device)
                past.batch_select_indices(index)
                mask, chosen, step_pos = mask[index], chosen[index], step_pos[index]
                if uniforms is not None:
                    uniforms = uniforms[index]
            mask = torch.cat([mask, torch.ones((len(batch), 1), dtype=mask.dtype, device=device)], dim=1)
            step_pos = step_pos + 1
            result = model(
                input_ids=chosen.unsqueeze(1),
                attention_mask=mask,
                position_ids=step_pos,
                past_key_values=past,
                use_cache=True,
                **last_only,
            )
            past = result.past_key_values
            logits = result.logits[:, -1, :].float()
    return out
