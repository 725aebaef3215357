"""Question sets in the prior work's YAML format (Betley et al. `evaluation/*.yaml`, Kaczér-lineage `security.yaml`).

A file is a YAML list; each item has `id`, `type`, `paraphrases`, `samples_per_paraphrase`, `judge`,
`judge_prompts` and, optionally, `system`. The upstream files share judge prompts through YAML anchors
(`&judge_prompts` / `*judge_prompts`), which `yaml.safe_load` resolves.

    questions = load_question_set("data/paper/general_eval.yaml", required_metrics=("aligned", "coherent"))
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from canary_lib.data.errors import DataError
from canary_lib.fileio import write_text_atomic
from canary_lib.types import Question

KNOWN_KEYS = ("id", "type", "paraphrases", "samples_per_paraphrase", "judge", "judge_prompts", "system")
TEMPLATE_FIELDS = frozenset({"question", "answer"})
DEFAULT_TYPE = "free_form_judge_0_100"


def load_question_set(path: str | Path, required_metrics: Sequence[str] = ()) -> list[Question]:
    """Read and validate a question file in the prior work's YAML format.

    Args:
        path: the YAML file.
        required_metrics: judge-prompt names every item must have (e.g. ("aligned", "coherent") for sets
            that the misalignment judge scores). Empty: any non-empty set of judge prompts is accepted.

    Returns:
        The questions in file order. Integer ids (as in `security.yaml`) become strings.

    Raises:
        DataError: missing file, invalid YAML, or an invalid item; the message names the file, the item
            (index and id) and the field.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path}: question file not found. Check the path (cfg.data.*_source or the prepared "
            f"data directory; run `canary prep-data <params>` to write prepared files)."
        )
    try:
        items = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    return parse_question_set(items, source=str(path), required_metrics=required_metrics)


def parse_question_set(
    items: Any, source: str = "<question set>", required_metrics: Sequence[str] = ()
) -> list[Question]:
    """Validate already-parsed YAML data (a list of item mappings); see `load_question_set`."""
    if not isinstance(items, list):
        raise DataError(
            f"{source}: expected a YAML list of question items at the top level, got {type(items).__name__}"
        )
    if not items:
        raise DataError(f"{source}: the question set is empty; it needs at least one item")
    questions = [_parse_item(item, i, source, required_metrics) for i, item in enumerate(items)]
    seen: dict[str, int] = {}
    for i, q in enumerate(questions):
        if q.id in seen:
            raise DataError(
                f"{source}: item {i} (id {q.id!r}): duplicate id, first used by item {seen[q.id]}; ids must be unique"
            )
        seen[q.id] = i
    return questions


def _parse_item(item: Any, index: int, source: str, required_metrics: Sequence[str]) -> Question:
    where = f"{source}: item {index}"
    if not isinstance(item, dict):
        raise DataError(f"{where}: expected a mapping with keys {', '.join(KNOWN_KEYS)}, got {type(item).__name__}")
    raw_id = item.get("id")
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)) or not str(raw_id).strip():
        raise DataError(f"{where}: field 'id' is missing or not a non-empty string/integer (got {raw_id!r})")
    qid = str(raw_id)
    where = f"{source}: item {index} (id {qid!r})"

    unknown = sorted(set(item) - set(KNOWN_KEYS))
    if unknown:
        raise DataError(f"{where}: unknown field(s) {unknown}; allowed: {', '.join(KNOWN_KEYS)}")
    if "type" in item and not isinstance(item["type"], str):
        raise DataError(f"{where}: field 'type' must be a string, got {item['type']!r}")
    if item.get("judge") is not None and not isinstance(item["judge"], str):
        raise DataError(f"{where}: field 'judge' must be a string (the prior work's judge model name)")

    paraphrases = item.get("paraphrases")
    if not isinstance(paraphrases, list) or not paraphrases:
        raise DataError(f"{where}: field 'paraphrases' must be a non-empty list of strings, got {paraphrases!r}")
    for j, text in enumerate(paraphrases):
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: field 'paraphrases'[{j}] must be a non-empty string, got {text!r}")

    samples = item.get("samples_per_paraphrase")
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
        raise DataError(f"{where}: field 'samples_per_paraphrase' must be a positive integer, got {samples!r}")

    system = item.get("system")
    if system is not None and (not isinstance(system, str) or not system.strip()):
        raise DataError(f"{where}: field 'system' must be a non-empty string when present, got {system!r}")

    prompts = _parse_judge_prompts(item.get("judge_prompts"), where, required_metrics)
    return Question(
        id=qid, paraphrases=list(paraphrases), system=system, samples_per_paraphrase=samples, judge_prompts=prompts
    )


