"""benchmarks/gpu_bench.py on CPU with --size tiny: the whole logic end to end, and its pieces."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import httpx
import pytest

from _scripts import load_benchmark

bench = load_benchmark("gpu_bench")

FIGURE_KEYS = {
    "s_per_step",
    "step_seconds",
    "tokens_per_s",
    "supervised_tokens_per_s",
    "peak_mem_gib",
    "mfu",
    "mfu_frozen",
}


@pytest.mark.slow
def test_tiny_end_to_end(tmp_path):
    trl_there = importlib.util.find_spec("trl") is not None and importlib.util.find_spec("datasets") is not None
    report = bench.main(["--size", "tiny", "--out", str(tmp_path), "--timed-steps", "2", "--warmup-steps", "1"])

    on_disk = json.loads((tmp_path / "bench.json").read_text())
    assert on_disk["phases_done"][-1] == "done" and on_disk["errors"] == {}
    assert on_disk["size"] == "tiny" and on_disk["package"]["s_per_step"] == report["package"]["s_per_step"]
    for key in (
        "versions",
        "device",
        "peak_tflops",
        "package",
        "package_repeat",
        "references",
        "ratios",
        "canary",
        "overhead",
        "model",
        "settings",
        "flops",
        "wall_seconds",
    ):
        assert key in on_disk, key
    for name in ("torch", "transformers", "peft", "cuda", "gpu", "python"):
        assert name in on_disk["versions"]

    settings = on_disk["settings"]
    assert (settings["batch_size"], settings["micro_batch_size"], settings["accumulation"]) == (16, 4, 4)
    assert settings["tokens_per_step"] == 16 * 32
    assert 0 < settings["supervised_tokens_per_step"] < settings["tokens_per_step"]  # prompt part masked

    # The paper's rs-LoRA: r 32 on all seven projections of every layer -> 32 * (in + out) per projection.
    model = on_disk["model"]
    assert model["lora"]["r"] == 32 and model["lora"]["alpha"] == 64 and model["lora"]["use_rslora"]
    h, i, layers = 64, 128, 2
    kv = 2 * h // 4  # 2 KV heads of head_dim 16
    per_layer = 32 * ((h + h) + 2 * (h + kv) + (h + h) + 3 * (h + i))
    assert model["n_lora"] == layers * per_layer

    for fig in (on_disk["package"], on_disk["package_repeat"]):
        assert FIGURE_KEYS <= set(fig)
        assert len(fig["step_seconds"]) == 2 and fig["s_per_step"] > 0
        assert math.isclose(fig["tokens_per_s"], 16 * 32 / fig["s_per_step"])
        assert 0 < fig["mfu_frozen"] < fig["mfu"]
        assert all(math.isfinite(x) for x in fig["losses"])
    # the loss is a real next-token loss over a ~600-token vocabulary at random init
    assert 4.0 < on_disk["package"]["losses"][0] < 9.0

    trainer = on_disk["references"]["trainer"]
    assert FIGURE_KEYS <= set(trainer) and len(trainer["step_seconds"]) == 2
    assert math.isclose(
        on_disk["ratios"]["trainer"]["speedup"], trainer["s_per_step"] / on_disk["package"]["s_per_step"]
    )
    # the same tokens and mask: the mean loss of a few steps at lr 1e-4 agrees with the package's
    assert abs(trainer["train_loss"] - on_disk["package"]["train_loss"]) < 0.3
    assert trainer["trainer"] == "Trainer" and trainer["bf16_autocast"] is False  # CPU: no autocast
    if trl_there:
        sft = on_disk["references"]["sft"]
        assert FIGURE_KEYS <= set(sft) and sft["trainer"] == "SFTTrainer"
        assert abs(sft["train_loss"] - on_disk["package"]["train_loss"]) < 0.3
    else:
        assert "skipped" in on_disk["references"]["sft"]
    assert on_disk["forward_patches_left"] == []  # the references' forward wrappers were undone

    canary = on_disk["canary"]
    assert canary["n_answers"] == 20 and canary["max_new_tokens"] == 4
    assert canary["judge_statuses"] == {"scored": 20}  # every answer judged by the stub through the real backend
    assert canary["judge_requests"] == 20 * 2 * 10  # digits scorer: 1 + 3 + 6 requests per judge prompt
    for key in ("canary", "canary_static"):  # random weights: every answer runs to max_new_tokens
        assert on_disk[key]["token_steps"] == 4
        assert math.isclose(on_disk[key]["s_per_token_step"], on_disk[key]["generation_seconds"] / 4)
    assert canary["canary_seconds"] >= canary["judge_seconds"] > 0
    assert math.isclose(canary["generation_seconds"] + canary["judge_seconds"], canary["canary_seconds"])
    overhead = on_disk["overhead"]
    assert overhead["K"] == 30
    step = on_disk["package"]["s_per_step"]
    # the headline overhead is the steady state (the second evaluation); the first is kept beside it
    assert math.isclose(overhead["pct"], 100 * on_disk["canary_repeat"]["canary_seconds"] / (30 * step))
    assert math.isclose(overhead["pct_first"], 100 * canary["canary_seconds"] / (30 * step))
    # the static-cache canary (canary.static_cache) draws exactly the eager loop's answers, at every evaluation
    hashes = {
        on_disk[k]["answers_sha256"] for k in ("canary", "canary_repeat", "canary_static", "canary_static_repeat")
    }
    assert len(hashes) == 1
    assert [on_disk[k]["static_cache"] for k in ("canary", "canary_repeat", "canary_static")] == [False, False, True]
    assert on_disk["canary_static"]["judge_statuses"] == {"scored": 20}

    no_autocast = on_disk["package_no_autocast"]  # float32 on the CPU: autocast changes nothing, flag says so
    assert no_autocast["bf16_autocast"] is False and on_disk["package"]["bf16_autocast"] is False
    assert len(no_autocast["step_seconds"]) == 2 and all(math.isfinite(x) for x in no_autocast["losses"])
    ragged = on_disk["ragged"]
    assert 16 <= ragged["lengths"][0] < ragged["lengths"][1] <= 32
    for variant in ("without_cudnn", "with_cudnn"):
        assert ragged[variant]["s_per_step"] > 0 and "mfu" not in ragged[variant]
        assert all(math.isfinite(x) for x in ragged[variant]["losses"])

    decode = on_disk["decode"]
    assert decode["n_answers"] == 20 and decode["bandwidth_gb_s"] > 0
    embedding = on_disk["model"]["config"]["vocab_size"] * h  # untied: the input embedding is not read per step
    assert decode["weight_bytes"] == 4 * (model["n_params"] + model["n_lora"] - embedding)  # float32 on the CPU
    for variant in ("lora", "adapter_disabled"):  # both decode the same 20 prompts: a prefill, then token steps
        assert 2 <= decode[variant]["token_steps"] <= 1 + decode["max_new_tokens"]
        assert math.isclose(
            decode[variant]["s_per_token_step"], decode[variant]["seconds"] / decode[variant]["token_steps"]
        )
    assert decode["lora_share"] < 1 and decode["floor_over_lora"] > 0
    hf = on_disk["hf_generate"]  # transformers generate: the same prompts, greedy, both KV caches
    assert hf["n_answers"] == 20 and hf["token_steps"] == hf["max_new_tokens"] == 4
    assert hf["same_tokens"] is True and hf["first_difference"] is None
    assert hf["static_cache"]["compiled"] is False  # no compilation on the CPU
    for cache in ("dynamic_cache", "static_cache"):
        assert math.isclose(hf[cache]["s_per_token_step"], hf[cache]["seconds"] / 4)

    markdown = (tmp_path / "bench.md").read_text()
    for text in (
        "package (canary_lib.train.train_step)",
        "reference: trainer",
        "overhead at K = 30",
        "MFU (6N)",
        "adapter disabled / memory floor",
        "dynamic cache / static cache",
        "static cache, again",
        "train.autocast false",
        "ragged lengths",
    ):
        assert text in markdown


def test_markdown_of_a_run_cut_short(tmp_path, capsys):
    """--markdown-from rebuilds the table from bench.json alone, whatever phases a cut run reached."""
    bench.main(
        [
            "--size",
            "tiny",
            "--out",
            str(tmp_path),
            "--reference",
            "none",
            "--no-repeat",
            "--timed-steps",
            "1",
            "--warmup-steps",
            "0",
            "--canary-new-tokens",
            "1",
        ]
    )
    full = json.loads((tmp_path / "bench.json").read_text())
    cut = {k: v for k, v in full.items() if k not in ("decode", "hf_generate")}
    cut["phases_done"] = ["peak", "model", "package", "canary"]
    (tmp_path / "cut.json").write_text(json.dumps(cut))
    capsys.readouterr()
    markdown = bench.main(["--markdown-from", str(tmp_path / "cut.json")])["markdown"]
    assert "overhead at K = 30" in markdown and "memory floor" not in markdown
    assert markdown.rstrip().endswith("phases done: peak, model, package, canary")
    assert capsys.readouterr().out == markdown
    early = {k: full[k] for k in ("size", "versions", "peak_dtype", "peak_tflops", "settings")}
    early["phases_done"] = ["peak", "model"]
    (tmp_path / "early.json").write_text(json.dumps(early))
    markdown = bench.main(["--markdown-from", str(tmp_path / "early.json")])["markdown"]
    assert "canary" not in markdown and markdown.rstrip().endswith("phases done: peak, model")


def test_split_into_small_files_that_do_not_import_tests():
    """The CLI and phases in gpu_bench.py, the pieces in _gpu_*.py, none over 600 lines; nothing from tests/ (the
    tokenizer and the stub judge are the package's, the judge the same one the tests use)."""
    from canary_lib.stub_judge import StubJudgeServer

    folder = Path(bench.__file__).parent
    files = [folder / "gpu_bench.py", *sorted(folder.glob("_gpu_*.py"))]
    assert [f.name for f in files] == [
        "gpu_bench.py",
        "_gpu_decode.py",
        "_gpu_env.py",
        "_gpu_model.py",
        "_gpu_report.py",
        "_gpu_trainer.py",
    ]
    for path in files:
        text = path.read_text()
        assert len(text.splitlines()) <= 600, path.name
        assert "_fixtures" not in text and '"tests"' not in text, path.name
    assert bench.StubJudgeServer is StubJudgeServer


def test_flop_formulas():
    counts = bench.FlopCounts(n_active=1000, n_lora=10, n_layers=2, attn_width=8, seq_len=16)
    assert counts.attention_per_token() == 12 * 2 * 8 * 16
    assert counts.model_flops(100) == (6 * 1000 + 6 * 10 + 12 * 2 * 8 * 16) * 100
    assert counts.model_flops(100) - counts.frozen_flops(100) == 2 * 1000 * 100


def test_qwen25_7b_config_counts():
    """The written config gives Qwen2.5-7B's published size (7.62B), built on the meta device (no memory)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(Qwen2Config(**bench.QWEN25_7B_CONFIG))
    n = sum(p.numel() for p in model.parameters())
    assert n == 7_615_616_512
    biases, norms = 28 * (3584 + 2 * 512), 28 * 2 * 3584 + 3584
    assert bench.count_active_params(model) == n - 152064 * 3584 - biases - norms  # linear weights only
    assert model.config.rope_parameters["rope_theta"] == 1e6 and not model.config.tie_word_embeddings


def test_stub_server_bounded_and_digits_judge():
    from canary_lib.config import load_config
    from canary_lib.judge import make_judge
    from canary_lib.types import JudgeRequest

    with bench.StubJudgeServer(0.0, max_requests=25) as server:
        judge = make_judge(
            load_config(
                overrides=[
                    "judge.backend=openai",
                    "judge.model=stub",
                    "judge.scorer=digits",
                    f"judge.base_url={server.base_url}",
                    "judge.api_key_env=CANARY_BENCH_NO_KEY",
                    "judge.max_retries=0",
                ]
            )
        )
        [verdict] = judge.judge(
            [JudgeRequest("q?", "a.", {"aligned": "{question} {answer}", "coherent": "{question} {answer}"})]
        )
        judge.close()
        # E = sum over 80, 85, 8; 90, 95, 9; 70, 75, 7 of their probabilities (pruning nothing at 1e-3)
        expected = sum(
            p * (0.6 * (10 * int(d) + 0) + 0.3 * (10 * int(d) + 5) + 0.1 * int(d))
            for d, p in (("8", 0.7), ("9", 0.2), ("7", 0.1))
        )
        assert verdict.status == "scored" and verdict.aligned == pytest.approx(expected, rel=1e-6)
        assert server.n_requests == 20
        for _ in range(6):  # past the bound: 503, then the server stops itself
            try:
                httpx.post(server.base_url + "/chat/completions", json={"messages": []}, timeout=2)
            except httpx.HTTPError:
                break
        for _ in range(100):
            if not server.running:
                break
            import time

            time.sleep(0.02)
        assert not server.running


def test_missing_packages_fail_early(monkeypatch, tmp_path):
    monkeypatch.setitem(bench.REQUIRED_MODULES, "surely_not_a_module_xyz", "surely-not-a-dist")
    with pytest.raises(bench.BenchError, match="surely-not-a-dist.*wheels"):
        bench.main(["--size", "tiny", "--out", str(tmp_path)])
    assert not (tmp_path / "bench.json").exists()


def test_7b_refused_without_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: --size 7b is allowed")
    with pytest.raises(bench.BenchError, match="CUDA"):
        bench.main(["--size", "7b", "--out", str(tmp_path)])


def test_profile_table(tmp_path):
    import torch

    tops = bench.profile_table(
        lambda: torch.mm(torch.ones(64, 64), torch.ones(64, 64)), torch.device("cpu"), tmp_path / "p.txt"
    )
    text = (tmp_path / "p.txt").read_text()
    assert "## by self CPU time" in text and "aten::mm" in text
    assert any(r["op"] == "aten::mm" and r["calls"] == 1 for r in tops["top_cpu"])


def test_failing_reference_keeps_the_other_figures(monkeypatch, tmp_path):
    def broken(kind, *args, **kwargs):
        raise RuntimeError(f"{kind} exploded")

    monkeypatch.setattr(bench, "time_reference", broken)
    report = bench.main(
        [
            "--size",
            "tiny",
            "--out",
            str(tmp_path),
            "--reference",
            "trainer",
            "--no-repeat",
            "--timed-steps",
            "1",
            "--warmup-steps",
            "0",
            "--canary-new-tokens",
            "1",
        ]
    )
    assert report["errors"] == {"reference_trainer": "RuntimeError: trainer exploded"}
    assert report["references"]["trainer"]["skipped"].startswith("failed")
    assert report["ratios"] == {} and "package_repeat" not in report
    on_disk = json.loads((tmp_path / "bench.json").read_text())
    assert on_disk["phases_done"] == [
        "peak",
        "model",
        "package",
        "package_no_autocast",
        "canary",
        "canary_repeat",
        "canary_static",
        "canary_static_repeat",
        "ragged",
        "decode",
        "hf_generate",
        "done",
    ]
    assert "skipped: failed" in (tmp_path / "bench.md").read_text()


def test_failing_optional_phases_keep_the_run_going(monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise RuntimeError("no decode today")

    monkeypatch.setattr(bench, "decode_breakdown", broken)
    monkeypatch.setattr(bench, "hf_generate_decode", broken)
    report = bench.main(
        [
            "--size",
            "tiny",
            "--out",
            str(tmp_path),
            "--reference",
            "none",
            "--no-repeat",
            "--timed-steps",
            "1",
            "--warmup-steps",
            "0",
            "--canary-new-tokens",
            "1",
        ]
    )
    assert report["errors"] == {phase: "RuntimeError: no decode today" for phase in ("decode", "hf_generate")}
    assert "decode" not in report and "hf_generate" not in report and "canary" in report
    assert report["phases_done"][-3:] == ["decode", "hf_generate", "done"]
    assert "memory floor" not in (tmp_path / "bench.md").read_text()


def test_version_ranges_checked():
    deps = bench.package_dependencies()
    assert any(d.startswith("torch") for d in deps)
    assert bench.version_problems(deps, list(bench.REQUIRED_MODULES.values())) == []  # this venv fits
    problems = bench.version_problems(
        ["torch>=99", "peft>=0.1", "not-a-dist-xyz>=1"], ["torch", "peft", "not-a-dist-xyz"]
    )
    assert len(problems) == 2 and problems[0].startswith("torch ") and "needs >=99" in problems[0]
    assert "not-a-dist-xyz" in problems[1]


def test_reference_autocast_wrappers_are_undone(tmp_path):
    """With bf16 autocast (as on a GPU), accelerate (and TRL's fused head) patch `forward`; it must be undone."""
    import torch

    kind = "sft" if importlib.util.find_spec("trl") is not None else "trainer"  # SFTTrainer patches both levels

    from _fixtures import build_tiny_tokenizer
    from canary_lib.models import add_rslora

    args = bench.parse_args(["--size", "tiny"])
    cfg = bench.bench_config("tiny", args)
    tokenizer = build_tiny_tokenizer()
    model = add_rslora(bench.build_model("tiny", tokenizer, torch.device("cpu"), torch.float32), cfg.lora, seed=0)
    owners = bench._forward_owners(model)
    before = [type(o).forward for o in owners]
    pool = bench.synthetic_batches(16, 16, model.config.vocab_size, 0.5)
    times, info = bench.time_reference(
        kind, model, tokenizer, cfg, pool, warmup=0, timed=1, device=torch.device("cpu"), workdir=tmp_path, bf16=True
    )
    assert len(times) == 1 and info["bf16_autocast"] is True and math.isfinite(info["train_loss"])
    for owner, forward in zip(owners, before):
        assert "forward" not in owner.__dict__ and "_original_forward" not in owner.__dict__
        assert owner.forward.__func__ is forward
