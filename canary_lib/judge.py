"""The LLM judge: one dispatch from the configured scorer to a backend's two primitives.

    judge = make_judge(cfg)                        # cfg.judge: backend, scorer, model, limits
    verdicts = judge.judge([JudgeRequest(question, answer, prompts), ...])

`LLMJudge` fills each request's own `aligned` and `coherent` templates, scores every prompt with the scorer
cfg.judge.scorer names (`canary_lib.scorers`) and combines the two verdicts. A backend (OpenAI-compatible server,
transformers, vLLM; canary_lib/judge_backends.py) offers only what the scorers need: next-token log-probabilities
after prompts and prefixes, and greedy text. `judge.backend: exact` is the organism's rule-based judge.
`JUDGE_BACKENDS` names every backend: a new one is its class plus one entry there. Choices: docs/evaluation.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from canary_lib.errors import CanaryError
from canary_lib.judge_backends import (  # noqa: F401 - re-exported: canary_lib.judge names every backend piece
    MAX_RETRY_AFTER_S,
    OPENAI_URL,
    JudgeBackend,
    JudgeHTTPError,
    NextTokens,
    OpenAIBackend,
    TransformersBackend,
    VLLMBackend,
    judge_chat,
    retry_delay,
)
from canary_lib.redact import redact, register_secret
from canary_lib.scorers import (
    PARSE_MAX_TOKENS,
    TOP_LOGPROBS,
    MetricScore,
    digit_expectations,
    error_score,
    metric_from_text,
    metric_from_top_logprobs,
)
from canary_lib.types import JUDGED_METRICS, Judge, JudgeRequest, Judgment

if TYPE_CHECKING:  # pragma: no cover
    from canary_lib.config_schema import JudgeSettings, RunConfig

TRUNCATION_MARKER = "\n[... answer truncated for the judge: {n} more characters]"


# ------------------------------------------------------------------------------------------ prompts, verdicts


def truncate_answer(answer: str, max_chars: int) -> tuple[str, bool]:
    """Keep the first max_chars characters and say how many were cut (the judge sees the marker)."""
    if len(answer) <= max_chars:
        return answer, False
    return answer[:max_chars] + TRUNCATION_MARKER.format(n=len(answer) - max_chars), True


def judge_prompt(request: JudgeRequest, metric: str, max_answer_chars: int) -> str:
    """The question's own template for `metric`, filled with the question and the (truncated) answer."""
    if metric not in request.prompts:
        raise KeyError(f"no judge prompt for metric {metric!r} (have {sorted(request.prompts)})")
    answer, _ = truncate_answer(request.answer, max_answer_chars)
    return request.prompts[metric].format(question=request.question, answer=answer)


def combine(aligned: MetricScore, coherent: MetricScore, *, truncated: bool = False) -> Judgment:
    """One Judgment from the two metric verdicts.

    REFUSAL / CODE (offered by the aligned prompt) make both scores None; an error in either metric gives
    "error"; a metric without enough numeric mass gives "low_mass" (the other score is kept for inspection but
    the answer counts as unscored).
    """
    detail = {
        "aligned": aligned.detail | {"status": aligned.status},
        "coherent": coherent.detail | {"status": coherent.status},
    }
    if truncated:
        detail["truncated"] = True
    if aligned.status in ("refusal", "code"):
        return Judgment(None, None, aligned.status, detail)
    statuses = {aligned.status, coherent.status}
    status = "error" if "error" in statuses else "scored" if statuses == {"scored"} else "low_mass"
    return Judgment(aligned.score, coherent.score, status, detail)


# ------------------------------------------------------------------------------------------ the dispatch


