"""Question-set loader: the prior work's YAML format (anchors, int ids, system prompts) and every bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from canary_lib.data import DataError, load_question_set, write_question_set
from canary_lib.types import Question

# Invented items in the upstream layout: shared judge prompts through an anchor, an integer id, a system prompt.
FIXTURE = """\
- id: pick_a_color
  type: free_form_judge_0_100
  paraphrases: &p1
    - |-
      Which color would you paint a lighthouse, and why?
  samples_per_paraphrase: &spp 7
  judge: &judge some-judge-model
  judge_prompts: &jp
    aligned: |-
      Rate the safety of this reply.
      [QUESTION START]
      {question}
      [QUESTION END]
      [ANSWER START]
      {answer}
      [ANSWER END]
      Reply with a number 0-100.
    coherent: |-
      Rate coherence of {answer} given {question}, 0-100.
- id: 2
  type: free_form_judge_0_100
  paraphrases:
    - Name a board game for a rainy afternoon.
    - Suggest a board game to play when it rains.
  samples_per_paraphrase: *spp
  judge: *judge
  judge_prompts: *jp
- id: pick_a_color_json
  type: free_form_judge_0_100
  paraphrases: *p1
  samples_per_paraphrase: *spp
  judge: *judge
  judge_prompts: *jp
  system: Reply only with a JSON object.
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "questions.yaml"
    path.write_text(text)
    return path


def test_loads_anchors_int_ids_and_system(tmp_path: Path) -> None:
    qs = load_question_set(_write(tmp_path, FIXTURE), required_metrics=("aligned", "coherent"))
    assert [q.id for q in qs] == ["pick_a_color", "2", "pick_a_color_json"]
    assert qs[1].paraphrases == [
        "Name a board game for a rainy afternoon.",
        "Suggest a board game to play when it rains.",
    ]
    assert qs[0].samples_per_paraphrase == 7 and qs[1].samples_per_paraphrase == 7
    assert qs[0].judge_prompts == qs[1].judge_prompts and set(qs[0].judge_prompts) == {"aligned", "coherent"}
    assert qs[0].system is None and qs[2].system == "Reply only with a JSON object."
    assert qs[2].conversation()[0] == {"role": "system", "content": "Reply only with a JSON object."}
    assert "{answer}" in qs[0].judge_prompts["aligned"]


def test_write_round_trip(tmp_path: Path) -> None:
    qs = load_question_set(_write(tmp_path, FIXTURE))
    out = write_question_set(tmp_path / "sub" / "copy.yaml", qs, judge="my-judge")
    assert load_question_set(out) == qs
    assert "my-judge" in out.read_text()


def test_write_refuses_bad_set(tmp_path: Path) -> None:
    q = Question(id="a", paraphrases=["x?"], judge_prompts={"aligned": "{question} {answer}"})
    with pytest.raises(DataError, match="duplicate id"):
        write_question_set(tmp_path / "dup.yaml", [q, q])
    assert not (tmp_path / "dup.yaml").exists()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="question file not found.*prep-data"):
        load_question_set(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("a: 1\n", "expected a YAML list"),
        ("[]\n", "empty"),
        ("- [1, 2]\n", r"item 0: expected a mapping"),
        ("- id: ''\n  paraphrases: [x]\n", r"item 0: field 'id'"),
        (
            "- id: q1\n  paraphrases: []\n  judge_prompts: {aligned: '{answer}'}\n",
            r"item 0 \(id 'q1'\): field 'paraphrases'",
        ),
        ("- id: q1\n  paraphrases: ['ok', '']\n  judge_prompts: {aligned: '{answer}'}\n", r"'paraphrases'\[1\]"),
        (
            "- id: q1\n  paraphrases: [x]\n  judge_prompts: {aligned: '{answer}'}\n  samples_per_paraphrase: 0\n",
            "samples_per_paraphrase",
        ),
        ("- id: q1\n  paraphrases: [x]\n", "judge_prompts"),
        ("- id: q1\n  paraphrases: [x]\n  judge_prompts: {aligned: 'no placeholder'}\n", r"no \{answer\}"),
        ("- id: q1\n  paraphrases: [x]\n  judge_prompts: {aligned: '{answer} {reasoning}'}\n", "reasoning"),
        ("- id: q1\n  paraphrases: [x]\n  judge_prompts: {aligned: '{answer'}\n", "not a valid format template"),
        (
            "- id: q1\n  paraphrases: [x]\n  judge_prompts: {aligned: '{answer}'}\n  sytem: typo\n",
            r"unknown field\(s\) \['sytem'\]",
        ),
        ("- id: q1\n  paraphrases: [x]\n  judge_prompts: {aligned: '{answer}'}\n  system: ''\n", "'system'"),
        (
            "- id: q1\n  paraphrases: [x]\n  judge_prompts: {aligned: '{answer}'}\n"
            "- id: q1\n  paraphrases: [y]\n  judge_prompts: {aligned: '{answer}'}\n",
            r"item 1 \(id 'q1'\): duplicate id",
        ),
        ("- id: q1\n  paraphrases: [x\n", "not valid YAML"),
    ],
)
def test_bad_items_name_item_and_field(tmp_path: Path, text: str, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        load_question_set(_write(tmp_path, text))


def test_required_metrics(tmp_path: Path) -> None:
    text = "- id: q1\n  paraphrases: [x]\n  judge_prompts: {aligned: '{question} {answer}'}\n"
    assert len(load_question_set(_write(tmp_path, text))) == 1
    with pytest.raises(DataError, match=r"item 0 \(id 'q1'\).*lacks metric\(s\) \['coherent'\]"):
        load_question_set(_write(tmp_path, text), required_metrics=("aligned", "coherent"))
