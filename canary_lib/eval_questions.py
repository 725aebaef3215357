"""What an evaluation asks and how its answers are keyed: the question sets, the planned samples, the errors.

    questions = load_eval_questions(cfg)                     # {set: [Question]}, checked before any model loads
    planned = plan_samples(questions, cfg.eval.samples_per_prompt)   # every (set, question, paraphrase, sample)

Shared by the evaluation of a run (`canary_lib.evaluate`) and the canary evaluation during training
(`canary_lib.canary_eval`): both refuse bad question files the same way and describe a failed verdict the same way.
No torch here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from canary_lib.errors import CanaryError
from canary_lib.types import JUDGED_METRICS, Question

if TYPE_CHECKING:  # pragma: no cover
    from canary_lib.config_schema import RunConfig

SET_FILES = {"general": "general_eval_file", "in_domain": "in_domain_eval_file"}
KEY_FIELDS = ("set", "question_id", "paraphrase", "sample")


class EvaluationError(CanaryError, ValueError):
    """Bad evaluation input (missing files, questions without judge prompts, an unfinished run)."""


class JudgeFailureError(EvaluationError):
    """The judge failed on more answers than its limit allows (judge.max_error_share, or the canary policy)."""


# ------------------------------------------------------------------------------------------ questions and keys


def question_set_path(cfg: RunConfig, name: str) -> Path:
    if name not in SET_FILES:
        raise EvaluationError(f"unknown evaluation set {name!r}; expected one of {sorted(SET_FILES)}")
    return cfg.data.path(getattr(cfg.data, SET_FILES[name]))


def check_questions(questions: Sequence[Question], source: str, *, needs_judge_prompts: bool) -> None:
    """Refuse what would only fail after hours of generation: empty sets, duplicate ids, missing prompts."""
    if not questions:
        raise EvaluationError(f"{source}: no questions")
    seen: set[str] = set()
    for q in questions:
        if q.id in seen:
            raise EvaluationError(f"{source}: question id {q.id!r} appears twice")
        seen.add(q.id)
        if not q.paraphrases:
            raise EvaluationError(f"{source}: question {q.id!r} has no paraphrases")
        missing = [m for m in JUDGED_METRICS if m not in q.judge_prompts]
        if needs_judge_prompts and missing:
            raise EvaluationError(
                f"{source}: question {q.id!r} has no judge prompt for {missing} "
                f"(an LLM judge uses each question's own judge_prompts)"
            )


def load_eval_questions(cfg: RunConfig) -> dict[str, list[Question]]:
    """The question sets named in cfg.eval.sets, checked."""
    from canary_lib.data import load_question_set

    out: dict[str, list[Question]] = {}
    for name in cfg.eval.sets:
        path = question_set_path(cfg, name)
        if not path.is_file():
            raise EvaluationError(f"{path}: {name} question file not found (prepare the data first: canary prep-data)")
        questions = load_question_set(path)
        check_questions(questions, str(path), needs_judge_prompts=cfg.judge.backend != "exact")
        out[name] = questions
    return out


def row_key(row: dict) -> tuple:
    return tuple(row[k] for k in KEY_FIELDS)


@dataclass(frozen=True)
class PlannedSample:
    set: str
    question: Question
    paraphrase: int
    sample: int

    @property
    def key(self) -> tuple:
        return (self.set, self.question.id, self.paraphrase, self.sample)


def plan_samples(questions: dict[str, list[Question]], samples_per_prompt: int) -> list[PlannedSample]:
    """Every (set, question, paraphrase, sample) the evaluation needs, in a fixed order."""
    return [
        PlannedSample(name, q, p, j)
        for name, qs in questions.items()
        for q in qs
        for p in range(len(q.paraphrases))
        for j in range(samples_per_prompt)
    ]


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _latest_by_key(rows: Iterable[dict]) -> dict[tuple, dict]:
    return {row_key(r): r for r in rows if all(k in r for k in KEY_FIELDS)}


# ------------------------------------------------------------------------------------------ verdicts in words


def judge_error_message(verdict: dict) -> str:
    """The judge's own error text of an "error" verdict (it may sit under detail.aligned.error)."""

    def find(node: Any) -> str | None:
        if isinstance(node, dict):
            if isinstance(node.get("error"), str):
                return node["error"]
            for value in node.values():
                if (found := find(value)) is not None:
                    return found
        return None

    return find(verdict.get("detail")) or "no error message recorded"


def verdict_problem(verdict: dict) -> str:
    """What went wrong with an unscored verdict, in words: the judge's error, or its status and scores."""
    if verdict.get("status") == "error":
        return f"e.g. {judge_error_message(verdict)}"
    return (
        f"e.g. a verdict with status {verdict.get('status')!r} (aligned {verdict.get('aligned')}, "
        f"coherent {verdict.get('coherent')})"
    )
