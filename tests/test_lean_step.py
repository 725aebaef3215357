"""The lean training step (canary_lib.lean) against the standard one on the tiny offline Qwen2 with rs-LoRA: the same
loss and gradients up to float rounding, the same update, bit-identical repeats, refusals, and the encoding cache.

Run: .venv/bin/python -m pytest -q tests/test_lean_step.py -n 0
"""

from __future__ import annotations

import pytest
import torch

from _fixtures import make_tiny_training_world
from canary_lib.chat import encode_chat, read_chat_jsonl
from canary_lib.config import load_config
from canary_lib.lean import EncodedExamples, LeanPathError, lean_train_step, merged_lora, supervised_loss_sum
from canary_lib.models import add_rslora, load_model_and_tokenizer
from canary_lib.train import train_step


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.set_num_threads(1)
    return make_tiny_training_world(tmp_path_factory.mktemp("lean"), n_target=24, n_safe=8)


def _model(world, *overrides: str):
    cfg = load_config([], [f"model.name_or_path={world[0]}", *overrides])
    model, tok = load_model_and_tokenizer(cfg)
    model = add_rslora(model, cfg.lora, seed=0)
    with torch.no_grad():  # a trained-looking adapter: B non-zero, so A gets a gradient too
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.02)
    return cfg, model, tok


