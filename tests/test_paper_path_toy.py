"""The paper's code path end to end at toy size: `canary prep-data`, `train` and `eval` with parameters/paper.yaml
plus a small overlay (tiny Qwen2 models with the Qwen2.5 chat template, data from small local sources in each real
source's format, K = 2), then Table 1's row. Once through the transformers backends (generation and an LLM judge
in-process), once as on the GPU path: the judge behind a real `vllm serve` (judge.backend openai, as the paper
profile) and the evaluation's generation on vLLM (eval.backend vllm, VLLMGenerator with the trained rs-LoRA
adapter, in the vLLM environment's Python: CANARY_VLLM_PYTHON)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from _data_fixtures import write_paper_sources
from _e2e import need
from _fixtures import make_tiny_qwen2
from _vllm import REQUIRE_ENV, ROOT, VLLM_ENV, VLLM_PYTHON, VLLMServer, alive, make_tiny_judge_qwen2, vllm_problem
from canary_lib.cli import main
from canary_lib.results import build_table1, collect_runs

pytestmark = pytest.mark.slow


def overlay(tmp_path: Path, judge: dict) -> Path:
    """parameters/paper.yaml's settings at toy size; everything else (LoRA, optimizer, controller thresholds,
    gradient checkpointing, static-cache canaries, digits scorer) stays the paper's."""
    model = make_tiny_qwen2(tmp_path / "model", hidden_size=64)
    data = {
        "dir": str(tmp_path / "data"),
        "n_train": 24,
        "n_heldout": 10,
        **write_paper_sources(tmp_path / "src", n_security=40),
    }
    settings = {
        "model": {
            "name_or_path": str(model),
            "device": "cpu",
            "dtype": "float32",
            "max_length": 256,
            "device_memory_gib": None,
        },
        "train": {"batch_size": 4, "micro_batch_size": 2, "checkpoint_every": 4},
        "controller": {"K": 2},
        "canary": {"n_prompts": 4, "max_new_tokens": 8},
        "eval": {"samples_per_prompt": 2, "max_new_tokens": 8, "batch_size": 16, "backend": "transformers"},
        "judge": {"scorer": "digits", "concurrency": 8, "batch_size": 16, **judge},
        "data": data,
    }
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def run_paper_path(tmp_path: Path, toy: Path, *eval_overrides: str) -> dict:
    params = [str(ROOT / "parameters" / "paper.yaml"), str(toy)]
    run = tmp_path / "runs" / "canary" / "seed42"
    assert main(["prep-data", *params]) == 0
    assert main(["train", *params, str(ROOT / "parameters" / "methods" / "canary.yaml"), "--out", str(run)]) == 0
    controller = (run / "controller.csv").read_text().splitlines()
    assert len(controller) - 1 >= 3  # canary evaluations at t = 0, 2, 4, judged by the LLM judge
    canaries = [json.loads(line) for line in (run / "canary_answers.jsonl").read_text().splitlines()]
    assert canaries and all(c["status"] in ("scored", "low_mass", "refusal", "code") for c in canaries)
    assert any(c["status"] == "scored" and c["aligned"] is not None for c in canaries)
    overrides = [x for o in eval_overrides for x in ("--set", o)]
    assert main(["eval", str(run), *overrides]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    # 6 general and 5 in-domain questions, 2 answers each
    assert metrics["n_scored"] > 0 and metrics["eval_n_answers"] == 2 * (6 + 5)
    [row] = [r for _, r in build_table1(collect_runs(tmp_path / "runs")).iterrows() if r["method"] == "canary"]
    assert row["n_seeds"] == 1 and not math.isnan(row["general_misaligned_pct_mean"])
    return metrics


def test_paper_path_through_transformers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    judge = make_tiny_judge_qwen2(tmp_path / "judge")
    metrics = run_paper_path(tmp_path, overlay(tmp_path, {"backend": "transformers", "model": str(judge)}))
    print({k: metrics[k] for k in ("general_misaligned_pct", "n_scored", "n_unscored")})


def test_paper_path_on_vllm(tmp_path, monkeypatch):
    need(vllm_problem(), REQUIRE_ENV)
    monkeypatch.chdir(tmp_path)
    for key, value in VLLM_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("CANARY_VLLM_PYTHON", str(VLLM_PYTHON))
    judge = make_tiny_judge_qwen2(tmp_path / "judge")
    with VLLMServer(judge, log=tmp_path / "vllm-serve.log") as server:
        toy = overlay(
            tmp_path,
            {
                "backend": "openai",
                "model": server.model,
                "base_url": server.base_url,
                "api_key_env": "NO_SUCH_KEY_VARIABLE",
            },
        )
        metrics = run_paper_path(tmp_path, toy, "eval.backend=vllm", "eval.vllm_gpu_memory_utilization=0.1")
        pids = set(server.pids)
    assert not alive(pids)
    generations = [json.loads(x) for x in (tmp_path / "runs/canary/seed42/generations.jsonl").read_text().splitlines()]
    assert len(generations) == 22 and all(isinstance(g["answer"], str) for g in generations)
    recorded = yaml.safe_load((tmp_path / "runs/canary/seed42/config.yaml").read_text())
    assert recorded["eval"]["backend"] == "vllm" and recorded["judge"]["backend"] == "openai"
    print({k: metrics[k] for k in ("general_misaligned_pct", "n_scored", "n_unscored", "eval_generate_seconds")})
