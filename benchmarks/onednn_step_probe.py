"""A training step whose linear layers run on oneDNN: speed against today's pinned step, and its bits across ISA caps.

    .venv/bin/python benchmarks/onednn_step_probe.py --out benchmarks/results/lean-2cpu-2026-12-02/onednn_step.json

A probe, not a package feature: it answers whether "oneDNN capped at AVX2" (benchmarks/numerics_probe.py) would
pay at the level of the organism's lean training step. Every `F.linear` of the step (the seven projections with
their merged LoRA, the tied vocabulary projection) is routed through oneDNN's inner product
(`torch.ops.mkldnn._linear_pointwise`) in forward and both backward products, by an autograd function; everything
else (attention's products included) stays on ATen/MKL under the pinned settings. Each setting runs in a fresh
process: `--steps` lean steps on the same batches from the same initialisation, timed (median), and a sha256 of
the losses and final LoRA weights, so equal hashes across ONEDNN_MAX_CPU_ISA caps mean the same bits. The last
setting runs both kernels in one process, a step of each in turn, so their ratio is measured under the same load.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PINNED = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE", "MKL_DYNAMIC": "FALSE"}
SETTINGS = {
    "pinned, MKL linear (today's lean step)": {**PINNED, "ONEDNN_MAX_CPU_ISA": "AVX2", "PROBE_ONEDNN": "0"},
    "pinned, oneDNN linear capped at AVX2": {**PINNED, "ONEDNN_MAX_CPU_ISA": "AVX2", "PROBE_ONEDNN": "1"},
    "pinned, oneDNN linear capped at AVX-512": {**PINNED, "ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "PROBE_ONEDNN": "1"},
    "pinned, oneDNN linear uncapped": {**PINNED, "PROBE_ONEDNN": "1"},
    "pinned, MKL and oneDNN (AVX2) alternating in one process": {
        **PINNED,
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "PROBE_ONEDNN": "paired",
    },
}


def _onednn_linear():  # noqa: ANN202
    import torch

    product = torch.ops.mkldnn._linear_pointwise

    class OneDNNLinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias):  # noqa: ANN001, ANN205
            ctx.save_for_backward(x, weight)
            ctx.has_bias = bias is not None
            flat = x.reshape(-1, x.shape[-1]).contiguous()
            out = product(flat, weight.contiguous(), bias, "none", [], "")
            return out.reshape(*x.shape[:-1], weight.shape[0])

        @staticmethod
        def backward(ctx, grad):  # noqa: ANN001, ANN205
            x, weight = ctx.saved_tensors
            g = grad.reshape(-1, grad.shape[-1]).contiguous()
            flat = x.reshape(-1, x.shape[-1])
            grad_x = grad_w = grad_b = None
            if ctx.needs_input_grad[0]:  # g @ W
                grad_x = product(g, weight.t().contiguous(), None, "none", [], "").reshape(x.shape)
            if ctx.needs_input_grad[1]:  # g^T @ x
                grad_w = product(g.t().contiguous(), flat.t().contiguous(), None, "none", [], "")
            if ctx.has_bias and ctx.needs_input_grad[2]:
                grad_b = g.sum(0)
            return grad_x, grad_w, grad_b

    return lambda x, weight, bias=None: OneDNNLinear.apply(x, weight, bias)


def child(steps: int, pretrain_steps: int, cache: Path, data: Path) -> dict:
    from canary_lib.config import load_config

    cfg = load_config(
        [ROOT / "parameters" / "organism.yaml"],
        [
            "model.cpu_numerics=native",
            f"organism.pretrain_steps={pretrain_steps}",
            f"organism.cache_dir={cache}",
            f"data.dir={data}",
        ],
    )
    import random

    import torch
    import torch.nn.functional as F

    from canary_lib.lean import EncodedExamples, lean_train_step
    from canary_lib.models import add_rslora, load_model_and_tokenizer
    from canary_lib.train import load_training_data, make_optimizer

    torch.set_num_threads(1)
    linears = {"mkl": F.linear, "onednn": _onednn_linear()}
    kinds = {"0": ["mkl"], "1": ["onednn"], "paired": ["mkl", "onednn"]}[os.environ.get("PROBE_ONEDNN", "0")]
    target, _ = load_training_data(cfg)
    paths = {}
    for kind in kinds:  # the same initialisation for each
        torch.manual_seed(cfg.seed)
        model, tok = load_model_and_tokenizer(cfg)
        model = add_rslora(model, cfg.lora, seed=cfg.seed).train()
        paths[kind] = (model, make_optimizer(model, cfg.train), [], [])
    examples = EncodedExamples({"t": target}, tok, cfg.model.max_length)
    rng = random.Random(0)
    batches = [examples.batch("t", rng.sample(range(len(target)), 16)) for _ in range(steps + 3)]
    for i, batch in enumerate(batches):
        for kind, (model, optimizer, losses, seconds) in paths.items():  # alternating: the same load for both
            F.linear = linears[kind]
            t0 = time.perf_counter()
            losses.append(
                lean_train_step(
                    model,
                    optimizer,
                    batch,
                    lr=1e-4,
                    micro_batch_size=16,
                    pad_token_id=tok.pad_token_id,
                    max_grad_norm=1.0,
                )
            )
            if i >= 3:
                seconds.append(time.perf_counter() - t0)
    F.linear = linears["mkl"]
    out = {}
    for kind, (model, _, losses, seconds) in paths.items():
        digest = hashlib.sha256(json.dumps(losses).encode())
        for _name, p in sorted(model.named_parameters()):
            if p.requires_grad:
                digest.update(p.detach().numpy().tobytes())
        out[kind] = {
            "median_s": statistics.median(seconds),
            "min_s": min(seconds),
            "sha256": digest.hexdigest()[:16],
            "last_loss": losses[-1],
        }
    row = dict(out[kinds[-1]])
    if len(kinds) == 2:
        row = {
            **out,
            "median_s": out["onednn"]["median_s"],
            "min_s": out["onednn"]["min_s"],
            "sha256": out["onednn"]["sha256"],
            "onednn_speedup": out["mkl"]["median_s"] / out["onednn"]["median_s"],
        }
    return {**row, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2, help="every setting this many times, interleaved")
    parser.add_argument("--pretrain-steps", type=int, default=150)
    parser.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / "out" / "cache")
    parser.add_argument("--data", type=Path, default=ROOT / "benchmarks" / "out" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "onednn_step.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.steps, args.pretrain_steps, args.cache, args.data)))
        return {}
    if not (args.data / "manifest.json").is_file():  # the organism's data, prepared once (no torch needed)
        from canary_lib.config import load_config
        from canary_lib.organism.prepare import prepare_organism_data

        prepare_organism_data(
            load_config([ROOT / "parameters" / "organism.yaml"], ["model.cpu_numerics=native", f"data.dir={args.data}"])
        )
    keys = {k for env in SETTINGS.values() for k in env} | {"CANARY_CPU_NUMERICS", "ONEDNN_MAX_CPU_ISA"}
    base = {k: v for k, v in os.environ.items() if k not in keys}
    report: dict = {"load_average_before": os.getloadavg(), "steps": args.steps, "settings": {}}
    for _ in range(args.rounds):
        for name, env in SETTINGS.items():
            command = [
                sys.executable,
                __file__,
                "--child",
                "--steps",
                str(args.steps),
                "--pretrain-steps",
                str(args.pretrain_steps),
                "--cache",
                str(args.cache),
                "--data",
                str(args.data),
            ]
            # CANARY_CPU_NUMERICS=native: the package must not re-pin; the environment above is the setting
            result = subprocess.run(
                command,
                env={**base, **env, "CANARY_CPU_NUMERICS": "native"},
                capture_output=True,
                text=True,
                check=True,
            )
            row = json.loads(result.stdout.strip().splitlines()[-1])
            report["settings"].setdefault(name, {"env": env, "runs": []})["runs"].append(row)
            paired = (
                f"  MKL {row['mkl']['median_s'] * 1e3:.1f} ms {row['mkl']['sha256']}: oneDNN "
                f"{row['onednn_speedup']:.2f}x"
                if "mkl" in row
                else ""
            )
            print(
                f"{name:<42} {row['median_s'] * 1e3:6.1f} ms/step (min {row['min_s'] * 1e3:5.1f})  "
                f"{row['sha256']}{paired}",
                flush=True,
            )
    report["load_average_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
