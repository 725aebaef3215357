"""Everything around vLLM that runs without vLLM: rank rounding, adapter checks, LoRA ids, request building."""

import json
import os
import time

import pytest

from canary_lib.config import SamplingSettings
from canary_lib.generation import (
    LoRAIdAllocator,
    adapter_max_rank,
    lora_request_args,
    read_adapter_config,
    round_up_lora_rank,
    sample_seed,
    vllm_sampling_kwargs,
)


@pytest.mark.parametrize(
    "rank, expected", [(1, 1), (2, 8), (4, 8), (8, 8), (9, 16), (32, 32), (33, 64), (300, 320), (321, 512), (512, 512)]
)
def test_round_up_lora_rank(rank, expected):
    assert round_up_lora_rank(rank) == expected


def test_round_up_lora_rank_limits():
    with pytest.raises(ValueError):
        round_up_lora_rank(0)
    with pytest.raises(ValueError, match="512"):
        round_up_lora_rank(513)


def write_adapter(path, **config):
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(
        json.dumps({"r": 32, "lora_alpha": 64, "use_rslora": True, "bias": "none", **config})
    )
    (path / "adapter_model.safetensors").write_bytes(b"weights-v1")
    return path


def test_adapter_config_checks(tmp_path):
    cfg = read_adapter_config(write_adapter(tmp_path / "a"))
    assert cfg["use_rslora"] is True and adapter_max_rank(cfg) == 32
    assert adapter_max_rank({"r": 8, "rank_pattern": {"q_proj": 48}}) == 48
    with pytest.raises(ValueError, match="use_dora"):
        read_adapter_config(write_adapter(tmp_path / "b", use_dora=True))
    with pytest.raises(ValueError, match="modules_to_save"):
        read_adapter_config(write_adapter(tmp_path / "c", modules_to_save=["lm_head"]))
    with pytest.raises(FileNotFoundError):
        read_adapter_config(tmp_path / "missing")


def test_new_lora_id_for_every_adapter_version(tmp_path):
    alloc = LoRAIdAllocator()
    a, b = write_adapter(tmp_path / "a"), write_adapter(tmp_path / "b")
    name_a, id_a, path_a = lora_request_args(a, alloc)
    assert id_a == 1 and path_a == str(a.resolve()) and name_a == "adapter-1"
    assert alloc.id_for(a) == 1  # same adapter, same id (vLLM keeps it loaded)
    assert alloc.id_for(b) == 2
    # the same directory rewritten in place (a new checkpoint) must not reuse the cached id
    weights = a / "adapter_model.safetensors"
    weights.write_bytes(b"weights-v2-longer")
    os.utime(weights, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert alloc.id_for(a) == 3


def test_sampling_kwargs_per_answer():
    s = SamplingSettings(temperature=1.0, top_p=0.9, max_new_tokens=600)
    conv = [{"role": "user", "content": "hi"}]
    kw = vllm_sampling_kwargs(s, sample_seed(42, conv, 3))
    assert kw == {"n": 1, "temperature": 1.0, "top_p": 0.9, "max_tokens": 600, "seed": sample_seed(42, conv, 3)}
    assert 0 <= kw["seed"] < 2**63


def test_vllm_is_lazy():
    import importlib.util

    import canary_lib.generation  # noqa: F401  # importing the module never imports vllm

    if importlib.util.find_spec("vllm") is None:
        from canary_lib.generation import VLLMGenerator

        with pytest.raises(ImportError):
            VLLMGenerator("some-model")
