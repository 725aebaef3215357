"""The peak-memory estimate (canary_lib/memory.py): the model shapes give the published parameter counts, the
estimate meets the H100 measurement, and configurations that cannot fit their card are refused at load."""

from __future__ import annotations

import pytest

from _fixtures import make_tiny_qwen2
from canary_lib.config import ConfigError, load_config
from canary_lib.memory import (
    KNOWN_SHAPES,
    check_found_device,
    device_gib_of,
    model_shape,
    training_peak,
    vllm_judge_kv_gib,
)

PAPER, SMALL = "parameters/paper.yaml", "parameters/small_gpu.yaml"


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    from _vllm import ROOT

    monkeypatch.chdir(ROOT)


@pytest.mark.parametrize(
    "name, params",
    [
        ("Qwen/Qwen2.5-0.5B-Instruct", 494_032_768),
        ("Qwen/Qwen2.5-1.5B-Instruct", 1_543_714_304),
        ("Qwen/Qwen2.5-7B-Instruct", 7_615_616_512),
        ("Qwen/Qwen2.5-32B-Instruct", 32_763_876_352),
    ],
)
def test_shapes_give_published_parameter_counts(name, params):
    assert KNOWN_SHAPES[name].params == params


def test_estimate_meets_the_h100_measurement():
    """benchmarks/README.md: 30.8 GiB peak at 4 x 512 tokens, Qwen2.5-7B + rs-LoRA, no checkpointing."""
    cfg = load_config([PAPER], ["model.max_length=512", "train.gradient_checkpointing=false"])
    peak = training_peak(cfg)
    tensors = sum(peak[k] for k in ("weights", "lora_and_adam", "activations", "logits_and_loss"))
    assert tensors == pytest.approx(30.8, abs=0.5)
    assert peak["total"] > 30.8  # the context and fragmentation margin only adds


def test_paper_profile_fits_its_card_only_with_checkpointing():
    fits = training_peak(load_config([PAPER]))
    assert fits["total"] < 79 and fits["activations"] < 5
    with pytest.raises(ConfigError, match=r"paper.yaml: training Qwen/Qwen2.5-7B-Instruct needs about 8\d\.\d GiB"):
        load_config([PAPER], ["train.gradient_checkpointing=false"])


def test_small_gpu_claim_holds_and_its_former_settings_did_not():
    assert training_peak(load_config([SMALL]))["total"] < 15.7
    with pytest.raises(ConfigError, match="needs about 5\\d\\.\\d GiB.*15.7 GiB card"):
        load_config([SMALL], ["train.micro_batch_size=8", "train.gradient_checkpointing=false"])


def test_vllm_judge_needs_a_max_model_len_that_fits():
    cfg = load_config([PAPER], ["judge.backend=vllm"])
    free, need = vllm_judge_kv_gib(cfg, 79)
    assert need == pytest.approx(1.0) and free > need  # 4096 tokens x 64 layers x 8 KV heads x 128 x 2 x 2 bytes
    with pytest.raises(ConfigError, match="max_model_len = 32768 sequence needs 8.0 GiB"):
        load_config([PAPER], ["judge.backend=vllm", "judge.max_model_len=32768"])
    load_config([PAPER], ["judge.backend=vllm", "judge.max_model_len=32768", "judge.tensor_parallel_size=2"])


def test_unknown_card_or_model_is_not_checked(tmp_path):
    load_config([PAPER], ["train.gradient_checkpointing=false", "model.device_memory_gib=null"])
    assert training_peak(load_config(overrides=["model.name_or_path=someone/unknown-model"])) is None
    tiny = make_tiny_qwen2(tmp_path / "tiny", hidden_size=64)
    assert model_shape(str(tiny)).hidden == 64
    assert training_peak(load_config(overrides=[f"model.name_or_path={tiny}"]))["weights"] < 0.01


def test_found_device_check_needs_cuda():
    import torch

    check_found_device(
        load_config([PAPER], ["train.gradient_checkpointing=false", "model.device_memory_gib=null"]),
        torch.device("cpu"),
    )  # nothing to check on CPU
    assert device_gib_of(85_029_158_912) == 79.1  # an H100 80GB as torch reports it
