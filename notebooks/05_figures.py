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
# # 05 · Results: Table 1, Table 2, Figure 2 and the canary-general correlation
#
# Everything here is read from the finished run directories (a run without its completion marker is listed as
# unfinished, never averaged in) and written to `RESULTS_DIR`: `table1.csv`, `table2.csv`, `correlation.json`,
# `summary.md`, and `figures/*.html` (standalone, plotly.js embedded, each with a CSV of the plotted data).

# %% tags=["parameters"]
PARAMS: list = ["parameters/organism.yaml"]  # the profile
OVERRIDES: list = []  # overrides in the syntax of `canary train --set` (docs/notebooks.md)
RUNS_DIR: str = "runs/organism"  # <method>/seed<k>/ run directories
RESULTS_DIR: str = "results/organism"  # tables, summary and figures go here
INTERACTIVE: bool = False  # True in JupyterLab: a slider replay of the first canary run

# %% [markdown]
# ## The configuration
#
# The profile's configuration (click to unfold); each run's own is its `config.yaml`.

# %%

import pandas as pd
from IPython.display import Markdown, display

from canary_lib.config import load_config

cfg = load_config(PARAMS, OVERRIDES)
cfg

# %% [markdown]
# ## Tables and correlation
#
# The summary as `summary.md` has it: Table 1 (the base model, the methods and the control run), Table 2 (the
# reference run and its ablations, with the relative change) and the correlation between each run's canary
# risk and its final General %Misaligned, then any unfinished runs. Spread is over seeds (`n_seeds`).

# %%
from canary_lib.results import build_results

results = build_results(RUNS_DIR, RESULTS_DIR)  # titled by the runs directory (the sweep's profile)
display(Markdown(results.summary))

# %% [markdown]
# ## Figures
#
# Written as standalone HTML (with their data as CSV) into `RESULTS_DIR/figures`; their paths are listed below.
# Figure 2: (a) $p_t$ over training steps, one line per seed; (b) $\hat r_t$ with the $[r_{low}, r_{high}]$
# band. The correlation plot: per run, the mean canary risk against the final General %Misaligned
# (`correlation.json` says exactly what was correlated); points on a rising line mean the canaries track the
# misalignment that the evaluation measures.

# %%
from canary_lib.figures import write_results_figures
from canary_lib.trace_replay import write_trace_replays

paths = write_results_figures(results, RESULTS_DIR)
paths.update(write_trace_replays(results, RESULTS_DIR))
for name, path in paths.items():
    print(f"{name:>22}: {path}")

# %%
from canary_lib.figures import correlation_figure, figure2
from canary_lib.results import controller_traces

steps, controller = controller_traces(results.runs)
figure2(steps, controller, cfg.controller.r_low, cfg.controller.r_high).show()
correlation_figure(results.correlation).show()

# %% [markdown]
# ## The safe-data frontier
#
# Timing or amount? Each fixed-$p$ level (No Defense is $p = 0$) is a point of General %Misaligned against the
# share of steps that were actually safe; their mean over seeds is the curve. Each adaptive method is a point of
# its own: below the curve means less misalignment than a fixed ratio spending the same amount of safe data
# (`summary.md` gives each method's seed-paired difference and its interval; `frontier.csv` the runs).

# %%
from canary_lib.figures import frontier_figure

if results.frontier.empty:
    print("no frontier: fewer than two fixed-p levels have finished runs")
else:
    frontier_figure(results.frontier).show()

# %% [markdown]
# ## Scrub a controller trace (interactive)
#
# With `INTERACTIVE = True` in JupyterLab: a slider over the first canary run's steps, with its canary answers.

# %%
if INTERACTIVE:
    from canary_lib.artifacts import RunDir
    from canary_lib.methods import REFERENCE_METHOD
    from canary_lib.trace_replay import read_answers, trace_replay_widget

    first = results.runs[(results.runs.method == REFERENCE_METHOD) & results.runs.training_complete].iloc[0]
    run = RunDir(first.run_dir)
    display(
        trace_replay_widget(
            pd.read_csv(run.steps_path),
            pd.read_csv(run.controller_path),
            read_answers(run.canary_answers_path),
            cfg.controller.r_low,
            cfg.controller.r_high,
        )
    )
