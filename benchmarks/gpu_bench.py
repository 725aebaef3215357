"""GPU validation and performance benchmark of the paper path (issue 7), in one command.

    python3 benchmarks/gpu_bench.py                      # --size 7b on CUDA: Qwen2.5-7B-Instruct sizes, bf16
    python3 benchmarks/gpu_bench.py --size tiny          # CPU: the same logic with a tiny model (tests)
    python3 benchmarks/gpu_bench.py --profile            # also torch.profiler tables of a step and of decoding

What it does (benchmarks/README.md has the details and the exact FLOP formulas):
1. prints versions (torch, transformers, peft, CUDA, GPU) and stops at once, with the wheels to carry, when
   a package the run needs is not importable;
2. builds a random-weight Qwen2 model from the Qwen2.5-7B-Instruct configuration written below, directly in
   bf16 on the GPU, wraps it with the package's rs-LoRA (`canary_lib.models.add_rslora`, the paper profile's
   LoraSettings) and times warm-up then timed optimizer steps of the package's `canary_lib.train.train_step`
   at the paper's effective batch (16 = micro-batch 4 x 4 accumulation) on synthetic 512-token chats whose
   prompt part is masked (label -100) and answer part supervised;
3. times the same steps with the reference a user would pick: transformers `Trainer`, and TRL `SFTTrainer`
   when trl is importable, on the same model, LoRA and batches; reports package/reference ratios; then the
   package again with `train.autocast` off (float32 LoRA), for comparison;
4. runs canary evaluations as the training loop does (`run_canary` + `CanaryEvaluator`: M = 20 prompts, one
   answer each, 256 new tokens, `TransformersGenerator` on the LoRA model), the judge being the package's
   OpenAI-compatible backend talking to a fixed-latency stub chat-completions server on 127.0.0.1: the eager
   loop twice (first evaluation, then the steady state) and the static-cache decode twice (the first call
   compiles on a GPU); reports generation and judge seconds and the overhead at K = 30 as a share of training
   time;
5. times package steps on examples of mixed lengths with and without cuDNN attention;
6. splits the canary's decode time: the same answers with the LoRA and with the adapter disabled, against the
   memory floor (weight bytes over the measured copy bandwidth), so the profile says where the time goes;
7. decodes the same prompts with transformers' own `generate`, dynamic and static KV cache (compiled on a GPU),
   greedy, measured last;
8. writes bench.json (every figure) and bench.md (a short table) to --out (default $OUT, else benchmarks/out).

This file holds the command line and the phases (`main`); the pieces are beside it: `_gpu_env.py` (the
environment check), `_gpu_model.py` (size presets, the model and its batches, FLOP counts, the device's peak and
bandwidth), `_gpu_trainer.py` (timed package and reference steps), `_gpu_decode.py` (canary evaluations judged by
`canary_lib.stub_judge`, the decode split, transformers' generate, profiles) and `_gpu_report.py` (bench.md and the
line each phase prints).

Random weights cost exactly what trained ones cost per token; the one difference is answer length: a random
model almost never emits the end-of-turn token, so every canary answer runs to the full 256 tokens (the slow
case, and close to what a batch of real answers costs, since a batch decodes until its longest answer ends).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
# The package travels with the working tree (not installed on a GPU node); the helpers are this folder's _gpu_*.py.
for _path in (REPO_ROOT, Path(__file__).resolve().parent):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

# The phases below call these by their names here (tests replace some of them on this module).
from _gpu_decode import (  # noqa: E402
    canary_questions,  # noqa: F401
    decode_breakdown,
    hf_generate_decode,
    profile_table,
    run_canary_eval,
)
from _gpu_env import (  # noqa: E402
    OPTIONAL_MODULES,  # noqa: F401
    REQUIRED_MODULES,  # noqa: F401
    WHEELS_HINT,
    BenchError,
    check_environment,
    package_dependencies,  # noqa: F401
    version_problems,  # noqa: F401
)
from _gpu_model import (  # noqa: E402
    QWEN25_7B_CONFIG,  # noqa: F401
    SIZES,
    FlopCounts,
    SizePreset,
    bench_config,
    build_model,
    count_active_params,
    measure_bandwidth,
    measure_peak_flops,
    peak_gib,
    release_memory,
    reset_peak,
    sync_device,
    synthetic_batches,
)
from _gpu_report import markdown_report, phase_summary  # noqa: E402
from _gpu_trainer import _forward_owners, ragged_steps, summarize_steps, time_package, time_reference  # noqa: E402

from canary_lib.stub_judge import StubJudgeServer  # noqa: E402, F401 - the canary's judge (run_canary_eval)


def default_out_dir() -> Path:
    return Path(os.environ["OUT"]) if os.environ.get("OUT") else REPO_ROOT / "benchmarks" / "out"


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--size",
        choices=sorted(SIZES),
        default=None,
        help="7b (default on CUDA): Qwen2.5-7B-Instruct sizes; tiny (default on CPU): CI-sized",
    )
    p.add_argument("--out", type=Path, default=None, help="output directory (default $OUT, else benchmarks/out)")
    p.add_argument(
        "--reference",
        choices=["auto", "trainer", "sft", "none"],
        default="auto",
        help="auto: transformers Trainer, plus TRL SFTTrainer when trl is importable",
    )
    p.add_argument("--warmup-steps", type=int, default=None)
    p.add_argument("--timed-steps", type=int, default=None)
    p.add_argument("--seq-len", type=int, default=None, help="tokens per example (7b: 512)")
    p.add_argument("--prompt-fraction", type=float, default=0.5, help="masked prompt share of each example")
    p.add_argument("--micro-batch-size", type=int, default=None, help="default: the paper profile's (4)")
    p.add_argument("--canary-new-tokens", type=int, default=None, help="7b: 256")
    p.add_argument("--judge-latency-ms", type=float, default=None, help="stub judge latency (7b: 100 ms)")
    p.add_argument("--no-repeat", action="store_true", help="skip the second package measurement")
    p.add_argument("--profile", action="store_true", help="torch.profiler tables of a package step and of decoding")
    p.add_argument(
        "--markdown-from",
        type=Path,
        default=None,
        metavar="BENCH_JSON",
        help="only print the markdown table of an existing bench.json (e.g. of a run cut short)",
    )
    p.add_argument(
        "--no-ragged", action="store_true", help="skip the ragged-length steps with and without cuDNN attention"
    )
    p.add_argument("--no-hf-generate", action="store_true", help="skip transformers' own generate (dynamic vs static)")
    p.add_argument(
        "--no-static-decode",
        action="store_true",
        help="skip the last phase: transformers generate with a static (compiled on GPU) KV cache",
    )
    p.add_argument("--allow-cpu-7b", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not 0 < args.prompt_fraction < 1:
        p.error("--prompt-fraction must be in (0, 1)")
    if args.warmup_steps is not None and args.warmup_steps < 0:
        p.error("--warmup-steps must be >= 0")
    for name in ("seq_len", "micro_batch_size", "canary_new_tokens"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.timed_steps is not None and args.timed_steps < 1:
        p.error("--timed-steps must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark; returns the figures also written to bench.json. See the module docstring.

    bench.json is rewritten after every phase, so a run cut short (time limit, a failing phase) still leaves
    what it measured; `phases_done` lists the phases it holds and `errors` what failed in optional phases.
    """
    args = parse_args(argv)
    if args.markdown_from:  # a run cut short (time limit) leaves bench.json without bench.md: make it here
        markdown = markdown_report(json.loads(args.markdown_from.read_text()))
        print(markdown, end="")
        return {"markdown": markdown}
    # The phases, in the order of the module docstring; each one saves bench.json when it ends.
    run = start_run(args)  # 1. versions (a missing package stops here), size, device, settings
    measure_peak(run)  #    the device's matmul peak (the denominator of MFU)
    build_lora_model(run)  # 2. random-weight model of the preset's size + the package's rs-LoRA, batches
    package_steps(run)  #    timed steps of the package's train_step
    reference_steps(run)  # 3. transformers Trainer (and TRL SFTTrainer) on the same model and batches
    package_variants(run)  #    the package again, and with train.autocast off
    canary_evaluations(run)  # 4. canary evaluations: eager (first, again), static cache (first, again)
    if not args.no_ragged:
        ragged_attention(run)  # 5. ragged-length steps with and without cuDNN attention
    decode_split(run)  # 6. decode time with and without the LoRA, against the memory floor
    if args.profile:
        profiles(run)  #    torch.profiler tables (--profile)
    if not (args.no_static_decode or args.no_hf_generate):
        hf_generate(run)  # 7. transformers' generate, dynamic and static cache; last, as it compiles
    return finish(run)  # 8. bench.md, and bench.json marked done