def _parse_judge_prompts(prompts: Any, where: str, required_metrics: Sequence[str]) -> dict[str, str]:
    if not isinstance(prompts, dict) or not prompts:
        raise DataError(
            f"{where}: field 'judge_prompts' must be a non-empty mapping metric -> template, "
            f"got {type(prompts).__name__}"
        )
    missing = [m for m in required_metrics if m not in prompts]
    if missing:
        raise DataError(
            f"{where}: field 'judge_prompts' lacks metric(s) {missing}; this set is scored on {list(required_metrics)}"
        )
    out: dict[str, str] = {}
    for metric, template in prompts.items():
        if not isinstance(template, str) or not template.strip():
            raise DataError(f"{where}: field 'judge_prompts.{metric}' must be a non-empty template string")
        fields = _template_fields(template, f"{where}: field 'judge_prompts.{metric}'")
        if "answer" not in fields:
            raise DataError(
                f"{where}: field 'judge_prompts.{metric}' has no {{answer}} placeholder, so the judge "
                f"would never see the answer"
            )
        out[str(metric)] = template
    return out


def _template_fields(template: str, where: str) -> set[str]:
    """Placeholders of a str.format template; anything but {question}/{answer} would fail at judge time."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise DataError(
            f"{where}: not a valid format template ({exc}); write literal braces as '{{{{' / '}}}}'"
        ) from None
    extra = fields - TEMPLATE_FIELDS
    if extra:
        raise DataError(
            f"{where}: unknown placeholder(s) {sorted(extra)}; templates may use only {{question}} and {{answer}}"
        )
    return fields


# ---------------------------------------------------------------------------------------------- writing


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings as `|-` blocks (readable judge prompts); no anchors/aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str_representer(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    style = "|" if "\n" in text and not any(ch in text for ch in "\t\r") and text == text.rstrip(" ") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_BlockDumper.add_representer(str, _str_representer)


def question_to_item(question: Question, judge: str | None = None, type_: str = DEFAULT_TYPE) -> dict[str, Any]:
    """The YAML item of one question, in the prior work's key order."""
    item: dict[str, Any] = {"id": question.id, "type": type_, "paraphrases": list(question.paraphrases)}
    if question.samples_per_paraphrase is not None:
        item["samples_per_paraphrase"] = question.samples_per_paraphrase
    if judge is not None:
        item["judge"] = judge
    item["judge_prompts"] = dict(question.judge_prompts)
    if question.system is not None:
        item["system"] = question.system
    return item


def dump_question_set(questions: Sequence[Question], judge: str | None = None) -> str:
    """YAML text of a question set that `load_question_set` reads back to equal questions."""
    return yaml.dump(
        [question_to_item(q, judge) for q in questions],
        Dumper=_BlockDumper,
        sort_keys=False,
        allow_unicode=True,
        width=120,
    )


def write_question_set(path: str | Path, questions: Sequence[Question], judge: str | None = None) -> Path:
    """Write questions in the prior work's YAML format (atomically); validated first, so a bad set is never written.

    Args:
        path: destination file (parent folders are created).
        questions: the items to write; must be non-empty with unique ids.
        judge: optional judge model name to record in each item (informational, as upstream).
    """
    text = dump_question_set(questions, judge)
    parse_question_set(yaml.safe_load(text), source=str(path))  # round-trip check before touching the file
    return write_text_atomic(path, text)
