"""Model loading, dtype/device choice and the seeded rs-LoRA adapter on the tiny offline Qwen2.

Run: .venv/bin/pytest tests/test_train_models.py
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

import canary_lib.models as models
from _fixtures import make_tiny_training_world
from canary_lib.chat import encode_chat, read_chat_jsonl
from canary_lib.config import LoraSettings, ModelConfig, load_config
from canary_lib.models import (
    add_rslora,
    attention_kernels,
    base_dtype,
    choose_dtype,
    load_model_and_tokenizer,
    mixed_precision,
    resolve_model_path,
)
from canary_lib.train import make_optimizer, train_step


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_tiny_training_world(tmp_path_factory.mktemp("world"), n_target=40, n_safe=20)


def _load(world):
    cfg = load_config([], [f"model.name_or_path={world[0]}"])
    return load_model_and_tokenizer(cfg)


def test_loads_through_from_pretrained_on_cpu_in_float32(world):
    model, tokenizer = _load(world)
    assert next(model.parameters()).dtype == torch.float32 and next(model.parameters()).device.type == "cpu"
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert choose_dtype(ModelConfig(), torch.device("cpu")) == torch.float32
    assert choose_dtype(ModelConfig(dtype="bfloat16"), torch.device("cpu")) == torch.bfloat16


def test_rslora_trains_only_lora_on_all_seven_projections(world):
    model, _ = _load(world)
    lora = LoraSettings()  # the paper's r 32, alpha 64, rs-LoRA, all seven projections
    peft_model = add_rslora(model, lora, seed=3)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    for proj in lora.target_modules:
        assert any(f"{proj}.lora_A" in n for n in trainable), proj
    layer = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.scaling["default"] == pytest.approx(64 / math.sqrt(32))  # rs-LoRA: alpha / sqrt(r)
    assert torch.count_nonzero(layer.lora_B["default"].weight) == 0  # B = 0: the adapter starts as a no-op


def test_lora_init_is_seeded_and_leaves_global_rng_alone(world):
    lora = LoraSettings(r=4, alpha=8)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = add_rslora(_load(world)[0], lora, seed=5)
    assert torch.equal(torch.rand(3), expected_next)
    b = add_rslora(_load(world)[0], lora, seed=5)
    c = add_rslora(_load(world)[0], lora, seed=6)
    weights = lambda m: torch.cat([p.flatten() for n, p in m.named_parameters() if "lora_A" in n])  # noqa: E731
    assert torch.equal(weights(a), weights(b)) and not torch.equal(weights(a), weights(c))


def test_unknown_target_module_is_refused(world):
    with pytest.raises(ValueError, match="q_projj"):
        add_rslora(_load(world)[0], LoraSettings(target_modules=["q_proj", "q_projj"]), seed=0)


def _lora_output_dtypes(model, enabled):
    """The dtypes of every lora_A output during one forward pass under mixed_precision(model, enabled)."""
    seen = set()
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
        for n, m in model.named_modules()
        if n.endswith("lora_A.default")
    ]
    try:
        with torch.no_grad(), mixed_precision(model, enabled):
            model(input_ids=torch.tensor([[1, 2, 3]]))
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_mixed_precision_runs_lora_in_bf16_on_a_bf16_base_only(world):
    cfg = load_config([], [f"model.name_or_path={world[0]}", "model.dtype=bfloat16"])
    model = add_rslora(load_model_and_tokenizer(cfg)[0], LoraSettings(r=4, alpha=8), seed=0)
    lora_dtypes = {p.dtype for n, p in model.named_parameters() if "lora_" in n}
    assert lora_dtypes == {torch.float32} and base_dtype(model) == torch.bfloat16  # float32 master weights
    assert _lora_output_dtypes(model, enabled=True) == {torch.bfloat16}
    assert _lora_output_dtypes(model, enabled=False) == {torch.float32}  # peft upcasts the input to the weights
    fp32 = add_rslora(_load(world)[0], LoraSettings(r=4, alpha=8), seed=0)
    assert base_dtype(fp32) == torch.float32
    assert _lora_output_dtypes(fp32, enabled=True) == {torch.float32}  # the CPU organism is untouched


def test_bf16_step_under_autocast_keeps_float32_lora_and_moves_it(world):
    cfg = load_config([], [f"model.name_or_path={world[0]}", "model.dtype=bfloat16"])
    model, tok = load_model_and_tokenizer(cfg)
    model = add_rslora(model, LoraSettings(r=4, alpha=8), seed=0)
    optimizer = make_optimizer(model, cfg.train)
    assert not optimizer.defaults.get("fused")  # fused AdamW only for CUDA parameters
    batch = [encode_chat(c, tok, 256) for c in read_chat_jsonl(world[1] / "target_train.jsonl")[:4]]
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    loss = train_step(
        model,
        optimizer,
        batch,
        lr=1e-2,
        micro_batch_size=2,
        pad_token_id=tok.pad_token_id,
        max_grad_norm=1.0,
        autocast=True,
    )
    after = [p for p in model.parameters() if p.requires_grad]
    assert math.isfinite(loss) and loss > 0
    assert all(p.dtype == torch.float32 for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before))


def test_attention_kernels_leave_cudnn_out_unless_asked(monkeypatch):
    assert torch.backends.cuda.cudnn_sdp_enabled()
    with attention_kernels():
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled()  # restored
    monkeypatch.setattr(models, "CUDNN_ATTENTION", True)
    with attention_kernels():
        assert torch.backends.cuda.cudnn_sdp_enabled()


def test_resolve_model_path_passes_local_paths_through(world):
    cfg = load_config([], [f"model.name_or_path={world[0]}"])
    assert resolve_model_path(cfg) == str(world[0])


def test_cli_train_no_defense_run(world, tmp_path):
    model, data = world
    params = tmp_path / "params.yaml"
    params.write_text(
        f"model:\n  name_or_path: {model}\ndata:\n  dir: {data}\nmethod:\n  name: no_defense\n"
        "canary:\n  monitor_open_loop: false\nlora:\n  r: 4\n  alpha: 8\n"
    )
    out = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "canary_lib",
            "train",
            str(params),
            "--out",
            str(out),
            "--set",
            "train.micro_batch_size=8",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "TRAINING_COMPLETE").exists()
    assert (out / "steps.csv").read_text().count("\n") == 1 + 3  # header + ceil(40 / 16) target steps
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "canary_lib",
            "train",
            str(params),
            "--out",
            str(tmp_path / "x"),
            "--set",
            "train.lrr=1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "train.lrr" in bad.stderr
