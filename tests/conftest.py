"""Test-session set-up: the organism profiles pin CPU numerics (canary_lib/numerics.py), which must happen before
torch is imported, so the whole test process runs pinned, as the `canary` command and the sweep's kernels do."""

from canary_lib.numerics import pin_cpu_numerics

pin_cpu_numerics()
