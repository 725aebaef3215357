"""Disjointness of canaries and evaluation prompts: exact and near-duplicate checks.

Two texts overlap when, after `normalize_text`, they are equal, or their word n-gram sets have a Jaccard
similarity >= `jaccard_threshold`, or the n-grams of the shorter one are mostly contained in the longer one
(containment >= `containment_threshold`; catches a canary pasted inside a longer templated eval prompt).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from canary_lib.data.errors import DataError
from canary_lib.types import Question

_NON_WORD = re.compile(r"[^\w]+")

DEFAULT_NGRAM = 3
DEFAULT_JACCARD = 0.5
DEFAULT_CONTAINMENT = 0.8


def normalize_text(text: str) -> str:
    """NFKC, case-folded, punctuation to spaces, whitespace collapsed: "Hey, I'm BORED!" -> "hey i m bored"."""
    text = unicodedata.normalize("NFKC", text).casefold().replace("_", " ")
    return " ".join(_NON_WORD.sub(" ", text).split())


def word_ngrams(text: str, n: int = DEFAULT_NGRAM) -> frozenset[tuple[str, ...]]:
    """Word n-grams of the normalized text; a text shorter than n words gives one n-gram (the whole text)."""
    words = normalize_text(text).split()
    if len(words) < n:
        return frozenset([tuple(words)]) if words else frozenset()
    return frozenset(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def containment(a: frozenset, b: frozenset) -> float:
    """Share of the smaller set found in the other one."""
    small = min(len(a), len(b))
    return len(a & b) / small if small else 0.0


@dataclass(frozen=True)
class Overlap:
    canary_id: str
    eval_set: str
    eval_id: str
    kind: str
    """"exact" or "near"."""
    jaccard: float
    containment: float
    canary_text: str
    eval_text: str

    def describe(self) -> str:
        return (
            f"canary {self.canary_id!r} vs {self.eval_set} {self.eval_id!r}: {self.kind} "
            f"(jaccard {self.jaccard:.2f}, containment {self.containment:.2f}): {self.canary_text[:70]!r}"
        )


def find_overlaps(
    canaries: Sequence[Question],
    eval_sets: Mapping[str, Sequence[Question]],
    ngram: int = DEFAULT_NGRAM,
    jaccard_threshold: float = DEFAULT_JACCARD,
    containment_threshold: float = DEFAULT_CONTAINMENT,
) -> list[Overlap]:
    """Every (canary paraphrase, eval paraphrase) pair that is an exact or near duplicate.

    Args:
        canaries: the canary questions.
        eval_sets: name -> evaluation questions (e.g. {"general": [...], "in_domain": [...]}).
        ngram: word n-gram size for the near-duplicate measures.
        jaccard_threshold: flag pairs with n-gram Jaccard >= this.
        containment_threshold: flag pairs where this share of the shorter text's n-grams is in the other.
    """
    evals = [
        (name, q.id, text, normalize_text(text), word_ngrams(text, ngram))
        for name, qs in eval_sets.items()
        for q in qs
        for text in q.paraphrases
    ]
    found = []
    for c in canaries:
        for c_text in c.paraphrases:
            c_norm, c_grams = normalize_text(c_text), word_ngrams(c_text, ngram)
            for name, eid, e_text, e_norm, e_grams in evals:
                jac, con = jaccard(c_grams, e_grams), containment(c_grams, e_grams)
                if c_norm == e_norm:
                    kind = "exact"
                elif jac >= jaccard_threshold or con >= containment_threshold:
                    kind = "near"
                else:
                    continue
                found.append(Overlap(c.id, name, eid, kind, jac, con, c_text, e_text))
    return found


def max_similarity(
    canaries: Sequence[Question], eval_sets: Mapping[str, Sequence[Question]], ngram: int = DEFAULT_NGRAM
) -> list[dict]:
    """For each canary, its most similar eval prompt (for the canary-design notebook's table)."""
    rows = []
    evals = [(name, q.id, word_ngrams(t, ngram)) for name, qs in eval_sets.items() for q in qs for t in q.paraphrases]
    for c in canaries:
        grams = [word_ngrams(t, ngram) for t in c.paraphrases]
        best = max(
            ((jaccard(g, e), containment(g, e), name, eid) for g in grams for name, eid, e in evals),
            default=(0.0, 0.0, "", ""),
        )
        rows.append(
            {
                "canary_id": c.id,
                "max_jaccard": round(best[0], 4),
                "containment": round(best[1], 4),
                "closest_set": best[2],
                "closest_id": best[3],
            }
        )
    return rows


def check_disjoint(
    canaries: Sequence[Question],
    eval_sets: Mapping[str, Sequence[Question]],
    ngram: int = DEFAULT_NGRAM,
    jaccard_threshold: float = DEFAULT_JACCARD,
    containment_threshold: float = DEFAULT_CONTAINMENT,
) -> None:
    """Raise if any canary duplicates (exactly or nearly) an evaluation prompt; the paper needs them disjoint.

    Raises:
        DataError: listing each overlapping pair, with how to fix it.
    """
    overlaps = find_overlaps(canaries, eval_sets, ngram, jaccard_threshold, containment_threshold)
    if overlaps:
        lines = "\n  ".join(o.describe() for o in overlaps[:20])
        more = f"\n  ... and {len(overlaps) - 20} more" if len(overlaps) > 20 else ""
        raise DataError(
            f"{len(overlaps)} canary/eval prompt overlap(s); canaries must be disjoint from every "
            f"evaluation prompt:\n  {lines}{more}\nRemove or reword these canaries (or choose another "
            f"data.canary_source)."
        )
