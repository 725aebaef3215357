"""canary_lib.stub_judge: the local stand-in judge shared by the tests and benchmarks/gpu_bench.py."""

from __future__ import annotations

import math
import time

import httpx

from canary_lib import stub_judge
from canary_lib.stub_judge import JSONHandler, StubJudgeServer, serve_http, stub_completion


def test_completion_follows_the_digit_prefix():
    root = stub_completion({"model": "m", "messages": [{"role": "user", "content": "rate it"}]})
    [choice] = root["choices"]
    assert root["model"] == "m" and choice["message"]["content"] == "8"
    top = choice["logprobs"]["content"][0]["top_logprobs"]
    assert {t["token"]: round(math.exp(t["logprob"]), 6) for t in top} == {"8": 0.7, "9": 0.2, "7": 0.1}
    after_one = stub_completion({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "8"}]})
    assert after_one["choices"][0]["message"]["content"] == "0"
    after_two = stub_completion(
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "80"}]}
    )
    assert after_two["choices"][0]["message"]["content"] == "<|im_end|>"


def test_server_answers_counts_and_refuses_other_routes():
    with StubJudgeServer(0.0) as server:
        ok = httpx.post(server.base_url + "/chat/completions", json={"model": "j", "messages": []}, timeout=5)
        assert ok.status_code == 200 and ok.json() == stub_completion({"model": "j", "messages": []})
        other = httpx.post(server.base_url + "/completions", json={}, timeout=5)
        assert other.status_code == 404 and "no route" in other.json()["error"]
        assert server.n_requests == 2 and server.running
    assert not server.running


def test_server_stops_itself_when_idle():
    with StubJudgeServer(0.0, idle_timeout_s=0.1) as server:
        deadline = time.monotonic() + 10
        while server.running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not server.running


class Echo(JSONHandler):
    def do_POST(self):  # noqa: N802
        self.send_json(201, {"got": self.read_json(), "path": self.path})


def test_serve_http_runs_a_handler_of_ones_own():
    import _fixtures

    assert _fixtures.serve_http is serve_http  # the tests' stub servers run on the package's
    with serve_http(Echo) as url:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        reply = httpx.post(url + "/x", json={"a": [1, "b"]}, timeout=5)
    assert reply.status_code == 201 and reply.json() == {"got": {"a": [1, "b"]}, "path": "/v1/x"}
    assert stub_judge.LoopbackServer.request_queue_size >= 1024  # a burst of judge connections is not dropped


def test_passes_a_judge_pre_flight(monkeypatch):
    """A dry run can point judge.base_url at it: the pre-flight finds its model and a continued-prefix answer."""
    from canary_lib.judge import check_judge_server

    monkeypatch.delenv("CANARY_STUB_NO_KEY", raising=False)
    with StubJudgeServer(0.0) as server:
        for scorer in ("digits", "logprob", "parse"):
            check_judge_server(
                server.base_url, "stub-judge", api_key_env="CANARY_STUB_NO_KEY", timeout_s=5.0, scorer=scorer
            )
        assert server.n_requests == 3  # the model list is not counted as a judge request
        assert httpx.get(server.base_url + "/other", timeout=5).status_code == 404
