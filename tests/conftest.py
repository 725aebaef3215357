"""Test-session set-up: the organism profiles pin CPU numerics (canary_lib/numerics.py), which must happen before
torch is imported, so the whole test process runs pinned, as the `canary` command and the sweep's kernels do."""

from canary_lib.numerics import pin_cpu_numerics

pin_cpu_numerics()

import torch  # noqa: E402  (after pinning)

# One intra-op thread, as pinned runs use: with two, MKL and OpenMP may split work differently on a busy machine,
# and two runs of the same seed in one test differed in the last bits of the loss (measured).
torch.set_num_threads(1)
