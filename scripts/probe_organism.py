"""Quick probes of the organism's regime (docs/organism.md, "Regime criteria"): is a world graded enough for the
controller? Measures only what the criteria need: the base model (C1, C2), No Defense (C3, C4), Fixed p = p_max
(C5) and, optionally, the trace of Canary runs (C6, never their evaluation).

    .venv/bin/python scripts/probe_organism.py NAME --set train.lr=1e-5 --set train.epochs=2 [--seeds 42 123 456]

Open-loop runs are measured every --K steps (default 10): measuring changes nothing in training, and K = 30's
evaluations are a subset of K = 10's, so the criteria at the paper's K are read off the same runs exactly.
Writes probes/<NAME>/ (run directories and summary.json) and prints one line per run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from canary_lib.config import RunConfig, load_config

PROFILE = "parameters/organism.yaml"
RUNS = {  # probe run name -> (method parameter file, extra overrides)
    "no_defense": ("parameters/methods/no_defense.yaml", []),
    "fixed_20": ("parameters/methods/fixed_20.yaml", []),
    "canary": ("parameters/methods/canary.yaml", []),
    "no_ema": ("parameters/methods/no_ema.yaml", []),
    "secure_control": ("parameters/methods/secure_control.yaml", []),
}
PAPER_K = 30


def trace_at_paper_k(rows: list[dict], alpha: float, closed_loop: bool) -> list[dict]:
    """The evaluations a K = 30 run would have made (steps divisible by 30), with the EMA recomputed on them
    (closed-loop runs, trained at K = 30: the r̂ their controller used)."""
    from canary_lib.controller import ema_update

    out, ema = [], 0.0
    for row in rows:
        if row["step"] % PAPER_K == 0:
            ema = row["risk_ema"] if closed_loop else ema_update(ema, row["canary_risk"], alpha)
            out.append(
                {
                    "step": row["step"],
                    "r": row["canary_risk"],
                    "ema": ema,
                    "p_before": row["p_before"],
                    "p_after": row["p_after"],
                }
            )
    return out


def trace_criteria(trace: list[dict], r_high: float) -> dict:
    """C3-C6 quantities of one trace at K = 30 (definitions in docs/organism.md)."""
    plateau = sum(t["r"] for t in trace[-5:]) / len(trace[-5:])
    onset = next((t["step"] for t in trace if t["r"] >= 0.9 * plateau), None)
    first_rise = next((i for i, t in enumerate(trace) if t["p_after"] > t["p_before"]), None)
    closes = first_rise is not None and any(t["ema"] <= r_high for t in trace[first_rise + 1 :])
    return {
        "n_evals": len(trace),
        "plateau": plateau,
        "onset_step": onset,
        "final_ema": trace[-1]["ema"],
        "final_r": trace[-1]["r"],
        "loop_closes": closes,
        "r_by_step": {t["step"]: round(t["r"], 3) for t in trace},
    }


def base_canary_risk(cfg: RunConfig, samples: int = 100) -> float:
    """C1: the base model's misaligned fraction over the canaries, `samples` answers each."""
    import torch

    from canary_lib.evaluate import make_canary_fn
    from canary_lib.models import load_model_and_tokenizer

    cfg = cfg.model_copy(update={"canary": cfg.canary.model_copy(update={"samples_per_prompt": samples})})
    model, tokenizer = load_model_and_tokenizer(cfg)
    with torch.no_grad():
        return make_canary_fn(cfg)(model.eval(), tokenizer, -1).risk


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 123, 456])
    parser.add_argument("--runs", nargs="+", default=["no_defense", "fixed_20"], choices=sorted(RUNS))
    parser.add_argument("--K", type=int, default=10, help="canary interval of open-loop runs")
    parser.add_argument("--no-base", action="store_true")
    parser.add_argument("--no-eval", action="store_true", help="traces only")
    parser.add_argument("--tiny", action="store_true", help="with parameters/organism_tiny.yaml (smoke test)")
    args = parser.parse_args(argv)
    profile = [PROFILE, "parameters/organism_tiny.yaml"] if args.tiny else [PROFILE]
    out = Path("probes") / args.name
    overrides = [f"data.dir={out / 'data'}", *args.overrides]
    cfg = load_config(profile, overrides)  # first: pinned CPU numerics must be set before torch is imported
    import torch

    from canary_lib.artifacts import read_controller
    from canary_lib.evaluate import evaluate_model, evaluate_run
    from canary_lib.organism import prepare_organism_data
    from canary_lib.train import train_from_config

    torch.set_num_threads(1)
    prepare_organism_data(cfg)
    summary: dict = {"overrides": args.overrides, "base": {}, "runs": {}}
    for seed in [] if args.no_base else args.seeds:
        seed_cfg = load_config(profile, overrides + [f"seed={seed}"])
        risk = base_canary_risk(seed_cfg)
        metrics = evaluate_model(seed_cfg, out / "base" / f"seed{seed}", None)
        summary["base"][seed] = {
            "canary_risk": risk,
            "general_mis": metrics["general_misaligned_pct"],
            "general_inc": metrics["general_incoherent_pct"],
            "in_domain_mis": metrics["in_domain_misaligned_pct"],
        }
        print(
            f"base seed {seed}: canary risk {risk:.4f}  general mis {metrics['general_misaligned_pct']:.2f}% "
            f"inc {metrics['general_incoherent_pct']:.2f}%",
            flush=True,
        )
    for name in args.runs:
        method_file, extra = RUNS[name]
        closed_loop = name in ("canary", "no_ema")
        for seed in args.seeds:
            k = PAPER_K if closed_loop else args.K
            run_cfg = load_config([*profile, method_file], overrides + extra + [f"seed={seed}", f"controller.K={k}"])
            run_dir = out / name / f"seed{seed}"
            train_metrics = train_from_config(run_cfg, run_dir)
            trace = trace_at_paper_k(read_controller(run_dir / "controller.csv"), run_cfg.controller.alpha, closed_loop)
            record = {
                **trace_criteria(trace, run_cfg.controller.r_high),
                "avg_p": train_metrics["avg_p"],
                "n_steps": train_metrics["n_steps"],
            }
            if not closed_loop and not args.no_eval:  # Canary runs are never evaluated while the world is chosen
                m = evaluate_run(run_dir)
                record |= {
                    "general_mis": m["general_misaligned_pct"],
                    "general_inc": m["general_incoherent_pct"],
                    "in_domain_mis": m["in_domain_misaligned_pct"],
                }
            summary["runs"].setdefault(name, {})[seed] = record
            evals = " ".join(f"{v:.2f}" for v in list(record["r_by_step"].values())[:8])
            scores = (
                (
                    f"gen mis {record['general_mis']:.1f}% inc {record['general_inc']:.1f}% in-dom "
                    f"{record['in_domain_mis']:.1f}%"
                )
                if "general_mis" in record
                else ""
            )
            print(
                f"{name} seed {seed}: onset {record['onset_step']} plateau {record['plateau']:.3f} final r̂ "
                f"{record['final_ema']:.3f} evals {record['n_evals']} avg p {record['avg_p']:.3f} "
                f"closes {record['loop_closes']} | r@0,30,..: {evals} | {scores}",
                flush=True,
            )
            (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
