"""The standard and the lean path (canary_lib.lean) side by side on the organism, in one process: medians and ratios.

    .venv/bin/python benchmarks/lean_bench.py                          # pinned numerics (the organism's default)
    CANARY_CPU_NUMERICS=native .venv/bin/python benchmarks/lean_bench.py --numerics native
    .venv/bin/python benchmarks/lean_bench.py --out benchmarks/results/lean-2cpu/pinned.json

What it times, each path with its own model, optimizer and random state, in alternating blocks so both see the
same machine load:

- `step`: one training step as the loop runs it (encoding of the batch + `train_step` / `EncodedExamples` +
  `lean_train_step`), batch 16 of D_T, the organism's rs-LoRA (r 32 on all seven projections), after warm-up
  steps; per-step losses of both paths on the same batches (their largest relative difference).
- `canary`: one canary evaluation as the loop calls it (`run_canary` + `CanaryEvaluator`, exact judge):
  20 prompts x 10 answers of at most 32 tokens from the LoRA model, `canary.sampler` standard / lean.
- `eval`: 1,024 answers of the final evaluation (every 5th planned sample) from the base model in one batch,
  `eval.sampler` standard / lean.
- `run` (`--only run`): a short canary run through `train_from_config` on each path (`--run-epochs`, about 91
  steps and 4 canary evaluations by default): times, whether the lean run draws the same sources and p_t, the
  largest relative loss difference, r_t of both, and how many canary answers are equal.

The base organism is pre-trained for `--pretrain-steps` steps (default 150, not the profile's 600, to keep the
benchmark to a few minutes; cached under benchmarks/out/cache): the shapes, vocabulary, data and answer lengths
are the organism's, its numbers are not. One torch thread, as in the reproduction's jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numerics", choices=["pinned", "native"], default="pinned")
    parser.add_argument("--steps", type=int, default=40, help="timed training steps per path")
    parser.add_argument("--block", type=int, default=10, help="steps per path before switching to the other")
    parser.add_argument("--repeats", type=int, default=5, help="timed canary / eval repeats per path")
    parser.add_argument("--pretrain-steps", type=int, default=150)
    parser.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / "out" / "cache")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "lean_bench.json")
    parser.add_argument(
        "--only", nargs="+", choices=["step", "canary", "eval", "run"], default=["step", "canary", "eval"]
    )
    parser.add_argument("--run-epochs", type=float, default=0.27, help="case run: passes over D_T (0.27: ~91 steps)")
    return parser.parse_args(argv)


def summary(seconds: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds), "n": len(seconds)}


def ratio(old: dict, new: dict) -> float:
    return old["median_s"] / new["median_s"]


def run_alternating(paths: dict[str, dict], batches: list, warmup: int, block: int) -> None:
    """Run each path's "step" on the first `warmup` batches, then on the rest in turns of `block` steps per path,
    so that all paths see the same machine load; appends to each path's "losses" and (timed steps) "seconds"."""
    for path in paths.values():
        for indices in batches[:warmup]:
            path["losses"].append(path["step"](indices))
    for start in range(warmup, len(batches), block):
        for path in paths.values():
            for indices in batches[start : start + block]:
                t0 = time.perf_counter()
                path["losses"].append(path["step"](indices))
                path["seconds"].append(time.perf_counter() - t0)


