"""Judge cost: requests and tokens, from a server's usage fields or counted locally, in metrics.json and runs.csv."""

from __future__ import annotations

import json
import math
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler

import pytest
import torch

from _fixtures import ScriptedCanary, make_tiny_qwen2, make_tiny_training_world, serve_http
from canary_lib.config import JudgeSettings, load_config
from canary_lib.data import write_question_set
from canary_lib.evaluate import evaluate_model, make_canary_fn
from canary_lib.judge import LLMJudge, OpenAIBackend
from canary_lib.judge_usage import judge_usage, usage_metrics
from canary_lib.organism import ExactJudge
from canary_lib.results import collect_runs
from canary_lib.train import train_from_config
from canary_lib.types import CanaryResult, JudgeRequest, Question

PROMPTS = {"aligned": "ALIGNED q={question} a={answer}", "coherent": "COHERENT q={question} a={answer}"}


class UsageServer(BaseHTTPRequestHandler):
    """Chat completions with one top-logprob token and a `usage` object: prompt tokens = the prompt's words."""

    attempts: Counter = Counter()
    lock = threading.Lock()

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][0]["content"]
        with UsageServer.lock:
            UsageServer.attempts[prompt] += 1
            attempt = UsageServer.attempts[prompt]
        if "FLAKY" in prompt and attempt == 1:
            code, reply = 503, {"error": "busy"}
        else:
            top = [{"token": "80", "logprob": math.log(0.9)}, {"token": "90", "logprob": math.log(0.1)}]
            code, reply = (
                200,
                {
                    "choices": [
                        {
                            "message": {"role": "assistant", "content": "80"},
                            "logprobs": {"content": [{**top[0], "top_logprobs": top}]},
                        }
                    ],
                    "usage": {
                        "prompt_tokens": len(prompt.split()),
                        "completion_tokens": 1,
                        "total_tokens": len(prompt.split()) + 1,
                    },
                },
            )
        data = json.dumps(reply).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server():
    UsageServer.attempts.clear()
    with serve_http(UsageServer) as url:
        yield url


def test_openai_judge_sums_the_servers_usage_and_counts_every_request(server):
    backend = OpenAIBackend(
        base_url=server,
        model="judge",
        api_key_env="CANARY_NO_KEY",
        concurrency=2,
        timeout_s=5.0,
        max_retries=2,
        backoff_s=0.01,
    )
    judge = LLMJudge(backend, JudgeSettings(scorer="logprob"))
    requests = [JudgeRequest("q one", "fine", PROMPTS), JudgeRequest("FLAKY", "b", PROMPTS)]
    assert [j.status for j in judge.judge(requests)] == ["scored", "scored"]
    prompts = [PROMPTS[m].format(question=r.question, answer=r.answer) for r in requests for m in PROMPTS]
    # 4 prompts; both FLAKY prompts were sent twice (a 503, then the answer): 6 requests, 4 with usage
    assert judge_usage(judge) == {
        "requests": 6,
        "prompt_tokens": sum(len(p.split()) for p in prompts),
        "completion_tokens": 4,
    }


def test_a_judge_that_sends_nothing_costs_zero():
    assert judge_usage(ExactJudge()) == {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
    assert usage_metrics("eval", judge_usage(None)) == {
        "eval_judge_requests": 0,
        "eval_judge_prompt_tokens": 0,
        "eval_judge_completion_tokens": 0,
    }


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    torch.set_num_threads(1)
    return make_tiny_qwen2(tmp_path_factory.mktemp("cost") / "tiny", seed=1)


def local_judge_config(tiny_dir, data):
    questions = [
        Question(
            id=f"q{i}",
            paraphrases=[f"question number {i}?"],
            judge_prompts={
                "aligned": "Aligned? Q: {question} A: {answer} 0-100.",
                "coherent": "Coherent? Q: {question} A: {answer}",
            },
        )
        for i in range(2)
    ]
    for name in ("general_eval.yaml", "in_domain_eval.yaml", "canaries.yaml"):
        write_question_set(data / name, questions)
    return load_config(
        extra={
            "seed": 7,
            "model": {"name_or_path": str(tiny_dir), "device": "cpu"},
            "data": {"dir": str(data)},
            "eval": {"samples_per_prompt": 2, "max_new_tokens": 6, "batch_size": 4, "sets": ["general"]},
            "canary": {"n_prompts": 2, "samples_per_prompt": 1, "max_new_tokens": 6},
            "judge": {
                "backend": "transformers",
                "model": str(tiny_dir),
                "scorer": "digits",
                "min_mass": 0.0,
                "digit_prune_below": 0.001,
                "batch_size": 8,
            },
        }
    )


def test_local_judge_counts_its_tokens_into_metrics_and_runs_csv(tiny_dir, tmp_path):
    cfg = local_judge_config(tiny_dir, tmp_path / "data")
    out = tmp_path / "runs" / "base" / "seed7"
    metrics = evaluate_model(cfg, out, None)
    requests = metrics["eval_judge_requests"]
    # 4 answers x 2 metrics: at least one request per filled prompt (digit prefixes add more), one token each
    assert requests >= 8 and metrics["eval_judge_completion_tokens"] == requests
    assert metrics["eval_judge_prompt_tokens"] > 10 * requests
    again = evaluate_model(cfg, out, None)  # nothing left to judge: the cost stays what judging cost
    assert again["eval_judged_now"] == 0 and again["eval_judge_requests"] == requests
    runs = collect_runs(tmp_path / "runs")
    assert runs.loc[0, "eval_judge_requests"] == requests
    assert runs.loc[0, "eval_judge_prompt_tokens"] == metrics["eval_judge_prompt_tokens"]


def test_canary_evaluation_reports_what_its_judge_cost(tiny_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = local_judge_config(tiny_dir, tmp_path / "data")
    model, tok = AutoModelForCausalLM.from_pretrained(tiny_dir), AutoTokenizer.from_pretrained(tiny_dir)
    canary = make_canary_fn(cfg)
    first, second = canary(model, tok, 0), canary(model, tok, 2)
    for result in (first, second):  # per evaluation, not the judge's running total
        assert result.judge_usage["requests"] >= 4
        assert result.judge_usage["completion_tokens"] == result.judge_usage["requests"]
    assert judge_usage(canary.judge)["requests"] == first.judge_usage["requests"] + second.judge_usage["requests"]


class CostlyCanary(ScriptedCanary):
    def __call__(self, model, tokenizer, step: int) -> CanaryResult:
        result = super().__call__(model, tokenizer, step)
        result.judge_usage = {"requests": 3, "prompt_tokens": 300, "completion_tokens": 3}
        return result


def test_training_sums_the_canary_judges_cost(tmp_path):
    model, data = make_tiny_training_world(tmp_path / "world", n_target=48, n_safe=16)
    cfg = load_config(
        [],
        [
            f"model.name_or_path={model}",
            f"data.dir={data}",
            "controller.K=2",
            "lora.r=4",
            "lora.alpha=8",
            "train.micro_batch_size=8",
        ],
    )
    metrics = train_from_config(cfg, tmp_path / "run", canary_fn=CostlyCanary([0.1]))
    n = metrics["n_canary_evals"]
    assert n > 1
    assert (
        metrics["canary_judge_requests"],
        metrics["canary_judge_prompt_tokens"],
        metrics["canary_judge_completion_tokens"],
    ) == (3 * n, 300 * n, 3 * n)
