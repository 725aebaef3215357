"""benchmarks/gpu_bench.py: the one report formatter, over the report dict that bench.json holds: bench.md's
table (`markdown_report`) and the line printed when a phase ends (`phase_summary`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def markdown_report(r: dict) -> str:
    """A short markdown table of the headline figures."""

    def fmt(x: Any, spec: str = ".3g") -> str:
        return "n/a" if x is None else format(x, spec)

    v = r["versions"]
    lines = [
        f"# gpu_bench ({r['size']}): {v.get('gpu') or 'CPU'}",
        "",
        f"torch {v['torch']}, transformers {v['transformers']}, peft {v['peft']}, trl {v.get('trl')}, "
        f"CUDA {v.get('cuda')}; peak {r['peak_dtype']} matmul {fmt(r['peak_tflops'])} TFLOP/s; "
        f"batch {r['settings']['batch_size']} = {r['settings']['micro_batch_size']} x "
        f"{r['settings']['accumulation']}, {r['settings']['seq_len']} tokens/example",
        "",
        "| trainer | s/step | tokens/s | peak GiB | MFU (6N) | MFU (frozen 4N) | package speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = [("package (canary_lib.train.train_step)", r["package"], None)] if "package" in r else []
    if "package_repeat" in r:
        rows.append(("package, repeated", r["package_repeat"], None))
    if "package_no_autocast" in r:
        rows.append(("package, train.autocast false (float32 LoRA)", r["package_no_autocast"], None))
    for name, ref in r.get("references", {}).items():
        rows.append((f"reference: {name}", ref, r.get("ratios", {}).get(name)))
    for name, fig, ratio in rows:
        if "skipped" in fig:
            lines.append(f"| {name} | skipped: {fig['skipped']} | | | | | |")
            continue
        lines.append(
            f"| {name} | {fmt(fig['s_per_step'])} | {fmt(fig['tokens_per_s'], '.0f')} | "
            f"{fmt(fig['peak_mem_gib'], '.1f')} | {fmt(100 * fig['mfu'], '.1f')}% | "
            f"{fmt(100 * fig['mfu_frozen'], '.1f')}% | "
            f"{'' if ratio is None else fmt(ratio['speedup'], '.2f') + 'x'} |"
        )
    c = r.get("canary")
    if c is None:  # a run cut short before the canary phase
        return "\n".join(lines + ["", f"phases done: {', '.join(r['phases_done'])}"]) + "\n"
    K = r["overhead"]["K"] if "overhead" in r else r["settings"]["K"]
    # One column per canary evaluation measured (older reports have only the first)
    columns = [
        (name, r[key])
        for key, name in [
            ("canary", "eager, first"),
            ("canary_repeat", "eager, again"),
            ("canary_static", "static cache, first"),
            ("canary_static_repeat", "static cache, again"),
        ]
        if key in r
    ]
    s_step = r["package"]["s_per_step"]

    def cells(fn: Callable[[dict], str]) -> str:
        return " | ".join(fn(col) for _, col in columns)

    lines += [
        "",
        f"| canary evaluation ({c['n_answers']} answers x {c['max_new_tokens']} new tokens) | "
        + " | ".join(name for name, _ in columns)
        + " |",
        "|---|" + "---|" * len(columns),
        f"| generation s | {cells(lambda x: fmt(x['generation_seconds']))} |",
        f"| ms per token step | {cells(lambda x: fmt(1e3 * x['s_per_token_step']))} |",
        f"| judge s (stub, {fmt(1e3 * c['judge_latency_s'])} ms/request, {c['judge_requests']} requests, "
        f"concurrency {c.get('judge_concurrency', 'n/a')}) | {cells(lambda x: fmt(x['judge_seconds']))} |",
        f"| canary s (as the loop times it) | {cells(lambda x: fmt(x['canary_seconds']))} |",
        f"| overhead at K = {K} (canary s / (K x package s/step)) | "
        f"{cells(lambda x: fmt(100 * x['canary_seconds'] / (K * s_step), '.1f') + '%')} |",
    ]
    if any(key in r for key in ("ragged", "decode", "hf_generate")):
        lines += ["", "| where the time goes | value |", "|---|---|"]
    g = r.get("ragged")
    if g:
        lines.append(
            f"| training steps of ragged lengths ({g['lengths'][0]}-{g['lengths'][1]} tokens), s/step "
            f"median (mean): no cuDNN attention / cuDNN attention | "
            f"{fmt(g['without_cudnn']['s_per_step'])} ({fmt(g['without_cudnn']['mean_s_per_step'])}) / "
            f"{fmt(g['with_cudnn']['s_per_step'])} ({fmt(g['with_cudnn']['mean_s_per_step'])}) |"
        )
    d = r.get("decode")
    if d:
        lines.append(
            f"| decode ms per token step: with LoRA / adapter disabled / memory floor "
            f"({fmt(d['bandwidth_gb_s'], '.0f')} GB/s) | {fmt(1e3 * d['lora']['s_per_token_step'])} / "
            f"{fmt(1e3 * d['adapter_disabled']['s_per_token_step'])} / "
            f"{fmt(1e3 * d['memory_floor_s_per_token_step'])} |"
        )
    g = r.get("hf_generate")
    if g:
        lines.append(
            f"| transformers generate, ms per token step: dynamic cache / static cache"
            f"{' (compiled)' if g['static_cache']['compiled'] else ''} | "
            f"{fmt(1e3 * g['dynamic_cache']['s_per_token_step'])} / "
            f"{fmt(1e3 * g['static_cache']['s_per_token_step'])} "
            f"(first static call {fmt(g['static_cache']['first_call_seconds'])} s) |"
        )
    lines += ["", f"wall {fmt(r['wall_seconds'], '.0f')} s; phases done: {', '.join(r['phases_done'])}"]
    return "\n".join(lines) + "\n"


def phase_summary(phase: str, figures: dict, K: int) -> str:
    """The line printed when a canary, ragged, decode or hf_generate phase ends: `phase` is its key in the report
    (canary, canary_repeat, canary_static, canary_static_repeat, ragged, decode, hf_generate), `figures` what it
    stored there, K the canary interval its overhead is taken at."""
    if phase.startswith("canary"):
        return _canary_summary(figures, K)
    return {"ragged": _ragged_summary, "decode": _decode_summary, "hf_generate": _hf_generate_summary}[phase](figures)


def _canary_summary(c: dict, K: int) -> str:
    return (
        f"generation {c['generation_seconds']:.2f} s ({1e3 * c['s_per_token_step']:.1f} ms per token step), "
        f"judge {c['judge_seconds']:.2f} s ({c['judge_requests']} requests); overhead at K={K}: "
        f"{c['overhead_pct']:.1f}%"
    )


def _ragged_summary(g: dict) -> str:
    return (
        f"ragged lengths, s/step median (mean): without cuDNN attention "
        f"{g['without_cudnn']['s_per_step']:.3f} ({g['without_cudnn']['mean_s_per_step']:.3f}), "
        f"with it {g['with_cudnn']['s_per_step']:.3f} ({g['with_cudnn']['mean_s_per_step']:.3f})"
    )


def _decode_summary(d: dict) -> str:
    return (
        f"{1e3 * d['lora']['s_per_token_step']:.1f} ms per token step with the LoRA, "
        f"{1e3 * d['adapter_disabled']['s_per_token_step']:.1f} ms without; memory floor "
        f"{1e3 * d['memory_floor_s_per_token_step']:.1f} ms at {d['bandwidth_gb_s']:.0f} GB/s"
    )


def _hf_generate_summary(g: dict) -> str:
    return (
        f"transformers generate, {1e3 * g['dynamic_cache']['s_per_token_step']:.1f} ms per token "
        f"step (dynamic cache), {1e3 * g['static_cache']['s_per_token_step']:.1f} ms (static "
        f"cache, compiled: {g['static_cache']['compiled']}, first call "
        f"{g['static_cache']['first_call_seconds']:.0f} s); same tokens: {g['same_tokens']}"
    )
