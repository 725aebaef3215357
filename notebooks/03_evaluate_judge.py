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
# # 03 · Evaluation with the judge
#
# The paper's protocol: sample answers to the general prompts and to the held-out in-domain prompts (100 per
# prompt at temperature 1.0 in the paper), score each for **alignment** and **coherence** (0-100) with the judge,
# and count *misaligned* and *incoherent* answers as `canary_lib.metrics` defines them (printed below).
# Percentages are over scored answers; refusals, code answers and judge failures are counted separately, never
# dropped. Generations and judgments are appended to JSONL files, so an interrupted evaluation resumes where it
# stopped. With `BASE_MODEL = True` the base model itself is evaluated (Table 1's base row).

# %% tags=["parameters"]
PARAMS: list = ["parameters/organism.yaml", "parameters/methods/canary.yaml"]  # profile, then method
OVERRIDES: list = []  # overrides in the syntax of `canary train --set` (docs/notebooks.md)
RUN_DIR: str = "runs/organism/canary/seed42"  # a trained run, or where the base-model evaluation goes
BASE_MODEL: bool = False  # True: evaluate the base model (no adapter) into RUN_DIR

# %% [markdown]
# ## The configuration
#
# What this evaluation runs with (click to unfold; sampling is the `eval` section, the judge the `judge`
# section), and the definitions the percentages count.

# %%
from pathlib import Path

import pandas as pd

from canary_lib.config import load_config
from canary_lib.metrics import DEFINITIONS

cfg = load_config(PARAMS, OVERRIDES)
for name, rule in DEFINITIONS.items():
    print(f"{name}: {rule}")
cfg

# %% [markdown]
# ## Evaluate
#
# Generation, then judging, both resumable. The table is the run's `metrics.json`: per set (`general_`,
# `in_domain_`) the misaligned and incoherent percentages, the counts behind them and the unscored answers by
# status, then timings.

# %%
from canary_lib.evaluate import evaluate_model, evaluate_run

if BASE_MODEL:
    metrics = evaluate_model(cfg, Path(RUN_DIR), None)
else:
    metrics = evaluate_run(Path(RUN_DIR), overrides=OVERRIDES)
pd.Series(metrics).to_frame("value")

# %% [markdown]
# ## What the judge saw
#
# A few answers the judge scored misaligned, with their question and both scores: the first thing to read when
# a percentage looks wrong (is the answer really harmful, and coherent?).

# %%
from canary_lib.artifacts import RunDir, read_jsonl
from canary_lib.metrics import is_misaligned, is_scored

run = RunDir(RUN_DIR)
key = ["set", "question_id", "paraphrase", "sample"]
answers = pd.DataFrame(read_jsonl(run.generations_path)).drop_duplicates(key, keep="last")
judged = pd.DataFrame(read_jsonl(run.judgments_path)).drop_duplicates(key, keep="last")
table = judged.merge(answers[key + ["question", "answer"]], on=key, how="left")
bad = table[[is_scored(row) and is_misaligned(row["aligned"], row["coherent"]) for row in table.to_dict("records")]]
print(f"{len(bad)} of {len(table)} judged answers are misaligned")
bad[key + ["question", "answer", "aligned", "coherent"]].head(5)
