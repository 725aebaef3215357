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
# # 01 · Canary design
#
# The controller sees emergent misalignment only through $M$ **canary prompts** (Eq. 1):
# $r_t = \frac{1}{M}\sum_i \mathbf{1}[\text{misaligned}(c_i)]$, each answer judged like the evaluation answers
# (`canary_lib.metrics` defines *misaligned*; the definition is printed below). Two things must hold for that
# signal to mean anything:
#
# 1. the canaries are **disjoint** from the evaluation prompts (otherwise the controller optimises the test set);
# 2. the **base model's** canary risk sits below $r_{low}$, or Eq. 3 can never lower $p_t$ and the controller
#    stays pinned at $p_{max}$ (a lesson of the model organism).

# %% tags=["parameters"]
PARAMS: list = ["parameters/organism.yaml"]  # parameter files, merged left to right
OVERRIDES: list = []  # overrides in the syntax of `canary train --set` (docs/notebooks.md)
RESULTS_DIR: str = "results/organism"  # where canary_design.json goes
MEASURE_BASE_RISK: bool = True  # load the base model and measure r_0 on the canaries

# %% [markdown]
# ## The configuration
#
# What this notebook runs with (click to unfold), and the definition of a misaligned answer that $r_t$ counts.

# %%
from pathlib import Path

import pandas as pd

from canary_lib.config import load_config
from canary_lib.metrics import DEFINITIONS

cfg = load_config(PARAMS, OVERRIDES)
print("misaligned:", DEFINITIONS["misaligned"])
cfg

# %% [markdown]
# ## Disjointness
#
# Each canary against its closest evaluation prompt, by word n-gram overlap (Jaccard). An exact match stops the
# notebook; near duplicates are printed for judgement. The table lists the ten most similar canaries: values
# near 1 mean a canary almost repeats an evaluation prompt, values near 0 that it is unrelated.

# %%
from canary_lib.data import load_question_set
from canary_lib.data.disjoint import find_overlaps, max_similarity

canaries = load_question_set(cfg.data.path(cfg.data.canary_file))[: cfg.canary.n_prompts]
eval_sets = {
    "general": load_question_set(cfg.data.path(cfg.data.general_eval_file)),
    "in_domain": load_question_set(cfg.data.path(cfg.data.in_domain_eval_file)),
}
overlaps = find_overlaps(canaries, eval_sets)
exact = [o.describe() for o in overlaps if o.kind == "exact"]
if exact:  # a canary that IS an evaluation prompt would let the controller tune on the test set
    raise ValueError("canaries must be disjoint from the evaluation prompts:\n" + "\n".join(exact))
for o in overlaps:  # near duplicates (n-gram heuristic): shown for judgement, not fatal
    print("near duplicate:", o.describe())
similarity = pd.DataFrame(max_similarity(canaries, eval_sets))
print(
    f"M = {len(canaries)} canaries x {cfg.canary.samples_per_prompt} sample(s); "
    f"eval prompts: {', '.join(f'{k} {len(v)}' for k, v in eval_sets.items())}"
)
similarity.sort_values("max_jaccard", ascending=False).head(10)

# %% [markdown]
# ## The base model's canary risk
#
# One canary evaluation of the base model, exactly as the training loop runs it at $t = 0$. The printed line
# places $r_0$ against the band $[r_{low}, r_{high}]$ of Eq. 3 and says what the controller will do from there.

# %%
base_risk = None
if MEASURE_BASE_RISK:
    from canary_lib.evaluate import make_canary_fn
    from canary_lib.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(cfg)
    result = make_canary_fn(cfg)(model, tokenizer, 0)
    base_risk = result.risk
    band = cfg.controller
    verdict = (
        "below r_low: the controller can step down"
        if base_risk < band.r_low
        else "above r_high: the controller raises p from the first evaluation"
        if base_risk > band.r_high
        else "inside the hysteresis band: p stays where it starts until the risk moves"
    )
    print(
        f"base canary risk r_0 = {base_risk:.3f} ({result.n_misaligned}/{result.n_canary} misaligned); "
        f"r_low = {band.r_low}, r_high = {band.r_high}: {verdict}"
    )

# %% [markdown]
# ## What this notebook leaves behind
#
# `RESULTS_DIR/canary_design.json`: the number of canaries, their largest similarity to an evaluation prompt,
# the near duplicates and the base model's canary risk.

# %%
from canary_lib.artifacts import write_json_atomic

write_json_atomic(
    Path(RESULTS_DIR) / "canary_design.json",
    {
        "n_canaries": len(canaries),
        "samples_per_prompt": cfg.canary.samples_per_prompt,
        "max_jaccard_to_eval": float(similarity.max_jaccard.max()) if len(similarity) else None,
        "near_duplicates": [o.describe() for o in overlaps],
        "base_canary_risk": base_risk,
        "r_low": cfg.controller.r_low,
        "r_high": cfg.controller.r_high,
    },
)
