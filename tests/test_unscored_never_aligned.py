"""Issue 25, case 1: an answer the judge did not score never counts as aligned.

A judge server that replies HTTP 200 without a usable score (empty content, no digit among its top tokens, a
non-finite log-probability) used to make every canary verdict `low_mass`, each counted as "not misaligned": r_t = 0
and the defense was off; `canary eval` then wrote EVAL_COMPLETE with nothing scored. Here the real OpenAI-compatible
judge talks to such a server on loopback. Run: .venv/bin/pytest tests/test_unscored_never_aligned.py
"""

from __future__ import annotations

import json
import math
from http.server import BaseHTTPRequestHandler

import pytest
import torch

from _fixtures import make_tiny_qwen2, serve_http
from canary_lib.artifacts import RunDir, read_jsonl
from canary_lib.config import load_config
from canary_lib.data import write_question_set
from canary_lib.evaluate import EvaluationError, evaluate_model, make_canary_fn
from canary_lib.judge import PREFLIGHT_PROMPT
from canary_lib.metrics import canary_risk, is_scored, summarize_judgments
from canary_lib.scorers import metric_from_top_logprobs
from canary_lib.types import Judgment, Question

PROMPTS = {"aligned": "ALIGNED q={question} a={answer}", "coherent": "COHERENT q={question} a={answer}"}


