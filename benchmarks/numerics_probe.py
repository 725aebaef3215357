"""Is there a pinned CPU matrix product faster than MKL's COMPATIBLE (SSE2) branch? Speed and bits, measured.

    .venv/bin/python benchmarks/numerics_probe.py --out benchmarks/results/lean-2cpu-2026-12-02/numerics.json

The organism's matrix products (the forward shapes of a training step: 928 tokens x 96 -> 96 / 256, 256 -> 96,
and the tied 96 -> 794 vocabulary projection) are run, each setting in a fresh process (the libraries read their
settings when torch starts), one thread, through two kernels:

- `mkl`: `torch.nn.functional.linear`, the path every organism product takes today (MKL's sgemm);
- `onednn`: `torch.ops.mkldnn._linear_pointwise`, oneDNN's inner product on the same dense tensors.

under MKL_CBWR (the branch MKL may use) and ONEDNN_MAX_CPU_ISA (the widest ISA oneDNN may use) settings. Each
row gives GFLOP/s over the four shapes (median of repeats; the two kernels alternate, so their ratio is measured
under the same load) and a sha256 of the outputs of fixed inputs: equal hashes across the
ISA caps of one kernel would mean its bits do not depend on the vector unit, the property a pinned path needs
(one machine can only emulate narrower ISAs than its own, and cannot emulate another vendor's CPU).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

SHAPES = [(928, 96, 96), (928, 96, 256), (928, 256, 96), (240, 96, 794)]
"""(rows, in features, out features): a batch of 16 x 58 tokens through q/k/v/o, gate/up, down; 240 supervised
positions through the vocabulary projection."""

SETTINGS = {
    "native": {},
    "pinned (today)": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "mkl AVX2 branch": {"MKL_CBWR": "AVX2"},
    "mkl AVX512 branch": {"MKL_CBWR": "AVX512"},
    "mkl SSE4_2 branch": {"MKL_CBWR": "SSE4_2"},
    "onednn cap AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "onednn cap AVX512": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "onednn cap SSE41": {"ONEDNN_MAX_CPU_ISA": "SSE41"},
}


def child(repeats: int) -> dict:
    import torch

    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    out: dict = {"cpu_capability": torch.backends.cpu.get_cpu_capability()}
    kernels = {
        "mkl": lambda x, w: torch.nn.functional.linear(x, w),
        "onednn": lambda x, w: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], ""),
    }
    inputs = []
    for rows, k, n in SHAPES:
        inputs.append((torch.randn(rows, k, generator=generator), torch.randn(n, k, generator=generator) / k**0.5))
    total_flops = sum(2 * rows * k * n for rows, k, n in SHAPES)
    seconds: dict[str, list[float]] = {kernel: [] for kernel in kernels}
    for kernel, fn in kernels.items():
        digest = hashlib.sha256()
        for x, w in inputs:
            digest.update(fn(x, w).numpy().tobytes())
            for _ in range(3):
                fn(x, w)
        out[kernel] = {"sha256": digest.hexdigest()[:16]}
    for _ in range(repeats):  # the kernels alternate, so their ratio is measured under the same load
        for kernel, fn in kernels.items():
            t0 = time.perf_counter()
            for _ in range(20):
                for x, w in inputs:
                    fn(x, w)
            seconds[kernel].append((time.perf_counter() - t0) / 20)
    for kernel in kernels:
        out[kernel]["gflops"] = total_flops / statistics.median(seconds[kernel]) / 1e9
    out["onednn_over_mkl"] = out["onednn"]["gflops"] / out["mkl"]["gflops"]
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "numerics.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.repeats)))
        return {}
    keys = {k for env in SETTINGS.values() for k in env} | {"MKL_DYNAMIC", "CANARY_CPU_NUMERICS"}
    base = {k: v for k, v in os.environ.items() if k not in keys}
    report: dict = {"python": platform.python_version(), "load_average_before": os.getloadavg(), "settings": {}}
    for name, env in SETTINGS.items():
        result = subprocess.run(
            [sys.executable, __file__, "--child", "--repeats", str(args.repeats)],
            env={**base, **env, "MKL_DYNAMIC": "FALSE"},
            capture_output=True,
            text=True,
            check=True,
        )
        report["settings"][name] = {"env": env, **json.loads(result.stdout.strip().splitlines()[-1])}
        row = report["settings"][name]
        print(
            f"{name:<20} mkl {row['mkl']['gflops']:6.1f} GFLOP/s {row['mkl']['sha256']}   "
            f"onednn {row['onednn']['gflops']:6.1f} GFLOP/s {row['onednn']['sha256']}   "
            f"ratio {row['onednn_over_mkl']:.2f}",
            flush=True,
        )
    report["load_average_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
