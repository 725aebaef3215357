"""The token-level pieces both samplers share: the standard one (`canary_lib.generation.sample_continuations`)
and the lean one (`canary_lib.lean.lean_sample_continuations`), and the local judge's forward passes.

    ids, mask = left_pad(prompt_ids, pad_id, device); positions = positions_from_mask(mask)
    uniforms = row_uniforms(seeds, max_new_tokens)          # row i: its own CPU stream, the same on every device
    token = sample_inverse_cdf(_filter_top_p(probs, top_p), uniforms[:, t])

Torch is imported inside each function (importing this module costs nothing). The guarantees (row i's draws depend
only on its own logits and seed) are described in docs/evaluation.md.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any


def _filter_top_p(probs: Any, top_p: float) -> Any:
    """Zero the tail outside the smallest set of tokens whose probability reaches top_p (rows renormalised)."""
    import torch

    if top_p >= 1.0:
        return probs
    sorted_p, order = probs.sort(dim=-1, descending=True)
    before = sorted_p.cumsum(dim=-1) - sorted_p
    sorted_p = torch.where(before < top_p, sorted_p, torch.zeros_like(sorted_p))
    out = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return out / out.sum(dim=-1, keepdim=True)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: Any) -> tuple[Any, Any]:
    """(input_ids, attention_mask), left-padded to the longest row."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
            mask[i, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


def positions_from_mask(mask: Any) -> Any:
    """Position ids that ignore left padding (the model's own default would count the pads)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def last_logits_only(model: Any) -> dict[str, int]:
    """`{"logits_to_keep": 1}` when the model's forward takes it (most transformers causal LMs), else `{}`.

    Sampling and judging read only the last position's logits; without it a prefill computes the vocabulary
    projection at every prompt position (batch x prompt length x vocabulary: gigabytes for Qwen's 152k vocab).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        parameters = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - a forward without a signature
        return {}
    return {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}


def row_uniforms(seeds: Sequence[int], n: int) -> Any:
    """(len(seeds), n) float32 uniforms in (0, 1]: row i from a CPU torch.Generator seeded with seeds[i].

    Drawn on the CPU so the same seed gives the same numbers on every device; 1 - U[0, 1) so no value is 0.
    """
    import torch

    if not seeds:
        return torch.empty((0, n), dtype=torch.float32)
    return torch.stack([1.0 - torch.rand(n, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def sample_inverse_cdf(probs: Any, uniforms: Any) -> Any:
    """One token per row by inverse-CDF sampling: the first index whose cumulative mass reaches u * total.

    Exact for any non-negative row (normalised or not): with u in (0, 1] the target is in (0, total], so a
    zero-probability token is never chosen and an index always exists. One batched op, no per-row kernel, and
    row i's draw depends only on row i's probabilities and uniform (what makes answers batch-independent).
    """
    import torch

    cdf = probs.cumsum(dim=-1)
    target = uniforms.to(device=cdf.device, dtype=cdf.dtype) * cdf[:, -1]
    return torch.searchsorted(cdf, target.unsqueeze(1), right=False).squeeze(1)
