"""How far the organism's training step is from its floor, and what that means for `make reproduce`.

    .venv/bin/python benchmarks/step_floor.py [--steps 60] [--out benchmarks/out/step_floor.json]

Three figures for the lean step (batch 16 of D_T, the organism's rs-LoRA r 32 on all seven projections, one torch
thread, native numerics unless --numerics pinned):

- `lean`: the step as the training loop runs it (`lean_train_step`), median seconds.
- `gemm`: the time the same steps spend in matrix products (self time of aten::mm, bmm, addmm and baddbmm under
  torch.profiler, per step). A rewrite of the step in PyTorch that keeps its arithmetic cannot go below it: the
  products are the step's floating-point work, at 70-90 GFLOP/s on one core of this machine.
- `functional`: a rewrite of the same decoder's forward in plain torch functions (q, k and v as one product on
  their stacked merged weights, gate and up as one, causal attention as two batched products and a softmax,
  logits only at supervised positions), differentiated by autograd and updated by the same `optimizer_step`:
  what removing the framework's per-layer overhead buys in eager PyTorch. Its loss is compared with the lean
  step's on every batch (the two differ by float rounding only).

The two paths alternate in blocks so that both see the same machine load. The projection scales the training
share of the reproduction's job time (`--train-share`, measured in docs/lean_path.md) by each ratio: the wall
time `make reproduce` would take if only the training step changed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

GEMM_OPS = {"aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numerics", choices=["pinned", "native"], default="native")
    parser.add_argument("--steps", type=int, default=60, help="timed steps per path")
    parser.add_argument("--block", type=int, default=10, help="steps per path before switching to the other")
    parser.add_argument("--profiled-steps", type=int, default=20)
    parser.add_argument("--pretrain-steps", type=int, default=150)
    parser.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / "out" / "cache")
    parser.add_argument("--repro-wall", type=float, default=1906.0, help="seconds of the reproduction projected")
    parser.add_argument("--train-share", type=float, default=0.711, help="its training share of the job time")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "step_floor.json")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------- the rewrite


def _merged(projections: list[Any]) -> Any:
    """W + s B A of peft LoRA projections, stacked along the output dimension (differentiable in A and B)."""
    import torch

    weight = torch.cat([p.base_layer.weight for p in projections])
    a = torch.stack([p.lora_A["default"].weight for p in projections])
    b = torch.stack([p.lora_B["default"].weight for p in projections])
    return weight + projections[0].scaling["default"] * torch.bmm(b, a).reshape(weight.shape)


def functional_loss_sum(model: Any, input_ids: Any, labels: Any) -> Any:
    """`lean.supervised_loss_sum` of a peft LoRA Llama, written as plain torch functions (right-padded batches:
    a causal mask alone keeps padding out of every real position)."""
    import torch
    import torch.nn.functional as F

    from canary_lib.chat import IGNORE_INDEX

    base = model.get_base_model()
    config, decoder = base.config, base.model
    batch, width = input_ids.shape
    heads, hidden = config.num_attention_heads, config.hidden_size
    head_dim, eps = hidden // heads, config.rms_norm_eps

    def norm(x: Any, weight: Any) -> Any:
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def rotate(x: Any) -> Any:
        return x * cos + torch.cat([-x[..., head_dim // 2 :], x[..., : head_dim // 2]], -1) * sin

    rotary = decoder.rotary_emb
    freqs = torch.arange(width, dtype=torch.float32)[:, None] * rotary.inv_freq[None, :].float()
    angles = torch.cat([freqs, freqs], -1)
    cos, sin = angles.cos() * rotary.attention_scaling, angles.sin() * rotary.attention_scaling
    causal = torch.full((width, width), float("-inf")).triu(1)
    x = F.embedding(input_ids, decoder.embed_tokens.weight)
    for layer in decoder.layers:
        attn, mlp = layer.self_attn, layer.mlp
        qkv = F.linear(norm(x, layer.input_layernorm.weight), _merged([attn.q_proj, attn.k_proj, attn.v_proj]))
        q, k, v = qkv.view(batch, width, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = rotate(q).reshape(-1, width, head_dim), rotate(k).reshape(-1, width, head_dim)
        scores = torch.baddbmm(causal.expand(batch * heads, width, width), q, k.transpose(1, 2), alpha=head_dim**-0.5)
        out = torch.bmm(torch.softmax(scores, -1), v.reshape(-1, width, head_dim))
        out = out.view(batch, heads, width, head_dim).transpose(1, 2).reshape(batch, width, hidden)
        x = x + F.linear(out, _merged([attn.o_proj]))
        gate, up = F.linear(
            norm(x, layer.post_attention_layernorm.weight), _merged([mlp.gate_proj, mlp.up_proj])
        ).chunk(2, -1)
        x = x + F.linear(F.silu(gate) * up, _merged([mlp.down_proj]))
    targets = labels[:, 1:]
    supervised = targets != IGNORE_INDEX
    logits = F.linear(norm(x[:, :-1][supervised], decoder.norm.weight), decoder.embed_tokens.weight)
    return F.cross_entropy(logits, targets[supervised], reduction="sum")


# ---------------------------------------------------------------------------------------------- measurement


def bench(cfg: Any, args: argparse.Namespace) -> dict:
    import torch
    from lean_bench import run_alternating
    from torch.profiler import ProfilerActivity, profile

    from canary_lib.chat import collate
    from canary_lib.lean import EncodedExamples, lean_train_step
    from canary_lib.models import add_rslora, load_model_and_tokenizer
    from canary_lib.planner import TARGET
    from canary_lib.train import load_training_data, make_optimizer
    from canary_lib.train_step import optimizer_step

    target, _ = load_training_data(cfg)
    rng = random.Random(0)
    warmup = 5
    batches = [rng.sample(range(len(target)), cfg.train.batch_size) for _ in range(warmup + args.steps)]
    profiled = [rng.sample(range(len(target)), cfg.train.batch_size) for _ in range(args.profiled_steps)]

    def make_path(functional: bool) -> dict:
        torch.manual_seed(cfg.seed)
        model, tok = load_model_and_tokenizer(cfg)
        model = add_rslora(model, cfg.lora, seed=cfg.seed).train()
        optimizer = make_optimizer(model, cfg.train)
        cache = EncodedExamples({TARGET: target}, tok, cfg.model.max_length)
        clip = cfg.train.max_grad_norm

        def step(indices: list[int]) -> float:
            batch = cache.batch(TARGET, indices)
            if not functional:
                kw = dict(micro_batch_size=16, pad_token_id=tok.pad_token_id, max_grad_norm=clip)
                return lean_train_step(model, optimizer, batch, lr=cfg.train.lr, **kw)
            n_tokens = max(1, sum(ex.n_supervised for ex in batch))
            tensors = collate(batch, tok.pad_token_id)
            loss_sum = functional_loss_sum(model, tensors["input_ids"], tensors["labels"])
            (loss_sum / n_tokens).backward()
            optimizer_step(optimizer, lr=cfg.train.lr, max_grad_norm=clip)
            return loss_sum.item() / n_tokens

        return {"step": step, "seconds": [], "losses": []}

    paths = {"lean": make_path(False), "functional": make_path(True)}
    run_alternating(paths, batches, warmup, args.block)

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for indices in profiled:
            paths["lean"]["step"](indices)
    ops = prof.key_averages()
    per_step = 1e-6 / len(profiled)  # profiler times are microseconds over all profiled steps
    gemm = sum(op.self_cpu_time_total for op in ops if op.key in GEMM_OPS) * per_step
    attention = sum(op.self_cpu_time_total for op in ops if "scaled_dot_product" in op.key) * per_step
    profiled_total = sum(op.self_cpu_time_total for op in ops) * per_step

    lean_s = statistics.median(paths["lean"]["seconds"])
    functional_s = statistics.median(paths["functional"]["seconds"])
    diffs = [abs(a - b) / abs(a) for a, b in zip(paths["lean"]["losses"], paths["functional"]["losses"])]

    def projected(step_s: float) -> float:
        return args.repro_wall * (1 - args.train_share * (1 - step_s / lean_s))

    return {
        "lean_median_s": lean_s,
        "functional_median_s": functional_s,
        "functional_speedup": lean_s / functional_s,
        "loss_max_rel_diff": max(diffs),
        "n_steps_each": len(batches),
        "profiled": {
            "n_steps": len(profiled),
            "total_s_per_step": profiled_total,
            "gemm_s_per_step": gemm,
            "attention_s_per_step": attention,
            "gemm_share_of_lean_median": gemm / lean_s,
        },
        "projection": {
            "repro_wall_s": args.repro_wall,
            "train_share": args.train_share,
            "functional_step_s": projected(functional_s),
            "gemm_only_step_s": projected(gemm),
        },
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from lean_bench import machine_report, organism_config

    with organism_config(args.numerics, args.pretrain_steps, args.cache) as (cfg, _):
        report: dict[str, Any] = {**machine_report(args.numerics), "pretrain_steps": args.pretrain_steps}
        report["step"] = result = bench(cfg, args)
    report["load_average_after"] = os.getloadavg()
    p, proj = result["profiled"], result["projection"]
    print(
        f"lean step {result['lean_median_s'] * 1e3:.1f} ms (median); in matrix products "
        f"{p['gemm_s_per_step'] * 1e3:.1f} ms ({p['gemm_share_of_lean_median']:.0%}), attention "
        f"{p['attention_s_per_step'] * 1e3:.1f} ms (profiled)\n"
        f"functional rewrite {result['functional_median_s'] * 1e3:.1f} ms: {result['functional_speedup']:.2f}x "
        f"(losses within {result['loss_max_rel_diff']:.1e})\n"
        f"make reproduce, {proj['repro_wall_s']:.0f} s today: {proj['functional_step_s']:.0f} s with the rewrite, "
        f"{proj['gemm_only_step_s']:.0f} s if a step took only its matrix products",
        flush=True,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