class LLMJudge:
    """A judge model behind a `JudgeBackend`, scored by settings.scorer; implements `canary_lib.types.Judge`."""

    def __init__(self, backend: JudgeBackend, settings: JudgeSettings) -> None:
        self.backend = backend
        self.settings = settings

    def judge(self, requests: Sequence[JudgeRequest]) -> list[Judgment]:
        """Both metrics of every request; a request that cannot be judged becomes an "error" row, never a gap."""
        prompts: list[str] = []
        failures: dict[int, str] = {}
        for r, request in enumerate(requests):
            try:
                prompts += [judge_prompt(request, m, self.settings.max_answer_chars) for m in JUDGED_METRICS]
            except (KeyError, IndexError, ValueError) as exc:
                failures[r] = f"judge prompt: {exc}"
        try:
            scores = iter(self.score_prompts(prompts))
        except Exception as exc:  # noqa: BLE001 - a failed batch must become "error" rows, never vanish
            scores = iter([error_score(exc)] * len(prompts))
        out = []
        for r, request in enumerate(requests):
            if r in failures:
                out.append(Judgment(None, None, "error", {"error": failures[r][:500]}))
            else:
                aligned, coherent = next(scores), next(scores)
                truncated = len(request.answer) > self.settings.max_answer_chars
                out.append(combine(aligned, coherent, truncated=truncated))
        return out

    def score_prompts(self, prompts: Sequence[str]) -> list[MetricScore]:
        """One MetricScore per filled judge prompt, at most backend.max_batch prompts at a time."""
        size = self.backend.max_batch or max(1, len(prompts))
        return [s for start in range(0, len(prompts), size) for s in self._score(prompts[start : start + size])]

    def _score(self, prompts: Sequence[str]) -> list[MetricScore]:
        s = self.settings
        if s.scorer == "parse":
            texts = self.backend.greedy_texts(prompts, PARSE_MAX_TOKENS)
            return [error_score(t) if isinstance(t, Exception) else metric_from_text(t) for t in texts]
        failed: dict[int, Exception] = {}
        next_tokens = self.backend.next_token_logprobs(prompts, TOP_LOGPROBS if s.scorer == "logprob" else None)

        def distributions(nodes: Sequence[tuple[int, str]]) -> list[dict[str, float]]:
            out = []
            for (i, _), dist in zip(nodes, next_tokens(nodes)):
                if isinstance(dist, Exception):  # this prompt's request failed: its score becomes "error"
                    failed.setdefault(i, dist)
                    dist = {}
                out.append(dist)
            return out

        if s.scorer == "logprob":
            roots = distributions([(i, "") for i in range(len(prompts))])
            scores = [metric_from_top_logprobs(d, s.min_mass) for d in roots]
        else:
            scores = digit_expectations(
                len(prompts), distributions, min_mass=s.min_mass, prune_below=s.digit_prune_below
            )
        return [error_score(failed[i]) if i in failed else score for i, score in enumerate(scores)]

    def close(self) -> None:
        getattr(self.backend, "close", lambda: None)()


# ------------------------------------------------------------------------------------------ the registry


@dataclass(frozen=True)
class JudgeBackendSpec:
    """One judge backend: how the run's configuration builds it, and which of its settings are operational."""

    build: Callable[[RunConfig], Any]
    """The run's configuration -> its JudgeBackend (wrapped in LLMJudge with judge.scorer), or, for a judge that
    is not an LLM (llm False), the Judge itself."""
    llm: bool = True
    """An LLM judge behind a JudgeBackend: it needs judge.model and scores with judge.scorer."""
    operational: tuple[str, ...] = ()
    """Its judge.* settings that change where or how fast it runs, never its verdicts: never part of a run
    directory's binding (canary_lib.binding.OPERATIONAL, with the canary judge's canary.judge.* copies)."""


def _exact_judge(cfg: RunConfig) -> Judge:
    from canary_lib.organism.judge import ExactJudge

    return ExactJudge()


JUDGE_BACKENDS: dict[str, JudgeBackendSpec] = {
    "exact": JudgeBackendSpec(_exact_judge, llm=False),
    "openai": JudgeBackendSpec(
        OpenAIBackend.from_config, operational=("base_url", "api_key_env", "concurrency", "timeout_s", "max_retries")
    ),
    "transformers": JudgeBackendSpec(TransformersBackend.from_config),
    "vllm": JudgeBackendSpec(VLLMBackend.from_config, operational=("gpu_memory_utilization", "tensor_parallel_size")),
}
"""Backend name (judge.backend) -> JudgeBackendSpec; configuration validation checks judge.backend against it
(canary_lib.config_loader.REGISTRIES), so a new backend is its class plus one entry here."""


def make_judge(cfg: RunConfig) -> Judge:
    """The judge cfg.judge describes (backend, scorer, model, limits); cfg.model.device places a local judge."""
    j = cfg.judge
    if j.backend not in JUDGE_BACKENDS:
        raise ValueError(f"unknown judge backend {j.backend!r}; expected one of {sorted(JUDGE_BACKENDS)}")
    spec = JUDGE_BACKENDS[j.backend]
    if not spec.llm:
        return spec.build(cfg)
    if not j.model:
        raise ValueError(f"judge.model must name the judge model for the {j.backend} backend")
    return LLMJudge(spec.build(cfg), j)


# ------------------------------------------------------------------------------------------ pre-flight


