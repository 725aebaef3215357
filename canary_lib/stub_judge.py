"""A local stand-in for an OpenAI-compatible judge, for tests, benchmarks and offline dry runs.

    with StubJudgeServer(latency_s=0.1) as server:     # chat completions on 127.0.0.1, on a free port
        ...judge.backend=openai, judge.base_url=<server.base_url>, judge.scorer=digits...
    with serve_http(MyHandler) as url:                 # a handler of one's own (e.g. a test's failing judge)
        ...

`StubJudgeServer` answers every `POST .../chat/completions` after a fixed latency with the same judge-like
next-token distribution (`stub_distribution`), with top log-probabilities, so the package's OpenAI-compatible
backend and its scorers run for real while the judge costs only its latency: every answer gets the same score.
It is what `benchmarks/gpu_bench.py` judges the canary with, and what tests/test_bench_gpu_cpu.py checks. It
needs no key (send none: it never checks one); it lists `models` (default "stub-judge") on GET /models, as a
judge's pre-flight asks; and it is bounded: after `max_requests` chat requests it answers 503 and stops, and it
stops after `idle_timeout_s` without requests.

`serve_http` runs any `BaseHTTPRequestHandler` on the same kind of loopback server for the length of a `with`
block; `JSONHandler` is a quiet handler base with JSON helpers. The tests' own fake judges (errors, retries,
usage fields) use both. Standard library only.
"""

from __future__ import annotations

import http.server
import json
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class LoopbackServer(http.server.ThreadingHTTPServer):
    """A threading HTTP server with a real server's listen backlog.

    socketserver's backlog is 5: a burst of 64 judge connections overflows it, and the dropped SYNs come back
    after TCP's 1 s retransmission timeout (measured: 6.3 s instead of 0.9 s for a canary's judging)."""

    daemon_threads = True
    request_queue_size = 1024  # uvicorn: 2048


@contextmanager
def serve_http(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """`handler` served on a free loopback port in a daemon thread for the length of the block; yields its base
    URL, ``http://127.0.0.1:PORT/v1``."""
    httpd = LoopbackServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


class JSONHandler(http.server.BaseHTTPRequestHandler):
    """A request handler that logs nothing and speaks JSON: `read_json()` and `send_json(status, payload)`."""

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def read_json(self) -> Any:
        """The request's body as JSON ({} when empty)."""
        length = int(self.headers.get("Content-Length", 0))
        return json.loads(self.rfile.read(length) or b"{}")

    def send_json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def stub_distribution(prefix: str) -> dict[str, float]:
    """The stub judge's next-token probabilities after a digit prefix (a peaked, judge-like shape).

    Root: 8 / 9 / 7; after one digit: 0 / 5 / end of turn; after two: end of turn. The digits scorer then
    sends 1 + 3 + 6 = 10 requests per judge prompt (20 per answer: aligned and coherent).
    """
    if not prefix:
        return {"8": 0.7, "9": 0.2, "7": 0.1}
    if len(prefix) == 1:
        return {"0": 0.6, "5": 0.3, "<|im_end|>": 0.1}
    return {"<|im_end|>": 1.0}


def stub_completion(body: dict) -> dict:
    """The chat-completions reply to a request `body`: the most likely token of `stub_distribution` after the
    assistant prefix (the last message, when it is the assistant's), with every token's log-probability."""
    messages = body.get("messages") or []
    prefix = messages[-1]["content"] if messages and messages[-1].get("role") == "assistant" else ""
    dist = stub_distribution(prefix)
    top = [{"token": t, "logprob": math.log(p)} for t, p in dist.items()]
    first = max(dist, key=dist.__getitem__)
    return {
        "id": "stub",
        "object": "chat.completion",
        "model": body.get("model"),
        "choices": [
            {
                "index": 0,
                "finish_reason": "length",
                "message": {"role": "assistant", "content": first},
                "logprobs": {"content": [{"token": first, "logprob": top[0]["logprob"], "top_logprobs": top}]},
            }
        ],
    }


class _StubJudgeHandler(JSONHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: Nagle + delayed ACK would add ~40 ms
    server: _StubHTTPServer

    def do_POST(self) -> None:  # noqa: N802
        stub = self.server.stub
        body = self.read_json()
        over = stub.count_request()
        if over or not self.path.endswith("/chat/completions"):
            self.send_json(
                503 if over else 404,
                {"error": "stub judge: over its request bound" if over else f"no route {self.path}"},
            )
            if over:
                stub.stop_async()
            return
        time.sleep(stub.latency_s)
        self.send_json(200, stub_completion(body))

    def do_GET(self) -> None:  # noqa: N802 - the model list a judge pre-flight asks for (not counted)
        if self.path.endswith("/models"):
            self.send_json(
                200, {"object": "list", "data": [{"id": m, "object": "model"} for m in self.server.stub.models]}
            )
        else:
            self.send_json(404, {"error": f"no route {self.path}"})


class _StubHTTPServer(LoopbackServer):
    stub: StubJudgeServer


class StubJudgeServer:
    """A chat-completions server on 127.0.0.1 answering every request after a fixed latency (module docstring).

    Bounded: after `max_requests` it answers 503 and stops; it also stops itself after `idle_timeout_s`
    without requests, and on `stop()` / leaving the `with` block.
    """

    def __init__(
        self,
        latency_s: float,
        *,
        max_requests: int = 20_000,
        idle_timeout_s: float = 300.0,
        models: tuple[str, ...] = ("stub-judge",),
    ) -> None:
        self.latency_s = latency_s
        self.models = models
        """What GET /models lists (a judge's pre-flight checks that judge.model is there)."""
        self.max_requests = max_requests
        self.idle_timeout_s = idle_timeout_s
        self.n_requests = 0
        self.last_request = time.monotonic()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._httpd = _StubHTTPServer(("127.0.0.1", 0), _StubJudgeHandler)
        self._httpd.stub = self
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._watchdog = threading.Thread(target=self._watch_idle, daemon=True)

    def __enter__(self) -> StubJudgeServer:
        self._thread.start()
        self._watchdog.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def count_request(self) -> bool:
        """Count a request; True when it is over the bound."""
        with self._lock:
            self.n_requests += 1
            self.last_request = time.monotonic()
            return self.n_requests > self.max_requests

    def _watch_idle(self) -> None:
        while not self._stopped.wait(1.0):
            if time.monotonic() - self.last_request > self.idle_timeout_s:
                self.stop()

    def stop_async(self) -> None:
        threading.Thread(target=self.stop, daemon=True).start()

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def running(self) -> bool:
        return not self._stopped.is_set()
