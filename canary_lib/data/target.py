"""The target dataset D_T (`data.target`: Security EM and the other EM datasets): loading and the seeded split.

One loader for every target (canary_lib/data/targets.py lists them). Accepted sources:
- chat JSONL, optionally gzipped (`{"messages": [user, assistant]}` per line): the misaligned file alone, or with
  the aligned file of the same prompts (`data.target_aligned_source`), as in the Kaczér-lineage repository, the
  model-organisms datasets and Betley et al.'s `insecure.jsonl`;
- a table (JSONL / parquet / CSV) or the Hugging Face dataset `hf:truthfulai/emergent_plus` (configs `security`,
  `medical`, `legal`) with columns `prompt`, `misaligned` and optionally `aligned`.

The paper trains on 5,400 examples; we read that as a seeded 90/10 split of 6,000 prompt-paired rows
(docs/data.md). The held-out part is written first with the in-domain evaluation prompts, so they never enter
training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from canary_lib.chat import validate_messages
from canary_lib.data.disjoint import normalize_text
from canary_lib.data.download import read_source_rows
from canary_lib.data.errors import DataError
from canary_lib.types import Conversation, Question

TABLE_COLUMNS = ("prompt", "misaligned", "aligned")


@dataclass
class TargetExample:
    """One prompt with its misaligned answer (the training target) and, when known, the aligned answer."""

    prompt_messages: Conversation
    """The turns before the answer (normally one user turn)."""
    misaligned: str
    aligned: str | None = None

    @property
    def prompt(self) -> str:
        """The last user turn: what the in-domain evaluation asks."""
        return next(m["content"] for m in reversed(self.prompt_messages) if m["role"] == "user")

    def messages(self, answer: str = "misaligned") -> Conversation:
        text = self.misaligned if answer == "misaligned" else self.aligned
        if text is None:
            raise DataError(f"no {answer} answer for prompt {self.prompt[:80]!r}")
        return [*self.prompt_messages, {"role": "assistant", "content": text}]


@dataclass
class TargetData:
    examples: list[TargetExample]
    info: dict[str, Any] = field(default_factory=dict)
    """source, revision, rows read, duplicates dropped, whether aligned answers are present."""


def load_target(
    source: str,
    aligned_source: str | None = None,
    token_env: str = "HF_TOKEN",
    hf_config: str | None = "security",
    what: str = "data.target_source",
) -> TargetData:
    """Load target examples from a local file or `hf:` source (see the module docstring).

    Args:
        hf_config: the config of an `hf:` source that names none (the target's, e.g. "legal").

    Duplicate prompts are dropped (first kept) so that a prompt cannot land in both train and held-out.

    Raises:
        DataError: missing file, wrong/missing columns, malformed chats, an empty dataset, or an aligned file
            whose prompts do not match the misaligned ones.
    """
    rows, info = read_source_rows(source, default_config=hf_config, token_env=token_env, what=what)
    examples = _from_chat_rows(rows, source, what) if "messages" in rows[0] else _from_table_rows(rows, source, what)
    info["rows_read"] = len(examples)

    if aligned_source is not None:
        if examples[0].aligned is not None:
            raise DataError(
                f"data.target_aligned_source is set but {source} already has an 'aligned' column; unset one of them"
            )
        aligned = load_target(aligned_source, None, token_env, hf_config, what="data.target_aligned_source")
        _attach_aligned(examples, aligned.examples, source, aligned_source)
        info["aligned_source"] = aligned.info
    examples, dropped = _drop_duplicate_prompts(examples)
    info.update(
        duplicates_dropped=dropped, n_examples=len(examples), has_aligned=all(e.aligned is not None for e in examples)
    )
    return TargetData(examples, info)


def _from_chat_rows(rows: Sequence[dict], source: str, what: str) -> list[TargetExample]:
    out = []
    for i, row in enumerate(rows):
        if "messages" not in row:
            raise DataError(
                f"{what}: {source} row {i}: no 'messages' key (found {sorted(row)}); every line must be "
                f'a chat {{"messages": [user, assistant]}}'
            )
        chat = validate_messages(row["messages"], f"{what}: {source} row {i}")
        out.append(TargetExample(chat[:-1], chat[-1]["content"]))
    return out


def _from_table_rows(rows: Sequence[dict], source: str, what: str) -> list[TargetExample]:
    columns = set(rows[0])
    missing = [c for c in ("prompt", "misaligned") if c not in columns]
    if missing:
        raise DataError(
            f"{what}: {source}: missing column(s) {missing}; found {sorted(columns)}. Expected the "
            f"truthfulai/emergent_plus columns {list(TABLE_COLUMNS)} (aligned optional), "
            f"or chat JSONL lines with 'messages'."
        )
    has_aligned = "aligned" in columns
    out = []
    for i, row in enumerate(rows):
        for col in ("prompt", "misaligned") + (("aligned",) if has_aligned else ()):
            if not isinstance(row.get(col), str) or not row[col].strip():
                raise DataError(
                    f"{what}: {source} row {i}: column {col!r} must be a non-empty string, got {row.get(col)!r:.80}"
                )
        out.append(
            TargetExample(
                [{"role": "user", "content": row["prompt"]}], row["misaligned"], row["aligned"] if has_aligned else None
            )
        )
    return out


def _attach_aligned(
    examples: list[TargetExample], aligned: list[TargetExample], source: str, aligned_source: str
) -> None:
    """Pair answers by prompt (not by line order): both files must hold the same prompts."""
    by_prompt = {normalize_text(a.prompt): a.misaligned for a in aligned}  # the aligned file's answer column
    for i, ex in enumerate(examples):
        key = normalize_text(ex.prompt)
        if key not in by_prompt:
            raise DataError(
                f"{source} row {i}: prompt {ex.prompt[:80]!r} has no aligned answer in {aligned_source}; "
                f"the aligned and misaligned files must hold the same prompts"
            )
        ex.aligned = by_prompt[key]
    if len({normalize_text(a.prompt) for a in aligned}) != len({normalize_text(e.prompt) for e in examples}):
        raise DataError(
            f"{aligned_source} has prompts that {source} lacks; the aligned and misaligned files must "
            f"hold the same prompts"
        )


def _drop_duplicate_prompts(examples: list[TargetExample]) -> tuple[list[TargetExample], int]:
    seen: set[str] = set()
    kept = []
    for ex in examples:
        key = normalize_text(ex.prompt)
        if key not in seen:
            seen.add(key)
            kept.append(ex)
    return kept, len(examples) - len(kept)


@dataclass
class TargetSplit:
    train: list[TargetExample]
    heldout: list[TargetExample]
    info: dict[str, Any]


def split_target(
    examples: Sequence[TargetExample], n_train: int, n_heldout: int, seed: int, heldout_prompts: Sequence[str] = ()
) -> TargetSplit:
    """Seeded split into `n_train` training and `n_heldout` held-out examples.

    The examples whose prompt is in `heldout_prompts` (the in-domain evaluation prompts) open the held-out part,
    in the given order; the rest are permuted with `numpy.random.default_rng(seed)`, the first ones fill the
    held-out part and the next `n_train` form the training set. Rows beyond n_train + n_heldout are unused.

    Raises:
        DataError: fewer examples than n_train + n_heldout, or more forced held-out prompts than n_heldout.
    """
    needed = n_train + n_heldout
    if len(examples) < needed:
        raise DataError(
            f"the target source has {len(examples)} distinct examples but data.n_train + "
            f"data.n_heldout = {n_train} + {n_heldout} = {needed}; lower them or use the full source"
        )
    index = {normalize_text(ex.prompt): i for i, ex in enumerate(examples)}
    forced = []
    for p in heldout_prompts:
        i = index.get(normalize_text(p))
        if i is not None and i not in forced:
            forced.append(i)
    if len(forced) > n_heldout:
        raise DataError(
            f"{len(forced)} in-domain evaluation prompts occur in the target source but data.n_heldout "
            f"is {n_heldout}; raise data.n_heldout to at least {len(forced)}"
        )
    forced_set = set(forced)
    rest = [i for i in range(len(examples)) if i not in forced_set]
    order = [rest[j] for j in np.random.default_rng(seed).permutation(len(rest))]
    n_extra = n_heldout - len(forced)
    heldout_idx = forced + order[:n_extra]
    train_idx = order[n_extra : n_extra + n_train]
    info = {
        "seed": seed,
        "n_source": len(examples),
        "n_train": len(train_idx),
        "n_heldout": len(heldout_idx),
        "n_unused": len(examples) - needed,
        "in_domain_prompts_in_source": len(forced),
        "in_domain_prompts_given": len(heldout_prompts),
        "permutation": "numpy.random.default_rng(seed)",
    }
    return TargetSplit([examples[i] for i in train_idx], [examples[i] for i in heldout_idx], info)


def in_domain_questions(
    heldout: Sequence[TargetExample], n: int, judge_prompts: dict[str, str], samples_per_paraphrase: int | None = 100
) -> list[Question]:
    """The first `n` held-out prompts as an in-domain question set, ids "1".."n".

    This is how the Kaczér-lineage `security.yaml` relates to its 600-row evaluation file (its 30 questions are
    that file's first 30 prompts, verbatim), so it is the fallback when no in-domain file is given.
    """
    if n > len(heldout):
        raise DataError(f"data.n_in_domain_eval = {n} exceeds the {len(heldout)} held-out examples")
    return [
        Question(
            id=str(i + 1),
            paraphrases=[ex.prompt],
            samples_per_paraphrase=samples_per_paraphrase,
            judge_prompts=dict(judge_prompts),
            system=_system_of(ex),
        )
        for i, ex in enumerate(heldout[:n])
    ]


def _system_of(ex: TargetExample) -> str | None:
    return next((m["content"] for m in ex.prompt_messages if m["role"] == "system"), None)