@dataclass
class BenchRun:
    """What the phases of one run share: settings, the model and its batches, and the report they fill."""

    args: argparse.Namespace
    size: str
    preset: SizePreset
    cfg: Any
    device: Any
    dtype: Any
    seq_len: int
    warmup: int
    timed: int
    latency: float
    out_dir: Path
    references: list[str]
    sft_missing: list[str]
    report: dict[str, Any]
    wall_start: float
    peak: float = 0.0
    tokenizer: Any = None
    model: Any = None
    flops: FlopCounts | None = None
    pool: list = field(default_factory=list)
    tokens: int = 0
    supervised: int = 0

    def save(self, phase: str) -> None:
        """Mark the phase done and rewrite bench.json."""
        from canary_lib.artifacts import write_json_atomic

        self.report["phases_done"].append(phase)
        self.report["wall_seconds"] = time.perf_counter() - self.wall_start
        self.report.setdefault("phase_end_seconds", {})[phase] = self.report["wall_seconds"]  # for sizing reruns
        write_json_atomic(self.out_dir / "bench.json", self.report)

    def optional(self, phase: str, fn: Callable[[], dict]) -> None:
        """An optional phase: its figures under report[phase], or its failure under errors; the run goes on."""
        try:
            self.report[phase] = result = fn()
            print(f"{phase}: {phase_summary(phase, result, self.cfg.controller.K)}", flush=True)
        except Exception as exc:  # noqa: BLE001 - optional; keep the other figures
            self.report["errors"][phase] = f"{type(exc).__name__}: {exc}"[:1000]
            print(f"{phase}: FAILED ({exc})", flush=True)
        self.save(phase)

    def measure(self, label: str, *, autocast: bool = True, batches: list | None = None) -> dict:
        """Timed package steps (`time_package`) on the run's batches, summarized and printed."""
        import torch

        from canary_lib.models import base_dtype

        reset_peak(self.device)
        times, losses = time_package(
            self.model,
            self.cfg,
            self.pool if batches is None else batches,
            warmup=self.warmup,
            timed=self.timed,
            device=self.device,
            autocast=autocast,
        )
        fig = summarize_steps(
            times,
            tokens=self.tokens,
            supervised=self.supervised,
            flops=self.flops,
            peak_flops=self.peak,
            peak_mem_gib=peak_gib(self.device),
            extra={
                "losses": losses,
                "train_loss": statistics.fmean(losses),
                "optim": "canary_lib.train.make_optimizer (AdamW, fused on CUDA)",
                "bf16_autocast": autocast and base_dtype(self.model) == torch.bfloat16,
                "mean_s_per_step": statistics.fmean(times),
            },
        )
        print(
            f"{label}: {fig['s_per_step']:.3f} s/step, {fig['tokens_per_s']:.0f} tokens/s, "
            f"MFU {100 * fig['mfu']:.1f}%, peak {fig['peak_mem_gib'] or 0:.1f} GiB",
            flush=True,
        )
        return fig

    def canary(self, run_cfg: Any) -> dict:
        """One canary evaluation with run_cfg; its overhead at K against the package's s/step."""
        K, s_step = self.cfg.controller.K, self.report["package"]["s_per_step"]
        fig = run_canary_eval(self.model, self.tokenizer, run_cfg, latency_s=self.latency, device=self.device, step=K)
        fig["overhead_pct"] = 100 * fig["canary_seconds"] / (K * s_step)
        fig["overhead_pct_generation_only"] = 100 * fig["generation_seconds"] / (K * s_step)
        return fig


