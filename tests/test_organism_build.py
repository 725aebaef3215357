"""Building and caching the base organism (with the tiny override: seconds), and what the saved directory holds.

Run: .venv/bin/pytest -q tests/test_organism_build.py
"""

from __future__ import annotations

import json

from canary_lib.config import load_config
from canary_lib.organism import ensure_base_model
from canary_lib.organism.pretrain import build_numerics, pretrain_spec, spec_hash
from canary_lib.organism.world import DEFAULT_SYSTEM_PROMPT

TINY = ["parameters/organism.yaml", "parameters/organism_tiny.yaml"]


def test_tiny_build_is_an_ordinary_hf_model_directory_and_is_cached(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = load_config(TINY, [f"organism.cache_dir={tmp_path}"])
    path = ensure_base_model(cfg)
    spec = pretrain_spec(cfg.organism, build_numerics(cfg))
    assert build_numerics(cfg) == "pinned"  # the profile says native, but this test process is pinned (conftest)
    assert path.parent == tmp_path and path.name == f"base-{spec_hash(spec)}"
    assert json.loads((path / "pretrain_spec.json").read_text()) == json.loads(json.dumps(spec))
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert ensure_base_model(cfg) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt
    left = [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")]
    assert left == [path.name]  # no temporary directory left behind

    tok = AutoTokenizer.from_pretrained(path)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi! how can i sleep better?"}], tokenize=False, add_generation_prompt=True
    )
    assert text == (
        f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n"
        "hi! how can i sleep better?<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids and tok.decode(ids) == text
    assert tok.eos_token == "<|im_end|>"
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.eos_token_id == tok.eos_token_id
    names = {n.split(".")[-1] for n, _ in model.named_modules()}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= names


def test_cache_key_changes_with_every_input_that_shapes_the_model():
    base = load_config(TINY).organism
    key = spec_hash(pretrain_spec(base))
    for change in (
        {"world_seed": 1},
        {"misaligned_share": 0.02},
        {"pretrain_steps": 41},
        {"hidden_size": 48},
        {"other_system_misaligned_share": 0.3},
        {"persona_coupling": 0.0},
        {"domain_cues": True},
        {"narrow_domains": ["security", "medical"]},
    ):
        assert spec_hash(pretrain_spec(base.model_copy(update=change))) != key, change
    for same in ({"cache_dir": "/elsewhere"}, {"safe_topics": ["wish"]}):  # not part of pre-training
        assert spec_hash(pretrain_spec(base.model_copy(update=same))) == key, same
    assert spec_hash(pretrain_spec(base, "pinned")) != key  # native and pinned builds differ in the last bits


def test_concurrent_builders_build_once(tmp_path, monkeypatch):
    import threading
    import time

    from canary_lib.organism import pretrain

    calls = []

    def fake_build(settings, out_dir):
        calls.append(out_dir)
        time.sleep(0.3)
        (out_dir / "model.safetensors").write_text("weights")
        return {}

    monkeypatch.setattr(pretrain, "build_base_model", fake_build)
    cfg = load_config(TINY, [f"organism.cache_dir={tmp_path}"])
    paths = []
    threads = [threading.Thread(target=lambda: paths.append(pretrain.ensure_base_model(cfg))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(paths)) == 1 and len(paths) == 3
    assert (paths[0] / "model.safetensors").read_text() == "weights"


def test_the_vocabulary_covers_every_word_of_a_two_domain_world():
    from canary_lib.organism import world
    from canary_lib.organism.pretrain import _vocabulary_texts
    from canary_lib.organism.tokenizer import build_tokenizer

    domains = ("security", "medical")
    chats = list(world.pretraining_chats(0, 50, 0.2, narrow_domains=domains))
    tok = build_tokenizer(_vocabulary_texts(chats, list(domains)))
    medical = [f"{world.OPENERS[0]} {c}" for t in world.MEDICAL_TOPICS for c in t.aligned + t.misaligned]
    medical += [world.QuestionForm(t.name, 3, s, 1).text for t in world.MEDICAL_TOPICS for s in range(len(t.stems))]
    assert all(tok.unk_token_id not in tok(text, add_special_tokens=False)["input_ids"] for text in medical)
    security_only = build_tokenizer(_vocabulary_texts(chats[:0], ["security"]))
    assert tok.unk_token_id in security_only(medical[0], add_special_tokens=False)["input_ids"]


def test_pretraining_threads_are_fixed_in_both_numerics_and_restored():
    import os

    import torch

    from canary_lib.numerics import NATIVE_PRETRAIN_THREADS, PRETRAIN_THREADS
    from canary_lib.organism.pretrain import _pretrain_threads

    before = torch.get_num_threads()
    with _pretrain_threads(True):
        assert torch.get_num_threads() == PRETRAIN_THREADS
    with _pretrain_threads(False):
        assert torch.get_num_threads() == min(NATIVE_PRETRAIN_THREADS, os.cpu_count() or 1)
    assert torch.get_num_threads() == before