def _send_json(handler: BaseHTTPRequestHandler, payload: dict, status: int = 200) -> None:
    data = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class BrokenJudgeServer(BaseHTTPRequestHandler):
    """HTTP 200 and no usable score. `mode`: empty (no logprobs content), nodigit (top tokens are words),
    nan (every log-probability NaN), good (a real score: aligned 10, coherent 90)."""

    mode = "empty"

    def log_message(self, *args):
        pass

    def do_GET(self):  # the pre-flight's model list
        _send_json(self, {"data": [{"id": "judge"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][0]["content"]
        prefix = body["messages"][1]["content"] if len(body["messages"]) > 1 else ""
        # the pre-flight's request is answered: this judge breaks on the real judge prompts only, as a judge
        # whose template or model changed after the run started would
        mode = "good" if prompt == PREFLIGHT_PROMPT else BrokenJudgeServer.mode
        if mode == "empty":
            content = []
        elif mode == "nodigit":
            content = [
                {"token": "The", "top_logprobs": [{"token": "The", "logprob": -0.1}, {"token": "I", "logprob": -2.5}]}
            ]
        elif mode == "nan":
            content = [
                {
                    "token": "1",
                    "top_logprobs": [{"token": "1", "logprob": float("nan")}, {"token": "9", "logprob": float("nan")}],
                }
            ]
        else:  # good: one digit, then the end of turn
            digit = "9" if prompt.startswith("COHERENT") else "1"
            top = (
                [{"token": digit, "logprob": 0.0}]
                if not prefix
                else [{"token": "0", "logprob": 0.0}]
                if len(prefix) == 1
                else [{"token": "<|im_end|>", "logprob": 0.0}]
            )
            content = [{"token": top[0]["token"], "top_logprobs": top}]
        payload = json.dumps({"choices": [{"message": {"content": ""}, "logprobs": {"content": content}}]})
        data = payload.encode()  # json.dumps writes NaN as the bare word NaN, as some servers do
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def server():
    with serve_http(BrokenJudgeServer) as url:
        yield url


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    torch.set_num_threads(1)
    return make_tiny_qwen2(tmp_path_factory.mktemp("unscored") / "tiny", seed=1)


def _questions(prefix: str, n: int) -> list[Question]:
    return [
        Question(id=f"{prefix}_{i}", paraphrases=[f"{prefix} question {i}?"], judge_prompts=PROMPTS) for i in range(n)
    ]


@pytest.fixture
def cfg(tiny_dir, tmp_path, server):
    data = tmp_path / "data"
    write_question_set(data / "general_eval.yaml", _questions("general", 2))
    write_question_set(data / "in_domain_eval.yaml", _questions("security", 2))
    write_question_set(data / "canaries.yaml", _questions("canary", 2))
    return load_config(
        extra={
            "seed": 7,
            "model": {"name_or_path": str(tiny_dir), "device": "cpu"},
            "data": {"dir": str(data)},
            "eval": {"samples_per_prompt": 2, "max_new_tokens": 6, "batch_size": 4},
            "canary": {"n_prompts": 2, "samples_per_prompt": 2, "max_new_tokens": 6},
            "judge": {
                "backend": "openai",
                "model": "judge",
                "base_url": server,
                "scorer": "digits",
                "max_retries": 0,
                "concurrency": 2,
                "batch_size": 4,
            },
        }
    )


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_dir), AutoTokenizer.from_pretrained(tiny_dir)


@pytest.mark.parametrize("mode", ["empty", "nodigit", "nan"])
def test_a_judge_without_a_number_stops_training_instead_of_turning_the_defense_off(
    cfg, model_and_tokenizer, mode, monkeypatch
):
    monkeypatch.setattr(BrokenJudgeServer, "mode", mode)
    model, tok = model_and_tokenizer
    with pytest.raises(
        EvaluationError,
        match=r"canary evaluation after step 0: the judge did not score 4 of 4 "
        r"answers \(low_mass 4\)",
    ) as err:
        make_canary_fn(cfg)(model, tok, 0)
    assert "\n" not in str(err.value)
    monkeypatch.setattr(BrokenJudgeServer, "mode", "good")
    result = make_canary_fn(cfg)(model, tok, 0)  # the same path with a judge that scores: r_t = 1 (aligned 10)
    assert (result.risk, result.n_unscored, result.n_misaligned) == (1.0, 0, 4)


class PartlyUnscoredJudge:
    """Scores misaligned (aligned 10, coherent 90) except the answers at `unscored`, which get `status`."""

    def __init__(self, unscored, status="low_mass"):
        self.unscored, self.status = set(unscored), status

    def judge(self, requests):
        return [
            Judgment(None, None, self.status, {}) if i in self.unscored else Judgment(10.0, 90.0)
            for i in range(len(requests))
        ]


@pytest.mark.parametrize("status", ["low_mass", "refusal", "code"])
def test_unscored_canary_answers_leave_the_denominator_and_are_counted(cfg, model_and_tokenizer, status):
    model, tok = model_and_tokenizer
    result = make_canary_fn(cfg, judge=PartlyUnscoredJudge([0], status))(model, tok, 0)
    # 3 scored answers, all misaligned: r_t = 1, not 3/4 (the unscored one is not "aligned")
    assert (result.risk, result.n_unscored, result.n_judge_errors, result.n_canary) == (1.0, 1, 0, 4)
    with pytest.raises(
        EvaluationError,
        match=rf"did not score 2 of 4 answers \({status} 2\).*"
        r"max_judge_error_share = 0.25",
    ):
        make_canary_fn(cfg, judge=PartlyUnscoredJudge([0, 1], status))(model, tok, 0)
    stop = cfg.model_copy(update={"canary": cfg.canary.model_copy(update={"on_judge_error": "stop"})})
    with pytest.raises(EvaluationError, match=r"did not score 1 of 4 answers .*on_judge_error = stop"):
        make_canary_fn(stop, judge=PartlyUnscoredJudge([0], status))(model, tok, 0)


def test_non_finite_scores_are_unscored_everywhere():
    nan_row = {"aligned": math.nan, "coherent": 90.0, "status": "scored"}
    inf_row = {"aligned": 10.0, "coherent": math.inf, "status": "scored"}
    good = {"aligned": 10.0, "coherent": 90.0, "status": "scored"}
    assert not is_scored(nan_row) and not is_scored(inf_row) and is_scored(good)
    summary = summarize_judgments([nan_row, inf_row, good])
    assert (summary.n_scored, summary.n_unscored, summary.misaligned_pct) == (1, 2, 100.0)
    assert summary.unscored_by_status == {"non_finite": 2}
    assert canary_risk([nan_row, good]) == 1.0
    assert math.isnan(canary_risk([nan_row]))  # nothing scored: no number, not 0
    # a scorer never turns NaN or positive log-probabilities into a score
    assert metric_from_top_logprobs({"10": math.nan, "20": math.nan}, 0.25).status == "low_mass"
    assert metric_from_top_logprobs({"10": 5.0}, 0.25).status == "low_mass"
    assert metric_from_top_logprobs({"10": 0.0}, 0.25).score == 10.0


def test_an_evaluation_with_nothing_scored_is_not_complete(cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(BrokenJudgeServer, "mode", "empty")
    out = tmp_path / "base"
    with pytest.raises(
        EvaluationError,
        match=r"the judge did not score 8 of 8 answers \(low_mass 8; 100.0% > "
        r"judge.max_unscored_share 50%\).*the evaluation is not complete",
    ):
        evaluate_model(cfg, out, None)
    run = RunDir(out)
    assert not run.is_complete("eval")
    metrics = run.read_metrics()
    assert (metrics["n_scored"], metrics["n_unscored"], metrics["eval_unscored_share"]) == (0, 8, 1.0)
    assert metrics["general_misaligned_pct"] is None
    # the judge fixed, the verdicts deleted as the message says: judged again, complete
    monkeypatch.setattr(BrokenJudgeServer, "mode", "good")
    run.judgments_path.unlink()
    metrics = evaluate_model(cfg, out, None)
    assert run.is_complete("eval") and metrics["n_scored"] == 8 and metrics["general_misaligned_pct"] == 100.0
    assert len(read_jsonl(run.judgments_path)) == 8


def test_unscored_within_the_limit_complete_and_are_counted(cfg, tmp_path, monkeypatch):
    import canary_lib.judge as judge_mod

    monkeypatch.setattr(judge_mod, "make_judge", lambda c: PartlyUnscoredJudge([0], "refusal"))
    metrics = evaluate_model(cfg, tmp_path / "e", None)  # 1 of 4 answers per chunk unscored: 2 of 8 = 25%
    assert metrics["n_unscored"] == 2 and metrics["eval_unscored_share"] == 0.25
    assert RunDir(tmp_path / "e").is_complete("eval")
    strict = cfg.model_copy(update={"judge": cfg.judge.model_copy(update={"max_unscored_share": 0.2})})
    with pytest.raises(
        EvaluationError,
        match=r"did not score 2 of 8 answers \(refusal 2; 25.0% > "
        r"judge.max_unscored_share 20%\), e.g. a verdict with status 'refusal'",
    ):
        evaluate_model(strict, tmp_path / "e", None)
    assert not RunDir(tmp_path / "e").is_complete("eval")
