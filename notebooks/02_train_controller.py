# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     notebook_metadata_filter: kernelspec,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Training with the canary controller (Algorithm 1)
#
# One run = one method × one seed. Each step draws $u \sim U(0,1)$: a **safe** batch from $\mathcal{D}_S$ if
# $u < p_t$, else a **target** batch from $\mathcal{D}_T$ (and $T \leftarrow T-1$); training ends when every
# target batch was seen once. After every step with $t \bmod K = 0$ the canaries are evaluated, the risk is
# smoothed, $\hat r_t = \alpha r_t + (1-\alpha)\hat r_{t-1}$ (Eq. 2), and $p_t$ moves by the threshold rule
# with hysteresis (Eq. 3): up by $\delta_{up}$ when $\hat r_t > r_{high}$, down by $\delta_{down}$ when
# $\hat r_t < r_{low}$, clipped to $[p_{min}, p_{max}]$. The method's parameter file picks the schedule of
# $p_t$ from the registry `canary_lib.methods.METHODS`. A killed run resumes from its last checkpoint when this
# notebook runs again.

# %% tags=["parameters"]
PARAMS: list = ["parameters/organism.yaml", "parameters/methods/canary.yaml"]  # profile, then method
OVERRIDES: list = []  # overrides in the syntax of `canary train --set` (docs/notebooks.md)
RUN_DIR: str = "runs/organism/canary/seed42"  # the run directory (resumed if it holds a checkpoint)
INTERACTIVE: bool = False  # True in JupyterLab: adds the ipywidgets slider replay (never in batch runs)

# %% [markdown]
# ## The configuration
#
# What this run trains with (click to unfold; the controller's values are the `controller` section), and the
# method's schedule of $p_t$ as the registry describes it.

# %%
from pathlib import Path

import pandas as pd
from IPython.display import display

from canary_lib.config import load_config
from canary_lib.methods import METHODS

cfg = load_config(PARAMS, OVERRIDES)
print(f"method {cfg.method.name}: {METHODS[cfg.method.name].schedule.__doc__}")
cfg

# %% [markdown]
# ## Train
#
# Algorithm 1 into `RUN_DIR`, with a progress bar over target batches. The table is the run's `metrics.json`:
# `n_steps` and `n_safe_steps` count optimizer steps, `avg_p` is the mean $p_t$ (the safe-data share the
# schedule asked for), `canary_share` the part of the time spent on canary evaluations.

# %%
from canary_lib.train import train_from_config

metrics = train_from_config(cfg, Path(RUN_DIR))
pd.Series(metrics).to_frame("value")

# %% [markdown]
# ## Replay the controller trace
#
# $p_t$ and $\hat r_t$ up to a chosen step, and the canary answers with their judge scores at the evaluation
# of that step: move the slider under the figure (it replays without a kernel). Read it as the controller's
# reasoning: whenever $\hat r_t$ leaves the $[r_{low}, r_{high}]$ band, $p_t$ steps at the next step. With
# `INTERACTIVE = True` an ipywidgets slider drives a live figure instead.

# %%
from canary_lib.artifacts import RunDir
from canary_lib.trace_replay import read_answers, trace_replay_figure, trace_replay_widget

c = cfg.controller
run = RunDir(RUN_DIR)
steps, controller = pd.read_csv(run.steps_path), pd.read_csv(run.controller_path)
answers = read_answers(run.canary_answers_path)
trace_replay_figure(steps, controller, answers, c.r_low, c.r_high, title=f"{cfg.method.name}, seed {cfg.seed}").show()

# %%
if INTERACTIVE:
    display(trace_replay_widget(steps, controller, answers, c.r_low, c.r_high))

# %% [markdown]
# ## The adapter over training
#
# With `train.snapshot_every` set (e.g. `OVERRIDES = ["train.snapshot_every=1"]`), the run keeps its adapter at
# every (n-th) canary evaluation in `snapshots/step<t>/`. The norm of each layer's LoRA update,
# $\lVert \tfrac{\alpha}{\sqrt r} B A \rVert_F$, against $r_t$ and $\hat r_t$: where the adapter grows fastest
# and where the canaries start to say misaligned (the phase-transition view). `canary eval RUN --step t`
# evaluates a snapshot into `snapshot_evals/step<t>/`.

# %%
from canary_lib.figures import adapter_norm_figure
from canary_lib.snapshots import snapshot_norms

norms = snapshot_norms(RUN_DIR)
if norms.empty:
    print("no adapter snapshots kept (train.snapshot_every is not set)")
else:
    adapter_norm_figure(
        norms, controller, c.r_low, c.r_high, title=f"{cfg.method.name}, seed {cfg.seed}: LoRA update norm per layer"
    ).show()