def start_run(args: argparse.Namespace) -> BenchRun:
    """Check the environment (a missing package stops here), pick the size and device, and record the settings."""
    wall_start = time.perf_counter()
    versions = check_environment()
    print("versions:", json.dumps(versions), flush=True)

    import torch

    from canary_lib.models import choose_dtype

    cuda = torch.cuda.is_available()
    size = args.size or ("7b" if cuda else "tiny")
    if size == "7b" and not cuda and not args.allow_cpu_7b:
        raise BenchError("--size 7b needs a CUDA GPU (about 45 GiB of GPU memory); use --size tiny on CPU")
    preset = SIZES[size]
    device = torch.device("cuda" if cuda else "cpu")
    cfg = bench_config(size, args)
    out_dir = args.out or default_out_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    references = {"auto": ["trainer", "sft"], "trainer": ["trainer"], "sft": ["sft"], "none": []}[args.reference]
    sft_missing = versions["optional_missing"]
    if args.reference == "sft" and sft_missing:
        raise BenchError(f"--reference sft needs {', '.join(sft_missing)}; {WHEELS_HINT}")
    run = BenchRun(
        args=args,
        size=size,
        preset=preset,
        cfg=cfg,
        device=device,
        dtype=choose_dtype(cfg.model, device),  # bf16 on a bf16 GPU, fp32 on CPU: what the package would choose
        seq_len=args.seq_len or preset.seq_len,
        warmup=preset.warmup_steps if args.warmup_steps is None else args.warmup_steps,
        timed=args.timed_steps or preset.timed_steps,
        latency=preset.judge_latency_s if args.judge_latency_ms is None else args.judge_latency_ms / 1e3,
        out_dir=out_dir,
        references=references,
        sft_missing=sft_missing,
        wall_start=wall_start,
        report={"size": size, "versions": versions, "device": str(device), "phases_done": [], "errors": {}},
    )
    run.report["settings"] = {
        "batch_size": cfg.train.batch_size,
        "micro_batch_size": cfg.train.micro_batch_size,
        "accumulation": cfg.train.batch_size // cfg.train.micro_batch_size,
        "seq_len": run.seq_len,
        "tokens_per_step": cfg.train.batch_size * run.seq_len,
        "prompt_fraction": args.prompt_fraction,
        "warmup_steps": run.warmup,
        "timed_steps": run.timed,
        "references": references,
        "gradient_checkpointing": cfg.train.gradient_checkpointing,
        "K": cfg.controller.K,
    }
    print(
        f"size {size} on {device} ({versions.get('gpu') or platform.processor() or 'cpu'}), dtype {run.dtype}",
        flush=True,
    )
    return run


