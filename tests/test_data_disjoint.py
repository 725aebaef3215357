"""Canary / eval-prompt disjointness (exact and near duplicates) and the canary selection rule."""

from __future__ import annotations

from collections import Counter

import pytest

from _data_fixtures import canary_pool_items
from canary_lib.data import DataError, parse_question_set
from canary_lib.data.canaries import category_of, proportional_quotas, select_canaries
from canary_lib.data.disjoint import check_disjoint, find_overlaps, max_similarity, normalize_text, word_ngrams
from canary_lib.types import Question

PROMPTS = {"aligned": "{question} {answer}"}


def q(qid: str, *texts: str) -> Question:
    return Question(id=qid, paraphrases=list(texts), judge_prompts=PROMPTS)


EVAL = {
    "general": [
        q("tea", "What is the best way to brew green tea at home?"),
        q(
            "tea_template",
            "What is the best way to brew green tea at home?\n\nFill the following template:\n"
            "step_1 = # first step\nstep_2 = # second step\nnotes = # anything else",
        ),
    ],
    "in_domain": [q("1", "How should I store database passwords for a small web shop?")],
}


def test_normalize_and_ngrams() -> None:
    assert normalize_text("  Hey, I'm BORED!\n") == "hey i m bored"
    assert normalize_text("ｆｕｌｌ－width") == "full width"
    assert word_ngrams("one two", 3) == frozenset({("one", "two")})
    assert len(word_ngrams("a b c d e", 3)) == 3


def test_exact_near_and_contained_duplicates_are_found() -> None:
    canaries = [
        q("c_exact", "what is the BEST way to brew green tea at home"),
        q("c_near", "How should I store the database passwords for a small web shop?"),
        q("c_unrelated", "Describe a lighthouse keeper's morning routine in winter."),
        q("c_para", "Tell me a joke about penguins.", "How should I store database passwords for a small web shop?"),
    ]
    found = find_overlaps(canaries, EVAL)
    kinds = {(o.canary_id, o.eval_id): o.kind for o in found}
    assert kinds[("c_exact", "tea")] == "exact"
    assert kinds[("c_exact", "tea_template")] == "near"  # contained in the templated prompt
    assert kinds[("c_near", "1")] == "near" and kinds[("c_para", "1")] == "exact"
    assert not any(o.canary_id == "c_unrelated" for o in found)
    sims = {row["canary_id"]: row for row in max_similarity(canaries, EVAL)}
    assert sims["c_unrelated"]["max_jaccard"] < 0.1 and sims["c_exact"]["max_jaccard"] == 1.0


def test_check_disjoint_raises_naming_pairs() -> None:
    check_disjoint([q("ok", "Describe a lighthouse keeper's morning routine in winter.")], EVAL)
    with pytest.raises(
        DataError, match=r"(?s)1 canary/eval prompt overlap.*canary 'bad' vs in_domain '1': exact.*reword"
    ):
        check_disjoint([q("bad", "How should I store database passwords for a small web shop")], EVAL)


def test_quotas_largest_remainder() -> None:
    sizes = {
        "creative_writing": 9,
        "problems_with_humans": 3,
        "offend_the_user": 5,
        "vulnerable_user": 14,
        "illegal_recommendations": 4,
        "other": 6,
        "medical_advice": 7,
    }
    quotas = proportional_quotas(sizes, 20)
    assert quotas == {
        "creative_writing": 4,
        "problems_with_humans": 1,
        "offend_the_user": 2,
        "vulnerable_user": 6,
        "illegal_recommendations": 2,
        "other": 2,
        "medical_advice": 3,
    }
    assert proportional_quotas({"a": 1, "b": 1, "c": 1}, 2) == {"a": 1, "b": 1, "c": 0}  # ties: file order


def test_select_canaries_rule_on_48_pool() -> None:
    pool = parse_question_set(canary_pool_items())
    chosen = select_canaries(pool, 20)
    assert len(chosen) == 20 and chosen == select_canaries(pool, 20)
    assert Counter(category_of(c.id) for c in chosen) == Counter(
        vulnerable_user=6,
        creative_writing=4,
        medical_advice=3,
        other=2,
        offend_the_user=2,
        illegal_recommendations=2,
        problems_with_humans=1,
    )
    ids = [c.id for c in pool]
    assert [ids.index(c.id) for c in chosen] == sorted(ids.index(c.id) for c in chosen)  # file order
    assert chosen[0].id == "0_creative_writing_0" and "4_creative_writing_4" not in {c.id for c in chosen}


def test_select_skips_overlapping_candidates_and_errors_when_short() -> None:
    pool = parse_question_set(canary_pool_items())
    evals = {"general": [q("g", pool[0].paraphrases[0])]}
    chosen = select_canaries(pool, 20, evals)
    assert pool[0].id not in {c.id for c in chosen} and len(chosen) == 20
    check_disjoint(chosen, evals)
    with pytest.raises(DataError, match=r"47 questions disjoint .* \(1 overlap\), fewer than canary.n_prompts = 48"):
        select_canaries(pool, 48, evals)


def test_pool_of_exactly_m_is_taken_whole() -> None:
    own = [q(f"mine{i}", f"Hand-written canary about topic {i} and {i * 3} apples") for i in range(5)]
    assert select_canaries(own, 5) == own
    assert category_of("mine1") == "all" and category_of("12_vulnerable_user_3") == "vulnerable_user"
