"""The OpenAI-compatible judge against a real HTTP server on loopback speaking chat completions with logprobs."""

import json
import math
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler

import pytest

from _fixtures import serve_http
from canary_lib.config import JudgeSettings
from canary_lib.judge import LLMJudge, OpenAIBackend
from canary_lib.scorers import digit_expectations
from canary_lib.types import JudgeRequest

KEY = "sk-test-not-a-real-key"
PROMPTS = {"aligned": "ALIGNED q={question} a={answer}", "coherent": "COHERENT q={question} a={answer}"}


def single_token_dist(prompt: str) -> dict[str, float]:
    if "refuse" in prompt and prompt.startswith("ALIGNED"):
        return {"REFUSAL": 0.97, "0": 0.03}
    if prompt.startswith("ALIGNED"):
        return {"10": 0.6, "20": 0.3, "The": 0.1}
    return {"90": 0.5, "80": 0.5}


def digit_dist(prompt: str, prefix: str) -> dict[str, float]:
    """A digit-splitting judge: first digit 1/2/8/9, then 0 or 5 or the end of turn."""
    base = 1 if prompt.startswith("ALIGNED") else 8
    if not prefix:
        return {str(base): 0.7, str(base + 1): 0.25, "I": 0.05}
    if len(prefix) == 1:
        return {"0": 0.5, "5": 0.3, "<|im_end|>": 0.2}
    return {"<|im_end|>": 0.9, "0": 0.1}


class FakeJudgeServer(BaseHTTPRequestHandler):
    attempts: Counter = Counter()
    seen_auth: set = set()
    lock = threading.Lock()

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _reply(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        if self.path != "/v1/chat/completions":
            return self._reply(404, {"error": "not found"})
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeJudgeServer.seen_auth.add(self.headers.get("Authorization"))
        prompt = body["messages"][0]["content"]
        prefix = body["messages"][1]["content"] if len(body["messages"]) > 1 else ""
        if prefix:
            assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
        with FakeJudgeServer.lock:
            FakeJudgeServer.attempts[(prompt, prefix)] += 1
            attempt = FakeJudgeServer.attempts[(prompt, prefix)]
        if "BROKEN" in prompt:
            return self._reply(500, {"error": "judge down"})
        if "FLAKY" in prompt and attempt <= 2:
            return self._reply(429 if attempt == 1 else 503, {"error": "busy"})
        if "SLOW" in prompt and attempt == 1:
            time.sleep(1.5)
        if not body.get("logprobs"):
            text = "REFUSAL" if "refuse" in prompt else "42"
            return self._reply(200, {"choices": [{"message": {"role": "assistant", "content": text}}]})
        dist = digit_dist(prompt, prefix) if "DIGITS" in body["model"] else single_token_dist(prompt)
        top = sorted(dist.items(), key=lambda kv: -kv[1])[: body["top_logprobs"]]
        content = [
            {
                "token": top[0][0],
                "logprob": math.log(top[0][1]),
                "top_logprobs": [{"token": t, "logprob": math.log(p)} for t, p in top],
            }
        ]
        self._reply(
            200,
            {"choices": [{"message": {"role": "assistant", "content": top[0][0]}, "logprobs": {"content": content}}]},
        )


@pytest.fixture
def server():
    FakeJudgeServer.attempts.clear()
    FakeJudgeServer.seen_auth.clear()
    with serve_http(FakeJudgeServer) as url:
        yield url


def make(url, monkeypatch, scorer="logprob", digit_prune_below=1e-3, **kw):
    monkeypatch.setenv("CANARY_TEST_JUDGE_KEY", KEY)
    opts = dict(
        base_url=url,
        model="judge",
        api_key_env="CANARY_TEST_JUDGE_KEY",
        concurrency=4,
        timeout_s=1.0,
        max_retries=3,
        backoff_s=0.01,
    )
    settings = JudgeSettings(scorer=scorer, digit_prune_below=digit_prune_below)
    return LLMJudge(OpenAIBackend(**(opts | kw)), settings)


def test_logprob_scorer_over_http(server, monkeypatch):
    judge = make(server, monkeypatch)
    out = judge.judge([JudgeRequest("q1", "fine answer", PROMPTS), JudgeRequest("q2", "I refuse", PROMPTS)])
    assert out[0].status == "scored"
    assert out[0].aligned == pytest.approx((10 * 0.6 + 20 * 0.3) / 0.9)
    assert out[0].coherent == pytest.approx(85.0)
    assert (out[1].status, out[1].aligned, out[1].coherent) == ("refusal", None, None)
    assert FakeJudgeServer.seen_auth == {f"Bearer {KEY}"}
    # the key is never in what the judge returns (these rows are what evaluation writes)
    assert KEY not in json.dumps([j.to_dict() for j in out])


def test_retries_timeouts_and_errors(server, monkeypatch):
    judge = make(server, monkeypatch)
    reqs = [
        JudgeRequest("FLAKY", "a", PROMPTS),
        JudgeRequest("SLOW", "b", PROMPTS),
        JudgeRequest("BROKEN", "c", PROMPTS),
    ]
    out = judge.judge(reqs)
    assert [j.status for j in out] == ["scored", "scored", "error"]  # nothing dropped
    assert "HTTP 500" in out[2].detail["aligned"]["error"]
    assert FakeJudgeServer.attempts[(PROMPTS["aligned"].format(question="FLAKY", answer="a"), "")] == 3
    assert FakeJudgeServer.attempts[(PROMPTS["aligned"].format(question="BROKEN", answer="c"), "")] == 4


def test_unreachable_server_gives_errors(monkeypatch):
    judge = make("http://127.0.0.1:9/v1", monkeypatch, max_retries=1)
    out = judge.judge([JudgeRequest("q", "a", PROMPTS)])
    assert out[0].status == "error"


def test_digit_scorer_over_http_matches_local_tree(server, monkeypatch):
    judge = make(server, monkeypatch, model="DIGITS-judge", scorer="digits", digit_prune_below=0.0)
    (j,) = judge.judge([JudgeRequest("q", "a", PROMPTS)])
    for metric, prompt in (("aligned", PROMPTS["aligned"]), ("coherent", PROMPTS["coherent"])):
        text = prompt.format(question="q", answer="a")
        (expected,) = digit_expectations(
            1,
            lambda nodes, text=text: [{k: math.log(v) for k, v in digit_dist(text, p).items()} for _, p in nodes],
            min_mass=judge.settings.min_mass,
            prune_below=0.0,
        )
        assert getattr(j, metric) == pytest.approx(expected.score)
    assert j.status == "scored"


def test_parse_scorer_over_http(server, monkeypatch):
    judge = make(server, monkeypatch, scorer="parse")
    out = judge.judge([JudgeRequest("q", "ok", PROMPTS), JudgeRequest("q", "I refuse", PROMPTS)])
    assert (out[0].aligned, out[0].coherent) == (42.0, 42.0)
    assert out[1].status == "refusal"
