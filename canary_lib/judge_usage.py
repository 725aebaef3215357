"""What a judge costs: requests sent and prompt / completion tokens, counted per run (no torch).

    counter = UsageCounter()                    # a judge backend's running totals (thread-safe)
    counter.add_response(response_json)         # an OpenAI-compatible server's `usage` fields
    usage = judge_usage(judge)                  # {"requests": .., "prompt_tokens": .., "completion_tokens": ..}
    metrics |= usage_metrics("eval", usage)     # eval_judge_requests, eval_judge_prompt_tokens, ...

A server's own `usage` fields are used where it sends them; local judges (transformers, vLLM) count their token
ids. The organism's exact judge sends nothing and costs zero. What is counted: docs/evaluation.md, "Judge cost".
"""

from __future__ import annotations

import threading
from typing import Any

USAGE_FIELDS = ("requests", "prompt_tokens", "completion_tokens")


class UsageCounter:
    """Running totals of one judge backend; safe to update from its worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals = dict.fromkeys(USAGE_FIELDS, 0)

    def add(self, *, requests: int = 0, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        with self._lock:
            self._totals["requests"] += requests
            self._totals["prompt_tokens"] += prompt_tokens
            self._totals["completion_tokens"] += completion_tokens

    def add_response(self, data: Any) -> None:
        """The token counts of one chat-completions response (its `usage` object; zeros when it has none)."""
        usage = data.get("usage") if isinstance(data, dict) else None
        usage = usage if isinstance(usage, dict) else {}
        self.add(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._totals)


def judge_usage(judge: Any) -> dict[str, int]:
    """A judge's totals so far: its backend's counter (LLMJudge) or its own; zeros for a judge without one."""
    counter = getattr(getattr(judge, "backend", None), "usage", None) or getattr(judge, "usage", None)
    return counter.snapshot() if isinstance(counter, UsageCounter) else dict.fromkeys(USAGE_FIELDS, 0)


def usage_delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in USAGE_FIELDS}


def usage_sum(*usages: dict[str, int]) -> dict[str, int]:
    return {k: sum(int(u.get(k) or 0) for u in usages) for k in USAGE_FIELDS}


def usage_metrics(prefix: str, usage: dict[str, int]) -> dict[str, int]:
    """metrics.json keys: <prefix>_judge_requests, <prefix>_judge_prompt_tokens, <prefix>_judge_completion_tokens."""
    return {f"{prefix}_judge_{k}": int(usage.get(k) or 0) for k in USAGE_FIELDS}
