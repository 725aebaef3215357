"""Safe data (D_S): the benign subset of WildGuardMix (`allenai/wildguardmix`, config `wildguardtrain`).

Benign = `prompt_harm_label == "unharmful"` with a non-empty `response`, and the response not labelled harmful.
Refusals (`response_refusal_label == "refusal"`) are kept unless `drop_refusals` (docs/data.md explains the
choice). Sources: `hf:allenai/wildguardmix` (gated: a token in the variable named by `data.hf_token_env`), a
local parquet / JSONL / CSV with the WildGuardMix columns (offline clusters), or a chat JSONL of already-selected
safe examples (`{"messages": [...]}` lines, used as is).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from canary_lib.chat import validate_messages
from canary_lib.data.download import read_source_rows
from canary_lib.data.errors import DataError
from canary_lib.types import Conversation

HF_REPO = "allenai/wildguardmix"
HF_DEFAULT_CONFIG = "wildguardtrain"
REQUIRED_COLUMNS = ("prompt", "response", "prompt_harm_label")


@dataclass
class SafeData:
    examples: list[Conversation]
    info: dict[str, Any] = field(default_factory=dict)
    """source, revision, counts of every filter step."""


def _label(value: Any) -> str | None:
    return value.strip().lower() if isinstance(value, str) and value.strip() else None


def select_benign(
    rows: Sequence[dict], drop_refusals: bool, source: str = "source", what: str = "data.safe_source"
) -> tuple[list[Conversation], dict[str, int]]:
    """Keep unharmful prompts with a (not harmful) response; optionally drop refusals.

    Returns:
        The chats ([user, assistant]) in source order, and counts of each filter step.

    Raises:
        DataError: missing columns, or no benign rows left.
    """
    columns = set(rows[0]) if rows else set()
    needed = REQUIRED_COLUMNS + (("response_refusal_label",) if drop_refusals else ())
    missing = [c for c in needed if c not in columns]
    if missing:
        raise DataError(
            f"{what}: {source}: missing column(s) {missing}; found {sorted(columns)}. Expected the "
            f"WildGuardMix columns prompt, response, prompt_harm_label, response_refusal_label, "
            f"response_harm_label (or chat JSONL lines with 'messages')."
        )
    counts = {
        "rows": len(rows),
        "unharmful_prompt": 0,
        "with_response": 0,
        "harmful_response_dropped": 0,
        "refusals": 0,
        "refusals_dropped": 0,
        "selected": 0,
    }
    chats: list[Conversation] = []
    for row in rows:
        if _label(row.get("prompt_harm_label")) != "unharmful":
            continue
        counts["unharmful_prompt"] += 1
        prompt, response = row.get("prompt"), row.get("response")
        if not isinstance(prompt, str) or not prompt.strip() or not isinstance(response, str) or not response.strip():
            continue
        counts["with_response"] += 1
        if _label(row.get("response_harm_label")) == "harmful":
            counts["harmful_response_dropped"] += 1
            continue
        if _label(row.get("response_refusal_label")) == "refusal":
            counts["refusals"] += 1
            if drop_refusals:
                counts["refusals_dropped"] += 1
                continue
        chats.append([{"role": "user", "content": prompt}, {"role": "assistant", "content": response}])
    counts["selected"] = len(chats)
    if not chats:
        raise DataError(
            f"{what}: {source}: no benign rows (prompt_harm_label 'unharmful' with a response"
            f"{', not a refusal' if drop_refusals else ''}) among {len(rows)} rows; check the file and "
            f"its labels"
        )
    return chats, counts


def load_safe(
    source: str,
    drop_refusals: bool = False,
    max_examples: int | None = None,
    seed: int = 0,
    token_env: str = "HF_TOKEN",
    what: str = "data.safe_source",
) -> SafeData:
    """Load the benign WildGuardMix subset (see the module docstring), in a seeded shuffled order.

    Args:
        source: `hf:allenai/wildguardmix[?config=..&revision=..]`, a local table, or a chat JSONL.
        drop_refusals: drop responses labelled as refusals.
        max_examples: keep only the first N after the shuffle (None: all).
        seed: the shuffle seed (`numpy.random.default_rng(seed)`).
        token_env: environment variable holding the Hugging Face token (the dataset is gated).

    Raises:
        DataError: gated dataset without a token, missing file or columns, an empty selection.
    """
    rows, info = read_source_rows(
        source, default_config=HF_DEFAULT_CONFIG, token_env=token_env, gated_repos=(HF_REPO,), what=what
    )
    if "messages" in rows[0]:
        chats = [validate_messages(r.get("messages"), f"{what}: {source} row {i}") for i, r in enumerate(rows)]
        counts = {"rows": len(rows), "selected": len(chats), "format": "chat"}  # type: ignore[dict-item]
    else:
        chats, counts = select_benign(rows, drop_refusals, source, what)
    order = np.random.default_rng(seed).permutation(len(chats))
    chats = [chats[i] for i in order[:max_examples]]
    info.update(
        counts=counts, n_examples=len(chats), drop_refusals=drop_refusals, max_examples=max_examples, shuffle_seed=seed
    )
    return SafeData(chats, info)