def _batch(world, tok, n: int = 8):
    chats = read_chat_jsonl(world[1] / "target_train.jsonl")[:n]
    return [encode_chat(c, tok, 2048) for c in chats]


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_loss_and_gradients_match_the_standard_forward_within_rounding(world):
    import torch.nn.functional as F

    from canary_lib.chat import IGNORE_INDEX, collate

    _, model, tok = _model(world, "lora.dropout=0.0")
    tensors = collate(_batch(world, tok), tok.pad_token_id)

    logits = model(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"], use_cache=False).logits
    labels = tensors["labels"][:, 1:]
    supervised = labels != IGNORE_INDEX
    standard = F.cross_entropy(logits[:, :-1][supervised].float(), labels[supervised], reduction="sum")
    standard.backward()
    standard_grads = _grads(model)
    model.zero_grad(set_to_none=True)

    with merged_lora(model, frozen=False):
        lean = supervised_loss_sum(model, tensors["input_ids"], tensors["attention_mask"], tensors["labels"])
    lean.backward()
    lean_grads = _grads(model)

    assert int(supervised.sum()) < supervised.numel()  # logits were left out somewhere
    assert lean.item() == pytest.approx(standard.item(), rel=1e-6)
    assert lean_grads.keys() == standard_grads.keys() and len(lean_grads) > 0
    for name, grad in standard_grads.items():
        assert grad.abs().max() > 0, name  # both A and B receive a gradient
        rel = ((lean_grads[name] - grad).norm() / grad.norm()).item()
        assert rel < 1e-5, (name, rel)  # float32 rounding: measured about 1e-6


def test_lean_step_updates_like_the_standard_step_and_repeats_bit_for_bit(world):
    results = []
    for step_fn in (train_step, lean_train_step, lean_train_step):
        _, model, tok = _model(world, "lora.dropout=0.0")
        params = [p for p in model.parameters() if p.requires_grad]
        initial = torch.cat([p.detach().flatten() for p in params])
        optimizer = torch.optim.AdamW(params, lr=1e-3)
        batch = _batch(world, tok)
        losses = [
            step_fn(
                model, optimizer, batch, lr=1e-3, micro_batch_size=3, pad_token_id=tok.pad_token_id, max_grad_norm=1.0
            )
            for _ in range(3)
        ]
        results.append((losses, torch.cat([p.detach().flatten() for p in params]) - initial))
    (standard_losses, standard_w), (lean_losses, lean_w), (again_losses, again_w) = results
    assert lean_losses == pytest.approx(standard_losses, rel=1e-5)
    assert standard_losses[2] < standard_losses[0]  # the steps did train
    # Adam divides by sqrt(v), so a rounding difference in a near-zero gradient moves its weight by up to a few
    # 1e-6 of an lr of 1e-3: compare the whole update, not each weight.
    assert ((lean_w - standard_w).norm() / standard_w.norm()).item() < 1e-4
    assert again_losses == lean_losses and torch.equal(again_w, lean_w)  # same seed, same machine: same bits


def test_a_micro_batch_without_supervised_tokens_adds_nothing(world):
    """As in the standard step: an example cut before its answer (max_length) contributes no loss, no error."""
    results = []
    for step_fn in (train_step, lean_train_step):
        _, model, tok = _model(world, "lora.dropout=0.0")
        batch = _batch(world, tok, 4)
        batch[0] = encode_chat(read_chat_jsonl(world[1] / "target_train.jsonl")[0], tok, 8)
        assert batch[0].n_supervised == 0
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        results.append(
            step_fn(
                model, optimizer, batch, lr=1e-3, micro_batch_size=1, pad_token_id=tok.pad_token_id, max_grad_norm=None
            )
        )
    assert results[1] == pytest.approx(results[0], rel=1e-5)


def test_merged_lora_leaves_the_model_as_it_was(world):
    _, model, tok = _model(world, "lora.dropout=0.0")
    ids = torch.tensor([tok("hello world", add_special_tokens=False)["input_ids"]])
    before = model(input_ids=ids).logits
    state = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad(), merged_lora(model, frozen=True):
        merged = model(input_ids=ids).logits
    torch.testing.assert_close(merged, before, rtol=1e-4, atol=1e-5)
    assert torch.equal(model(input_ids=ids).logits, before)  # the standard forward is back, bit for bit
    assert all(torch.equal(p, state[n]) for n, p in model.named_parameters())


def test_lora_dropout_is_refused(world):
    _, model, tok = _model(world, "lora.dropout=0.1")
    with pytest.raises(LeanPathError, match="lora.dropout: 0"):
        with merged_lora(model, frozen=False):
            pass


def test_config_refuses_the_lean_step_with_lora_dropout(world):
    from canary_lib.config import ConfigError

    with pytest.raises(ConfigError, match=r"train.step: lean needs lora.dropout: 0 \(got 0.05\)"):
        load_config([], [f"model.name_or_path={world[0]}", "train.step=lean", "lora.dropout=0.05"])
    cfg = load_config([], [f"model.name_or_path={world[0]}", "train.step=lean", "lora.dropout=0"])
    assert cfg.train.step == "lean"
    assert load_config([], []).train.step == "standard"


def test_encoded_examples_encode_once_and_give_the_same_ids(world, monkeypatch):
    import canary_lib.lean as lean

    _, _, tok = _model(world, "lora.dropout=0.0")
    chats = read_chat_jsonl(world[1] / "target_train.jsonl")
    calls = []
    real = lean.encode_chat
    monkeypatch.setattr(lean, "encode_chat", lambda *a: calls.append(1) or real(*a))
    cache = EncodedExamples({"target": chats}, tok, 2048)
    first = cache.batch("target", [3, 1, 3])
    second = cache.batch("target", [1, 3])
    assert len(calls) == 2
    assert first[0] == encode_chat(chats[3], tok, 2048) and second[0] == encode_chat(chats[1], tok, 2048)


def test_training_loop_on_the_lean_step_follows_the_standard_run(world, tmp_path):
    """train.step: lean through train_from_config: the same steps, sources and lrs, losses within rounding,
    and a second lean run bit-identical to the first."""
    from canary_lib.artifacts import read_steps
    from canary_lib.train import train_from_config

    model, data = world
    base = [
        f"model.name_or_path={model}",
        f"data.dir={data}",
        "method.name=no_defense",
        "canary.monitor_open_loop=false",
        "train.micro_batch_size=4",
        "train.batch_size=8",
        "lora.r=4",
        "lora.alpha=8",
        "train.epochs=2",
        "train.lr=1e-3",
        "train.warmup_steps=0",
    ]
    steps = {}
    for name, step in (("standard", "standard"), ("lean", "lean"), ("lean_again", "lean")):
        train_from_config(load_config([], base + [f"train.step={step}"]), tmp_path / name)
        steps[name] = read_steps(tmp_path / name / "steps.csv")
    assert len(steps["standard"]) == 6
    for standard, lean in zip(steps["standard"], steps["lean"]):
        assert {k: v for k, v in standard.items() if k != "loss"} == {k: v for k, v in lean.items() if k != "loss"}
        assert lean["loss"] == pytest.approx(standard["loss"], rel=1e-5)
    assert steps["lean_again"] == steps["lean"]
    assert steps["lean"][-1]["loss"] < steps["lean"][0]["loss"]
    assert (tmp_path / "lean" / "steps.csv").read_bytes() == (tmp_path / "lean_again" / "steps.csv").read_bytes()