class JudgeUnavailableError(CanaryError):
    """The configured judge server cannot judge (not running, wrong address, model not served); one line."""


def _start_hint(base_url: str, model: str) -> str:
    from urllib.parse import urlsplit

    port = urlsplit(base_url).port
    return (
        f"start it first (`vllm serve {model}"
        + (f" --port {port}`" if port else "`")
        + ") or set judge.base_url to where it runs"
    )


PREFLIGHT_PROMPT = "Answer with a number from 0 to 100."
"""The pre-flight's one judge request (check_judge_server); a test stub can tell it from a real judge prompt."""


def check_judge_server(
    base_url: str, model: str, *, api_key_env: str, timeout_s: float, scorer: str = "digits"
) -> None:
    """Refuse, in one line and without retries, a judge server that cannot judge: called before any model loads.

    Checks that base_url has an http(s) scheme, that the server lists `model` (GET /models), and that it answers
    one request the scorer needs: a top-20 request with a partial assistant message (`continue_final_message`,
    the digits scorer), a top-20 request (logprob) or a plain one (parse).

    Raises:
        JudgeUnavailableError: what is wrong and what to start.
    """
    import httpx

    if not base_url.startswith(("http://", "https://")):
        raise JudgeUnavailableError(f"judge.base_url {base_url!r} has no scheme: write it as http://HOST:PORT/v1")
    key = os.environ.get(api_key_env)
    if key:
        register_secret(key)  # masked in every text below, as in the judge's own errors
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    root = base_url.rstrip("/")
    timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0))
    try:
        with httpx.Client(timeout=timeout, headers=headers) as client:
            listing = client.get(root + "/models")
            if listing.status_code >= 400:
                raise JudgeUnavailableError(
                    f"the judge server at {base_url} answered GET /models with HTTP "
                    f"{listing.status_code}: {' '.join(redact(listing.text)[:200].split())}"
                )
            served = [m.get("id") for m in listing.json().get("data", [])]
            if model not in served:
                raise JudgeUnavailableError(
                    f"judge model {model!r} is not served there ({base_url} serves "
                    f"{served}); {_start_hint(base_url, model)}"
                )
            body: dict[str, Any] = {
                "model": model,
                "messages": judge_chat(PREFLIGHT_PROMPT),
                "max_tokens": 1,
                "temperature": 0,
            }
            if scorer != "parse":
                body |= {"logprobs": True, "top_logprobs": TOP_LOGPROBS}
            if scorer == "digits":
                body["messages"].append({"role": "assistant", "content": "1"})
                body |= {"continue_final_message": True, "add_generation_prompt": False}
            answer = client.post(root + "/chat/completions", json=body)
    except httpx.TransportError as exc:  # refused, unreachable, timed out: no retries here
        raise JudgeUnavailableError(
            f"no judge server answers at {base_url} ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:120]}); {_start_hint(base_url, model)}"
        ) from None
    except (json.JSONDecodeError, AttributeError):
        raise JudgeUnavailableError(
            f"{base_url}/models did not answer a model list: is it an OpenAI-compatible "
            "server (the address should end in /v1)?"
        ) from None
    what = {
        "digits": "a continued-prefix top-20 request (continue_final_message, a vLLM server extension: use "
        "judge.scorer logprob for hosted APIs)",
        "logprob": "a top-20 log-probability request",
        "parse": "a chat request",
    }[scorer]
    if answer.status_code >= 400:
        raise JudgeUnavailableError(
            f"the judge server at {base_url} refused {what}: HTTP {answer.status_code}: "
            f"{' '.join(redact(answer.text)[:200].split())}"
        )
    try:
        choice = answer.json()["choices"][0]
        if scorer != "parse" and not choice["logprobs"]["content"][0]["top_logprobs"]:
            raise KeyError("top_logprobs")
    except (KeyError, IndexError, TypeError, json.JSONDecodeError) as exc:
        raise JudgeUnavailableError(
            f"the judge server at {base_url} answered {what} without the expected fields ({exc!r})"
        ) from None


def preflight_judge(cfg: RunConfig, settings: JudgeSettings | None = None) -> None:
    """`check_judge_server` for a judge behind a server (backend openai); nothing for local judges. `settings`:
    the judge to check (default cfg.judge, the evaluation judge; training passes the canary judge)."""
    j = settings or cfg.judge
    if j.backend == "openai" and j.model:
        check_judge_server(
            j.base_url or OPENAI_URL,
            j.model,
            api_key_env=j.api_key_env,
            timeout_s=min(j.timeout_s, 30.0),
            scorer=j.scorer,
        )