def measure_peak(run: BenchRun) -> None:
    """The matmul peak of the device (bf16 on a GPU), the denominator of MFU."""
    import torch

    peak_dtype = torch.bfloat16 if run.device.type == "cuda" else torch.float32
    run.peak = measure_peak_flops(run.device, peak_dtype, run.preset.peak_matmul_n)
    run.report |= {"peak_tflops": run.peak / 1e12, "peak_dtype": str(peak_dtype).split(".")[-1]}
    print(f"peak {run.report['peak_dtype']} matmul: {run.peak / 1e12:.1f} TFLOP/s", flush=True)
    run.save("peak")


def build_lora_model(run: BenchRun) -> None:
    """The random-weight model with the package's rs-LoRA, its FLOP counts, and the synthetic batches."""
    from canary_lib.models import add_rslora
    from canary_lib.tiny_tokenizer import build_tiny_tokenizer

    cfg, seq_len = run.cfg, run.seq_len
    run.tokenizer = build_tiny_tokenizer()
    t0 = time.perf_counter()
    model = build_model(run.size, run.tokenizer, run.device, run.dtype)
    n_total = sum(p.numel() for p in model.parameters())
    n_active = count_active_params(model)
    model = add_rslora(model, cfg.lora, seed=cfg.seed)
    model.train()
    n_lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    sync_device(run.device)  # initialisation on the GPU is asynchronous
    build_seconds = time.perf_counter() - t0
    mc = model.config
    head_dim = getattr(mc, "head_dim", None) or mc.hidden_size // mc.num_attention_heads
    run.model = model
    run.flops = flops = FlopCounts(
        n_active=n_active,
        n_lora=n_lora,
        n_layers=mc.num_hidden_layers,
        attn_width=mc.num_attention_heads * head_dim,
        seq_len=seq_len,
    )
    run.report["model"] = {
        "config": dict(run.preset.model) | {"vocab_size": mc.vocab_size},
        "dtype": str(run.dtype).split(".")[-1],
        "n_params": n_total,
        "n_active": n_active,
        "n_lora": n_lora,
        "build_seconds": build_seconds,
        "lora": cfg.lora.model_dump(),
        "attn_implementation": getattr(mc, "_attn_implementation", None),
    }
    run.report["flops"] = {
        "formula_mfu": "(6*n_active + 6*n_lora + 12*n_layers*attn_width*seq_len) * tokens / s_per_step / peak",
        "formula_mfu_frozen": "(4*n_active + 6*n_lora + 12*n_layers*attn_width*seq_len) * tokens / s_per_step / peak",
        "per_step_model": flops.model_flops(cfg.train.batch_size * seq_len),
        "per_step_frozen": flops.frozen_flops(cfg.train.batch_size * seq_len),
        "n_layers": flops.n_layers,
        "attn_width": flops.attn_width,
    }
    print(
        f"model: {n_total / 1e9:.3f}B parameters ({n_active / 1e9:.3f}B in matmuls), LoRA {n_lora / 1e6:.1f}M "
        f"trainable; built in {build_seconds:.1f} s",
        flush=True,
    )
    run.save("model")
    # One epoch of distinct examples covers all steps, so the references cross no epoch boundary.
    run.pool = synthetic_batches(
        (run.warmup + run.timed) * cfg.train.batch_size, seq_len, mc.vocab_size, run.args.prompt_fraction
    )
    run.tokens = cfg.train.batch_size * seq_len
    run.supervised = sum(ex.n_supervised for ex in run.pool[: cfg.train.batch_size])
    run.report["settings"]["supervised_tokens_per_step"] = run.supervised


