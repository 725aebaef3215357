"""The OpenAI-compatible judge honours a server's Retry-After (as the openai SDK does), else backs off."""

from __future__ import annotations

import email.utils
import json
import time
from http.server import BaseHTTPRequestHandler

from _fixtures import serve_http
from canary_lib.judge import MAX_RETRY_AFTER_S, OpenAIBackend, retry_delay


def test_delay_from_retry_after_seconds_date_or_backoff():
    assert retry_delay("2", 1.0, 0) == 2.0
    assert retry_delay("0.5", 1.0, 3) == 0.5
    assert retry_delay("3600", 1.0, 0) == MAX_RETRY_AFTER_S
    in_five = email.utils.formatdate(time.time() + 5, usegmt=True)
    assert 3.0 <= retry_delay(in_five, 1.0, 0) <= 5.0
    assert retry_delay(email.utils.formatdate(time.time() - 60, usegmt=True), 1.0, 0) == 0.0
    for header in (None, "", "soon"):  # no usable header: exponential backoff with jitter
        assert 0.5 * 4 <= retry_delay(header, 1.0, 2) <= 1.5 * 4


class BusyOnce(BaseHTTPRequestHandler):
    times: list = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        BusyOnce.times.append(time.monotonic())
        first = len(BusyOnce.times) == 1
        body = json.dumps({"error": "busy"} if first else {"choices": [{"message": {"content": "42"}}]}).encode()
        self.send_response(429 if first else 200)
        if first:
            self.send_header("Retry-After", "1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_a_429_with_retry_after_waits_that_long():
    BusyOnce.times.clear()
    with serve_http(BusyOnce) as url:
        backend = OpenAIBackend(
            base_url=url,
            model="m",
            api_key_env="CANARY_NO_KEY",
            concurrency=1,
            timeout_s=5.0,
            max_retries=2,
            backoff_s=0.001,
        )  # without the header the retry would come after ~1 ms
        assert backend.greedy_texts(["p"], 4) == ["42"]
    assert len(BusyOnce.times) == 2 and BusyOnce.times[1] - BusyOnce.times[0] >= 0.95