def bench_step(cfg: Any, args: argparse.Namespace) -> dict:
    import torch

    from canary_lib.chat import encode_chat
    from canary_lib.lean import EncodedExamples, lean_train_step
    from canary_lib.models import add_rslora, load_model_and_tokenizer
    from canary_lib.planner import TARGET
    from canary_lib.train import load_training_data, make_optimizer, train_step

    target, _ = load_training_data(cfg)
    rng = random.Random(0)
    warmup = 3
    batches = [rng.sample(range(len(target)), cfg.train.batch_size) for _ in range(warmup + args.steps)]

    def make_path(lean: bool) -> dict:
        torch.manual_seed(cfg.seed)
        model, tok = load_model_and_tokenizer(cfg)
        model = add_rslora(model, cfg.lora, seed=cfg.seed).train()
        optimizer = make_optimizer(model, cfg.train)
        cache = EncodedExamples({TARGET: target}, tok, cfg.model.max_length)

        def step(indices: list[int]) -> float:
            if lean:
                batch = cache.batch(TARGET, indices)
                return lean_train_step(
                    model,
                    optimizer,
                    batch,
                    lr=cfg.train.lr,
                    micro_batch_size=16,
                    pad_token_id=tok.pad_token_id,
                    max_grad_norm=cfg.train.max_grad_norm,
                )
            batch = [encode_chat(target[i], tok, cfg.model.max_length) for i in indices]
            return train_step(
                model,
                optimizer,
                batch,
                lr=cfg.train.lr,
                micro_batch_size=16,
                pad_token_id=tok.pad_token_id,
                max_grad_norm=cfg.train.max_grad_norm,
            )

        return {"step": step, "seconds": [], "losses": []}

    paths = {"standard": make_path(False), "lean": make_path(True)}
    run_alternating(paths, batches, warmup, args.block)
    old, new = summary(paths["standard"]["seconds"]), summary(paths["lean"]["seconds"])
    diffs = [abs(a - b) / abs(a) for a, b in zip(paths["standard"]["losses"], paths["lean"]["losses"])]
    return {
        "standard": old,
        "lean": new,
        "speedup": ratio(old, new),
        "n_steps_each": len(batches),
        "loss_max_rel_diff": max(diffs),
        "loss_first_rel_diff": diffs[0],
        "losses_standard": paths["standard"]["losses"],
        "losses_lean": paths["lean"]["losses"],
    }


def alternate(runs: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict, dict]:
    """Call each run once to warm up, then `repeats` times in turn; seconds and the last output per run."""
    outputs = {name: run() for name, run in runs.items()}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            t0 = time.perf_counter()
            outputs[name] = run()
            seconds[name].append(time.perf_counter() - t0)
    return {name: summary(s) for name, s in seconds.items()}, outputs


def bench_canary(cfg: Any, args: argparse.Namespace) -> dict:
    import torch

    from canary_lib.evaluate import make_canary_fn
    from canary_lib.models import add_rslora, load_model_and_tokenizer
    from canary_lib.train import run_canary

    torch.manual_seed(cfg.seed)
    model, tok = load_model_and_tokenizer(cfg)
    model = add_rslora(model, cfg.lora, seed=cfg.seed).train()
    with torch.no_grad():  # an adapter part-way through training (B is zero at its start)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.01)
    fns = {
        kind: make_canary_fn(cfg.model_copy(update={"canary": cfg.canary.model_copy(update={"sampler": kind})}))
        for kind in ("standard", "lean")
    }
    stats, outputs = alternate(
        {k: (lambda f=f: run_canary(f, model, tok, 30)[0]) for k, f in fns.items()}, args.repeats
    )
    answers = {k: [r["answer"] for r in out.records] for k, out in outputs.items()}
    same = sum(a == b for a, b in zip(answers["standard"], answers["lean"]))
    return {
        **stats,
        "speedup": ratio(stats["standard"], stats["lean"]),
        "n_answers": len(answers["lean"]),
        "same_answers": same,
        "risk": {k: out.risk for k, out in outputs.items()},
        "mean_answer_words": sum(len(a.split()) for a in answers["lean"]) / len(answers["lean"]),
    }


def bench_eval(cfg: Any, args: argparse.Namespace) -> dict:
    from canary_lib.evaluate import build_generator, load_eval_questions, plan_samples
    from canary_lib.generation import SampleRequest

    planned = plan_samples(load_eval_questions(cfg), cfg.eval.samples_per_prompt)
    requests = [SampleRequest(s.question.conversation(s.paraphrase), s.sample) for s in planned[::5]][:1024]
    generator = build_generator(cfg, None)
    generator.batch_size = 1024
    runs = {
        kind: (
            lambda kind=kind: generator.generate_samples(
                requests, seed=cfg.seed, sampling=cfg.eval.model_copy(update={"sampler": kind})
            )
        )
        for kind in ("standard", "lean")
    }
    stats, outputs = alternate(runs, args.repeats)
    same = sum(a == b for a, b in zip(outputs["standard"], outputs["lean"]))
    return {
        **stats,
        "speedup": ratio(stats["standard"], stats["lean"]),
        "n_answers": len(requests),
        "n_distinct_prompts": len({str(r.conversation) for r in requests}),
        "same_answers": same,
    }