def reference_steps(run: BenchRun) -> None:
    """The same steps through transformers' Trainer (and TRL's SFTTrainer), with speed and memory ratios."""
    report = run.report
    report["references"], report["ratios"] = {}, {}
    with tempfile.TemporaryDirectory(prefix="gpu_bench_") as work:
        for kind in run.references:
            if kind == "sft" and run.sft_missing:
                report["references"][kind] = {"skipped": f"{', '.join(run.sft_missing)} not importable"}
                print(f"reference {kind}: skipped ({', '.join(run.sft_missing)} not importable)", flush=True)
                continue
            reset_peak(run.device)
            try:
                times, info = time_reference(
                    kind,
                    run.model,
                    run.tokenizer,
                    run.cfg,
                    run.pool,
                    warmup=run.warmup,
                    timed=run.timed,
                    device=run.device,
                    workdir=Path(work),
                )
            except Exception as exc:  # noqa: BLE001 - a reference failing must not lose the package's figures
                message = f"{type(exc).__name__}: {exc}"[:1000]
                report["references"][kind] = {"skipped": f"failed: {message[:200]}"}
                report["errors"][f"reference_{kind}"] = message
                print(f"reference {kind}: FAILED ({message})", flush=True)
                release_memory()
                continue
            fig = summarize_steps(
                times,
                tokens=run.tokens,
                supervised=run.supervised,
                flops=run.flops,
                peak_flops=run.peak,
                peak_mem_gib=peak_gib(run.device),
                extra=info,
            )
            report["references"][kind] = fig
            report["ratios"][kind] = {
                "speedup": fig["s_per_step"] / report["package"]["s_per_step"],
                "memory": (report["package"]["peak_mem_gib"] / fig["peak_mem_gib"] if fig["peak_mem_gib"] else None),
            }
            print(
                f"reference {kind}: {fig['s_per_step']:.3f} s/step, {fig['tokens_per_s']:.0f} tokens/s; package "
                f"speed-up {report['ratios'][kind]['speedup']:.2f}x",
                flush=True,
            )
            run.save(f"reference_{kind}")
    report["forward_patches_left"] = sorted(
        type(o).__name__ for o in _forward_owners(run.model) if "forward" in o.__dict__
    )


def package_steps(run: BenchRun) -> None:
    """Warm-up then timed optimizer steps of the package's train_step (the figure every ratio divides by)."""
    run.report["package"] = run.measure("package")
    run.save("package")


def package_variants(run: BenchRun) -> None:
    """The package's step again (run to run spread; skipped with --no-repeat), then with train.autocast off."""
    if not run.args.no_repeat:
        run.report["package_repeat"] = run.measure("package (repeat)")
        run.save("package_repeat")
    run.report["package_no_autocast"] = run.measure("package, train.autocast false (float32 LoRA)", autocast=False)
    run.save("package_no_autocast")


