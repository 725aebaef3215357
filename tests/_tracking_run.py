"""Train the tiny world once, in a process of its own (trackers keep process-wide state, and trackio reads its
store's location, TRACKIO_DIR, when it is imported):

    python tests/_tracking_run.py MODEL_DIR DATA_DIR OUT_DIR [key=value ...]

The canary evaluation is scripted (tests/_fixtures.py), so controller.csv has rows without a judge.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from canary_lib.numerics import pin_cpu_numerics  # noqa: E402

pin_cpu_numerics()  # as the test session does (tests/conftest.py), before torch

import torch  # noqa: E402

torch.set_num_threads(1)

from _fixtures import ScriptedCanary  # noqa: E402
from canary_lib.config import load_config  # noqa: E402
from canary_lib.train import train_from_config  # noqa: E402

RISKS = [0.3, 0.0, 0.15, 0.05, 0.2]
BASE = [
    "controller.K=2",
    "controller.p_init=0.1",
    "train.checkpoint_every=4",
    "train.micro_batch_size=8",
    "lora.r=4",
    "lora.alpha=8",
]

if __name__ == "__main__":
    model, data, out, *overrides = sys.argv[1:]
    cfg = load_config([], [f"model.name_or_path={model}", f"data.dir={data}", *BASE, *overrides])
    train_from_config(cfg, Path(out), canary_fn=ScriptedCanary(RISKS))
