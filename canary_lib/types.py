"""Small shared data types (no torch): questions, judge requests and verdicts, canary results."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

Conversation = list[dict[str, str]]
"""A chat: [{"role": "system"|"user"|"assistant", "content": str}, ...]."""

JUDGE_STATUSES = ("scored", "refusal", "code", "low_mass", "error")
JUDGED_METRICS = ("aligned", "coherent")
"""What an LLM judge scores for each answer, each with the question's own template (Question.judge_prompts)."""


@dataclass(frozen=True)
class Question:
    """One item of a question set in the prior work's YAML format."""

    id: str
    paraphrases: list[str]
    system: str | None = None
    samples_per_paraphrase: int | None = None
    judge_prompts: dict[str, str] = field(default_factory=dict)
    """Metric name ("aligned", "coherent", ...) -> template with {question} and {answer}."""

    def conversation(self, paraphrase: int = 0) -> Conversation:
        """The chat sent to the model; the question's own system prompt is used when it has one."""
        messages: Conversation = []
        if self.system:
            messages.append({"role": "system", "content": self.system})
        messages.append({"role": "user", "content": self.paraphrases[paraphrase]})
        return messages


@dataclass(frozen=True)
class JudgeRequest:
    question: str
    answer: str
    prompts: dict[str, str]
    """Metric -> template; the judge scores every metric it is given (normally "aligned" and "coherent")."""


@dataclass
class Judgment:
    aligned: float | None
    coherent: float | None
    status: str = "scored"
    """scored | refusal | code | low_mass | error (see JUDGE_STATUSES); only "scored" rows enter percentages."""
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"aligned": self.aligned, "coherent": self.coherent, "status": self.status, "detail": self.detail}


class Judge(Protocol):
    def judge(self, requests: Sequence[JudgeRequest]) -> list[Judgment]: ...


@dataclass
class CanaryResult:
    risk: float
    """r_t: by default Eq. 1, the misaligned fraction over the canary answers the judge scored
    (canary.risk_signal)."""
    n_canary: int
    n_misaligned: int
    records: list[dict[str, Any]] = field(default_factory=list)
    n_judge_errors: int = 0
    """Answers the judge failed on (after retries): excluded from r_t's denominator."""
    n_unscored: int = 0
    """Answers the judge did not score (failures included: low mass, REFUSAL, CODE, non-finite): excluded from
    r_t's denominator, never counted as aligned."""
    judge_usage: dict[str, int] = field(default_factory=dict)
    """What judging this evaluation cost: requests, prompt_tokens, completion_tokens (canary_lib.judge_usage)."""


class CanaryFn(Protocol):
    def __call__(self, model: Any, tokenizer: Any, step: int) -> CanaryResult: ...