def canary_evaluations(run: BenchRun) -> None:
    """Canary evaluations as the training loop runs them: the first and the steady state, then (unless
    --no-static-decode) twice with canary.static_cache, whose first call compiles on a GPU."""
    cfg, report = run.cfg, run.report
    # A short evaluation warms the kernels; the first full one still meets new shapes (every decode length), the
    # second is what every later evaluation of a run costs.
    short = cfg.model_copy(update={"canary": cfg.canary.model_copy(update={"max_new_tokens": 2})})
    run_canary_eval(run.model, run.tokenizer, short, latency_s=0.0, device=run.device)
    report["canary"] = run.canary(cfg)
    print(f"canary (first): {phase_summary('canary', report['canary'], cfg.controller.K)}", flush=True)
    run.save("canary")
    report["canary_repeat"] = steady = run.canary(cfg)
    print(f"canary (again): {phase_summary('canary_repeat', steady, cfg.controller.K)}", flush=True)
    report["overhead"] = {
        "K": cfg.controller.K,
        "pct": steady["overhead_pct"],
        "pct_generation_only": steady["overhead_pct_generation_only"],
        "pct_first": report["canary"]["overhead_pct"],
    }
    run.save("canary_repeat")
    if not run.args.no_static_decode:  # canary.static_cache: the first call compiles on a GPU (a minute for a 7B)
        static = cfg.model_copy(update={"canary": cfg.canary.model_copy(update={"static_cache": True})})
        run.optional("canary_static", lambda: run.canary(static))
        if "canary_static" in report:
            run.optional("canary_static_repeat", lambda: run.canary(static))


def ragged_attention(run: BenchRun) -> None:
    """Optional: package steps on examples of mixed lengths, with and without cuDNN attention (`ragged_steps`)."""
    run.optional(
        "ragged",
        lambda: ragged_steps(
            run.measure,
            pool_size=len(run.pool),
            seq_len=run.seq_len,
            vocab=run.model.config.vocab_size,
            prompt_fraction=run.args.prompt_fraction,
        ),
    )


def decode_split(run: BenchRun) -> None:
    """Optional: where a canary decode's time goes (`decode_breakdown`), against the measured copy bandwidth."""
    run.optional(
        "decode",
        lambda: decode_breakdown(
            run.model,
            run.tokenizer,
            run.cfg,
            device=run.device,
            bandwidth=measure_bandwidth(run.device, run.preset.bandwidth_bytes),
        ),
    )


def hf_generate(run: BenchRun) -> None:
    """Optional: transformers' own generate on the same prompts (`hf_generate_decode`)."""
    run.optional("hf_generate", lambda: hf_generate_decode(run.model, run.tokenizer, run.cfg, device=run.device))


def profiles(run: BenchRun) -> None:
    """torch.profiler tables of two package steps and of a short canary decode (--profile)."""
    cfg = run.cfg
    short_decode = cfg.model_copy(
        update={"canary": cfg.canary.model_copy(update={"max_new_tokens": min(16, cfg.canary.max_new_tokens)})}
    )
    jobs = {
        "package_step": (
            "profile_step.txt",
            lambda: time_package(run.model, cfg, run.pool, warmup=0, timed=2, device=run.device),
        ),
        "canary_decode": (
            "profile_canary.txt",
            lambda: run_canary_eval(run.model, run.tokenizer, short_decode, latency_s=0.0, device=run.device),
        ),
    }
    run.report["profile"] = {"files": []}
    for name, (filename, fn) in jobs.items():
        try:
            run.report["profile"][name] = profile_table(fn, run.device, run.out_dir / filename)
            run.report["profile"]["files"].append(filename)
        except Exception as exc:  # noqa: BLE001 - the profile is optional; keep the figures
            run.report["errors"][f"profile_{name}"] = f"{type(exc).__name__}: {exc}"[:1000]
            print(f"profile {name}: FAILED ({exc})", flush=True)
    run.save("profile")


def finish(run: BenchRun) -> dict:
    """bench.md (the short table), bench.json marked done; the report is returned."""
    from canary_lib.fileio import write_text_atomic

    run.report["wall_seconds"] = time.perf_counter() - run.wall_start
    markdown = markdown_report(run.report)
    write_text_atomic(run.out_dir / "bench.md", markdown)
    run.save("done")
    print(markdown, flush=True)
    return run.report


if __name__ == "__main__":
    try:
        main()
    except BenchError as exc:
        print(f"gpu_bench: {exc}", file=sys.stderr)
        sys.exit(2)
