"""Canary selection: M prompts from a candidate pool (by default Betley et al.'s 48 pre-registered questions).

The paper does not list its canaries. Our rule (docs/data.md), deterministic and without randomness:

1. Drop every candidate that overlaps an evaluation prompt (exact or near duplicate, `disjoint.find_overlaps`).
2. Group the rest by category, read from ids of the form `<number>_<category>_<index>` (e.g.
   `12_vulnerable_user_3` -> `vulnerable_user`); other ids form one group.
3. Give each category a quota proportional to its size (largest-remainder method; ties go to the category
   that appears first in the file).
4. Within a category take the first items in file order; output in file order.

For the pre-registered set and M = 20 this gives vulnerable_user 6, creative_writing 4, medical_advice 3, other 2,
offend_the_user 2, illegal_recommendations 2, problems_with_humans 1.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from fractions import Fraction

from canary_lib.data.disjoint import find_overlaps
from canary_lib.data.errors import DataError
from canary_lib.types import Question

_CATEGORY_ID = re.compile(r"^\d+_(?P<category>.+)_\d+$")
SELECTION_RULE = (
    "drop candidates overlapping eval prompts; proportional per-category quotas (largest remainder, "
    "ties by first appearance); first items of each category in file order"
)


def category_of(question_id: str) -> str:
    """`12_vulnerable_user_3` -> `vulnerable_user`; ids without that shape -> "all"."""
    match = _CATEGORY_ID.match(question_id)
    return match.group("category") if match else "all"


def proportional_quotas(sizes: Mapping[str, int], m: int) -> dict[str, int]:
    """Largest-remainder apportionment of m slots over categories (dict order breaks ties), capped by size."""
    total = sum(sizes.values())
    exact = {c: Fraction(n * m, total) for c, n in sizes.items()}
    quotas = {c: int(q) for c, q in exact.items()}
    order = list(sizes)
    by_remainder = sorted(order, key=lambda c: (-(exact[c] - quotas[c]), order.index(c)))
    for c in by_remainder[: m - sum(quotas.values())]:
        quotas[c] += 1
    return quotas


def select_canaries(
    pool: Sequence[Question], m: int, eval_sets: Mapping[str, Sequence[Question]] | None = None
) -> list[Question]:
    """Pick m canaries from `pool` with the rule in the module docstring.

    A pool of exactly m disjoint questions is taken whole (a hand-written canary file).

    Raises:
        DataError: fewer than m candidates remain after dropping those that overlap evaluation prompts.
    """
    overlapping = {o.canary_id for o in find_overlaps(pool, eval_sets or {})}
    candidates = [q for q in pool if q.id not in overlapping]
    if len(candidates) < m:
        raise DataError(
            f"the canary pool has {len(candidates)} questions disjoint from the evaluation prompts "
            f"({len(overlapping)} overlap), fewer than canary.n_prompts = {m}; lower canary.n_prompts "
            f"or give a larger data.canary_source"
        )
    sizes = Counter(category_of(q.id) for q in candidates)  # insertion order = first appearance in the file
    quotas = proportional_quotas(dict(sizes), m)
    taken: Counter[str] = Counter()
    chosen = []
    for q in candidates:
        cat = category_of(q.id)
        if taken[cat] < quotas[cat]:
            taken[cat] += 1
            chosen.append(q)
    return chosen
