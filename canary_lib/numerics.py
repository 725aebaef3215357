"""Pinned CPU numerics: the organism's results bit for bit the same on any x86-64 CPU with AVX2.

Which machine code a float operation runs on a CPU is chosen at run time by three libraries, and each choice
changes the last bits of some results (measured: docs/organism.md, "Reproducibility across CPUs"); a tiny
pre-trained model then drifts, and every sample drawn from it. Pinning fixes all three choices:

| library | chooses by default | pinned to | how |
|---|---|---|---|
| ATen (torch's own kernels) | the widest vector unit (AVX-512 or AVX2) | AVX2 | ATEN_CPU_CAPABILITY=avx2 |
| MKL (matrix products) | a vendor- and model-specific branch | SSE2, same results on any vendor | MKL_CBWR=COMPATIBLE |
| oneDNN | the widest vector unit | AVX2 | ONEDNN_MAX_CPU_ISA=AVX2 |

and the number of torch threads (parallel reductions split work by thread count): `PINNED_THREADS` for
everything the organism computes. All of it must be in place before torch runs its first operation, so it is
applied by `pin_cpu_numerics()` from the places that start organism work before torch is imported: the
`canary` command line and `load_config` for a configuration with `model.cpu_numerics: pinned`
(parameters/sweeps/organism_pinned.yaml; the organism profile's default until 2026-12-03, now native: 2x faster).
A process that imported torch earlier keeps its native numerics; `check_cpu_numerics` says so. No torch import
here.
"""

from __future__ import annotations

import os
import sys
import warnings

PINNED_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "COMPATIBLE",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_DYNAMIC": "FALSE",
}
"""MKL_DYNAMIC=FALSE: MKL must not drop threads on a busy machine; its reproducibility needs a fixed thread count."""
PINNED_THREADS = 1
"""torch intra-op threads under pinned numerics, and of organism runs under either numerics (the thread count can
change a reduction's order; organism runs are fastest with one thread per process)."""
PRETRAIN_THREADS = 1
"""Pre-training threads under pinned numerics, fixed so that the result does not depend on the machine (one: a
second thread on a busy machine slowed a pre-training step up to 8x, spinning OpenMP threads)."""
NATIVE_PRETRAIN_THREADS = 2
"""Pre-training threads under native numerics (at most the machine's cores): pre-training runs alone, before any
job, so the second core is free. Measured on a 2-core AMD EPYC: the same model bits as one thread (after 80 and
after the profile's 600 steps), 1.2-1.4x faster (docs/lean_path.md, "Native numerics and warm kernels")."""
NATIVE_ENV = "CANARY_CPU_NUMERICS"
"""Set to "native" to opt out of pinning (e.g. to time the unpinned kernels)."""


def pin_cpu_numerics() -> bool:
    """Put the pinned settings into this process's environment if torch has not started yet.

    Returns:
        True when the settings will take effect (torch not imported yet, or imported already under them).
    """
    if os.environ.get(NATIVE_ENV) == "native":
        return False
    if "torch" in sys.modules:
        return all(os.environ.get(k) == v for k, v in PINNED_ENV.items())
    for key, value in PINNED_ENV.items():
        os.environ[key] = value
    return True


def cpu_numerics_state() -> dict[str, str]:
    """What this process runs with: torch's CPU capability, the MKL branch and oneDNN limit, the thread count."""
    import torch

    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        **{key: os.environ.get(key, "") for key in PINNED_ENV},
        "threads": str(torch.get_num_threads()),
    }


def is_pinned() -> bool:
    state = cpu_numerics_state()
    return state["cpu_capability"] == "AVX2" and all(state[k] == v for k, v in PINNED_ENV.items())


_warned = False


def check_cpu_numerics() -> None:
    """Warn once when organism work runs with native numerics (its numbers may differ in the last bits from
    the published ones, and so may every sample after them)."""
    global _warned
    if _warned or os.environ.get(NATIVE_ENV) == "native" or is_pinned():
        return
    _warned = True
    state = cpu_numerics_state()
    warnings.warn(
        f"CPU numerics are not pinned in this process ({state}): results may differ from the published organism "
        "tables in the last bits. Start organism work through `canary`, a sweep, or load_config before anything "
        "imports torch (docs/organism.md, 'Reproducibility across CPUs').",
        RuntimeWarning,
        stacklevel=2,
    )
