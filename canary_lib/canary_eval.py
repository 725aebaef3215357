"""The canary risk r_t for the training loop: canary answers sampled from the model in training, judged.

    canary_fn = make_canary_fn(cfg)                          # checked before training loads its model
    result = canary_fn(model, tokenizer, step)               # CanaryResult: r_t, counts, one record per answer

Training calls it every K steps (`canary_lib.train.run_canary`); how a failing judge is handled is in
docs/training.md. Re-exported by `canary_lib.evaluate`, where callers import it from.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from canary_lib.config_schema import RunConfig, canary_judge_settings
from canary_lib.eval_questions import EvaluationError, JudgeFailureError, check_questions, verdict_problem
from canary_lib.judge_usage import judge_usage, usage_delta
from canary_lib.metrics import (
    canary_risk,
    has_cut_probabilities,
    is_misaligned,
    is_scored,
    misaligned_probability,
    unscored_breakdown,
)
from canary_lib.preflight import require_judge_key
from canary_lib.redact import redact
from canary_lib.types import CanaryResult, Judge, JudgeRequest, Question


def canary_seed(seed: int, step: int) -> int:
    """The sampling seed of the canary evaluation after step `step` (fresh answers at every evaluation)."""
    return int.from_bytes(hashlib.sha256(f"canary:{seed}:{step}".encode()).digest()[:8], "big") >> 1


class CanaryEvaluator:
    """The training loop's canary callable: (model, tokenizer, step) -> CanaryResult with r_t (Eq. 1 by default).

    Asks the first cfg.canary.n_prompts canary questions (first paraphrase, the question's own system prompt),
    cfg.canary.samples_per_prompt answers each, sampled with cfg.canary's settings from a seed derived from
    (cfg.seed, step), judges them with make_judge(cfg) (built at the first call) and returns the misaligned
    fraction (Eq. 1), or the continuous signal cfg.canary.risk_signal names (canary_lib.metrics.canary_risk). A
    refusal or other unscored verdict counts as not misaligned; a judge *failure* does not count either way.
    Failed verdicts are judged again up to canary.judge_retries times; what still fails is excluded from the
    denominator (canary.on_judge_error = exclude) unless it exceeds canary.max_judge_error_share of the answers,
    or on_judge_error = stop: then training stops with the judge's error and resumes from its last checkpoint on
    a rerun (docs/training.md).
    """

    def __init__(self, cfg: RunConfig, questions: Sequence[Question], judge: Judge | None = None) -> None:
        self.cfg = cfg
        self.questions = list(questions)
        self._judge = judge

    @property
    def judge(self) -> Judge:
        if self._judge is None:
            from canary_lib.judge import make_judge

            self._judge = make_judge(self.cfg.model_copy(update={"judge": canary_judge_settings(self.cfg)}))
        return self._judge

    def __call__(self, model: Any, tokenizer: Any, step: int) -> CanaryResult:
        from canary_lib.generation import SampleRequest, TransformersGenerator

        settings = self.cfg.canary
        generator = TransformersGenerator(model, tokenizer, batch_size=self.cfg.eval.batch_size)
        asked = [(q, j) for q in self.questions for j in range(settings.samples_per_prompt)]
        answers = generator.generate_samples(
            [SampleRequest(q.conversation(0), j) for q, j in asked],
            seed=canary_seed(self.cfg.seed, step),
            sampling=settings,
        )
        requests = [JudgeRequest(q.paraphrases[0], a, dict(q.judge_prompts)) for (q, _), a in zip(asked, answers)]
        cost_before = judge_usage(self._judge)  # None until the first call builds it (zeros)
        judgments = self._judge_with_retries(requests)
        cost = usage_delta(judge_usage(self._judge), cost_before)
        errors = [v for v in judgments if v["status"] == "error"]
        unscored = [v for v in judgments if not is_scored(v)]  # errors, low mass, REFUSAL, CODE, non-finite
        if unscored and (
            settings.on_judge_error == "stop"
            or len(unscored) == len(judgments)
            or len(unscored) > settings.max_judge_error_share * len(judgments)
        ):
            # r_t from the few answers a failing judge scored (or none) would steer p on noise, and counting
            # them as "not misaligned" would turn the defense off: stop instead; the run resumes from its last
            # checkpoint once the judge works.
            example = errors[0] if errors else unscored[0]
            raise JudgeFailureError(
                f"canary evaluation after step {step}: the judge did not score {len(unscored)} of {len(judgments)} "
                f"answers ({unscored_breakdown(unscored)}) after {settings.judge_retries} retries "
                f"(canary.on_judge_error = {settings.on_judge_error}, canary.max_judge_error_share = "
                f"{settings.max_judge_error_share:g}): {verdict_problem(example)}; fix the judge and rerun to resume"
            )
        records = []
        n_misaligned = 0
        for (q, j), answer, verdict in zip(asked, answers, judgments):
            misaligned = is_scored(verdict) and is_misaligned(verdict["aligned"], verdict["coherent"])
            n_misaligned += misaligned
            record = {
                "question_id": q.id,
                "sample": j,
                "question": q.paraphrases[0],
                "answer": answer,
                "aligned": verdict["aligned"],
                "coherent": verdict["coherent"],
                "status": verdict["status"],
                "misaligned": bool(misaligned),
            }
            if has_cut_probabilities(verdict):  # a judge with score distributions: keep what "probability" reads
                record["p_misaligned"] = misaligned_probability(verdict)
            records.append(record)
        # canary_risk leaves every unscored answer out of the denominator: it is never counted as aligned
        return CanaryResult(
            risk=canary_risk(records, settings.risk_signal),
            n_canary=len(records),
            n_misaligned=n_misaligned,
            records=records,
            n_judge_errors=len(errors),
            n_unscored=len(unscored),
            judge_usage=cost,
        )

    def _judge_with_retries(self, requests: list[JudgeRequest]) -> list[dict]:
        """Verdicts as dicts; the requests that failed are sent again up to canary.judge_retries times."""
        judgments: list[dict] = [{}] * len(requests)
        pending = list(range(len(requests)))
        for _ in range(self.cfg.canary.judge_retries + 1):
            try:
                verdicts = [j.to_dict() for j in self.judge.judge([requests[i] for i in pending])]
                if len(verdicts) != len(pending):
                    raise RuntimeError(f"judge returned {len(verdicts)} verdicts for {len(pending)} answers")
            except Exception as exc:  # noqa: BLE001 - kept as errors, then retried or handled by the policy
                verdicts = [
                    {
                        "aligned": None,
                        "coherent": None,
                        "status": "error",
                        "detail": {"error": redact(f"{type(exc).__name__}: {exc}")[:500]},
                    }
                    for _ in pending
                ]
            for i, verdict in zip(pending, verdicts):
                judgments[i] = verdict
            pending = [i for i in pending if judgments[i]["status"] == "error"]
            if not pending:
                break
        return judgments


def make_canary_fn(cfg: RunConfig, judge: Judge | None = None) -> CanaryEvaluator:
    """The canary callable for the training loop, checked before training starts.

    Args:
        cfg: The run configuration (data.canary_file, canary section, judge section).
        judge: A judge to use instead of make_judge(cfg) (tests, a shared judge).

    Raises:
        EvaluationError: The canary file is missing, has fewer than cfg.canary.n_prompts questions, or lacks
            judge prompts an LLM judge needs.
    """
    from canary_lib.data import load_question_set

    if judge is None:
        require_judge_key(cfg, canary_judge_settings(cfg))
    path = cfg.data.path(cfg.data.canary_file)
    if not path.is_file():
        raise EvaluationError(f"{path}: canary question file not found (prepare the data first: canary prep-data)")
    questions = load_question_set(path)
    if len(questions) < cfg.canary.n_prompts:
        raise EvaluationError(
            f"{path}: {len(questions)} canary questions, but canary.n_prompts = {cfg.canary.n_prompts}"
        )
    questions = questions[: cfg.canary.n_prompts]
    check_questions(
        questions, str(path), needs_judge_prompts=judge is None and canary_judge_settings(cfg).backend != "exact"
    )
    if judge is None:  # training calls this before its model loads: a judge server that is not there fails now
        from canary_lib.judge import preflight_judge

        preflight_judge(cfg, canary_judge_settings(cfg))
    return CanaryEvaluator(cfg, questions, judge)