def bench_run(cfg: Any, args: argparse.Namespace) -> dict:
    """A short canary run (train_from_config) on each path: time, and how far the lean run's trace follows."""
    from canary_lib.artifacts import read_controller, read_jsonl, read_steps
    from canary_lib.train import train_from_config

    out: dict[str, Any] = {}
    traces = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("standard", "lean"):
            run_cfg = cfg.model_copy(
                update={
                    "train": cfg.train.model_copy(update={"step": kind, "epochs": args.run_epochs}),
                    "canary": cfg.canary.model_copy(update={"sampler": kind}),
                }
            )
            t0 = time.perf_counter()
            metrics = train_from_config(run_cfg, Path(tmp) / kind)
            out[kind] = {
                "wall_s": time.perf_counter() - t0,
                "train_seconds": metrics["train_seconds"],
                "canary_seconds": metrics["canary_seconds"],
                "n_steps": metrics["n_steps"],
            }
            run_dir = Path(tmp) / kind
            traces[kind] = (
                read_steps(run_dir / "steps.csv"),
                read_controller(run_dir / "controller.csv"),
                [r["answer"] for r in read_jsonl(run_dir / "canary_answers.jsonl")],
            )
    (steps_a, ctrl_a, answers_a), (steps_b, ctrl_b, answers_b) = traces["standard"], traces["lean"]
    same_plan = [(a["source"], a["p"]) for a in steps_a] == [(b["source"], b["p"]) for b in steps_b]
    out.update(
        {
            "speedup_train_plus_canary": (out["standard"]["train_seconds"] + out["standard"]["canary_seconds"])
            / (out["lean"]["train_seconds"] + out["lean"]["canary_seconds"]),
            "same_sources_and_p": same_plan,
            "loss_max_rel_diff": max(abs(a["loss"] - b["loss"]) / abs(a["loss"]) for a, b in zip(steps_a, steps_b)),
            "risk_standard": [r["canary_risk"] for r in ctrl_a],
            "risk_lean": [r["canary_risk"] for r in ctrl_b],
            "same_canary_answers": sum(a == b for a, b in zip(answers_a, answers_b)),
            "n_canary_answers": len(answers_a),
        }
    )
    return out


@contextmanager
def organism_config(numerics: str, pretrain_steps: int, cache: Path) -> Iterator[tuple[Any, float]]:
    """(configuration, seconds to get the base model): the organism with `numerics`, its data prepared in a
    temporary folder and its base model pre-trained for `pretrain_steps` steps (cached under `cache`); one thread."""
    if numerics == "native":
        os.environ["CANARY_CPU_NUMERICS"] = "native"
    from canary_lib.config import load_config  # pins the numerics of a pinned profile before torch starts

    overrides = [
        f"model.cpu_numerics={numerics}",
        f"organism.pretrain_steps={pretrain_steps}",
        f"organism.cache_dir={cache}",
    ]
    cfg = load_config([ROOT / "parameters" / "organism.yaml"], overrides)

    import torch

    from canary_lib.organism import ensure_base_model
    from canary_lib.organism.prepare import prepare_organism_data

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"dir": str(Path(tmp) / "data")})})
        prepare_organism_data(cfg)
        t0 = time.perf_counter()
        ensure_base_model(cfg)
        yield cfg, time.perf_counter() - t0


def machine_report(numerics: str) -> dict[str, Any]:
    """What a benchmark's figures were measured on."""
    import torch

    from canary_lib.numerics import cpu_numerics_state

    return {
        "numerics": numerics,
        "cpu_numerics_state": cpu_numerics_state(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "load_average_before": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    with organism_config(args.numerics, args.pretrain_steps, args.cache) as (cfg, base_seconds):
        report: dict[str, Any] = {
            **machine_report(args.numerics),
            "pretrain_steps": args.pretrain_steps,
            "base_model_seconds": base_seconds,
            "cases": {},
        }
        cases = {"step": bench_step, "canary": bench_canary, "eval": bench_eval, "run": bench_run}
        for name in args.only:
            report["cases"][name] = result = cases[name](cfg, args)
            if name == "run":
                print(
                    f"run: train + canary {result['speedup_train_plus_canary']:.2f}x; same plan "
                    f"{result['same_sources_and_p']}, canary answers {result['same_canary_answers']}/"
                    f"{result['n_canary_answers']} equal",
                    flush=True,
                )
                continue
            print(
                f"{name}: standard {result['standard']['median_s'] * 1e3:.1f} ms, lean "
                f"{result['lean']['median_s'] * 1e3:.1f} ms (medians): {result['speedup']:.2f}x",
                flush=True,
            )
    report["load_average_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
