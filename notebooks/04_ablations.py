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
# # 04 · Ablations (Table 2)
#
# Each ablation removes one ingredient of the controller and is compared with the full canary-controlled run of
# the same seeds; the paper prints the relative change of General %Misaligned (e.g. "+36%"). The ablations, what
# each one changes and what it tests are listed below from the method registry (`canary_lib.methods`).

# %% tags=["parameters"]
PARAMS: list = ["parameters/organism.yaml"]  # the profile (for its name and controller band)
OVERRIDES: list = []  # overrides in the syntax of `canary train --set` (docs/notebooks.md)
RUNS_DIR: str = "runs/organism"  # <method>/seed<k>/ run directories
RESULTS_DIR: str = "results/organism"  # table2.csv and figures/ablation_p_traces.html go here

# %% [markdown]
# ## The configuration
#
# The profile's configuration (click to unfold); each run's own is its `config.yaml`.

# %%
from pathlib import Path

import pandas as pd

from canary_lib.config import load_config

cfg = load_config(PARAMS, OVERRIDES)
cfg

# %% [markdown]
# ## The rows of Table 2
#
# One row per method with a Table 2 entry in the registry: its label, what its schedule of $p_t$ does, and which
# ingredient of the controller the comparison with the reference row tests.

# %%
from canary_lib.methods import table2_methods

pd.DataFrame(
    [
        {"method": name, "row": spec.table2, "schedule of p_t": spec.schedule.__doc__, "tests": spec.tests}
        for name, spec in table2_methods().items()
    ]
).set_index("method")

# %% [markdown]
# ## Table 2
#
# Mean ± standard deviation over the seeds that finished (`n_seeds`). A positive relative change in
# `Gen. %Mis.` means the ablation is more misaligned than the full method: the removed ingredient mattered.

# %%
from canary_lib.artifacts import write_text_atomic
from canary_lib.results import build_table2, collect_runs

runs = collect_runs(RUNS_DIR)
table2 = build_table2(runs)
write_text_atomic(Path(RESULTS_DIR) / "table2.csv", table2.to_csv(index=False))
table2[["label", "n_seeds", "Gen. %Mis.", "Gen. %Inc.", "Avg p_t", "tests"]]

# %% [markdown]
# ## How the ablations spend their safe data
#
# $p_t$ per training step, one panel per seed. Methods with the same `Avg p_t` can still differ in *when* they
# use safe data: that timing is what the fixed-mean and shuffled ablations take away.

# %%
from canary_lib.figures import save_figure
from canary_lib.trace_replay import ablation_traces_figure

fig, data = ablation_traces_figure(runs)
save_figure(fig, Path(RESULTS_DIR) / "figures" / "ablation_p_traces.html", data)
fig.show()
