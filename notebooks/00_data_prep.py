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
# # 00 · Data preparation
#
# Every later notebook reads one **prepared data directory** (`cfg.data.dir`): the target set $\mathcal{D}_T$
# (`target_train.jsonl`), the safe set $\mathcal{D}_S$ (`safe.jsonl`), the general and in-domain evaluation
# prompts, the $M$ canary prompts $\mathcal{C}$, and a `manifest.json` with counts and a sha256 of every file.
# Nothing after this notebook downloads data, and a changed source is noticed through the manifest.
#
# * **organism** profile (the CPU default): a seeded synthetic world writes all of it, and the tiny base model is
#   pre-trained once and cached (seconds to minutes, then reused).
# * **paper** profile: Security EM, the benign subset of WildGuardMix (gated: set `HF_TOKEN`), Betley et al.'s
#   questions, fetched at pinned revisions (`docs/data.md`).

# %% tags=["parameters"]
PARAMS: list = ["parameters/organism.yaml"]  # parameter files, merged left to right
OVERRIDES: list = []  # overrides in the syntax of `canary train --set` (docs/notebooks.md)
RESULTS_DIR: str = "results/organism"  # where this notebook writes data_summary.json

# %% [markdown]
# ## The configuration
#
# The parameter files merged left to right, then the overrides, every default filled in: what this notebook
# runs with (click to unfold). A typo or a bad value stops here, naming the key and the file that set it.

# %%
from pathlib import Path

import pandas as pd

from canary_lib.config import load_config

cfg = load_config(PARAMS, OVERRIDES)
cfg

# %% [markdown]
# ## Prepare the data directory
#
# Writes the files and their manifest (counts and the sha256 of every file; the same configuration writes the
# same files). The table counts the examples or questions per file: $\mathcal{D}_T$ is the largest, and
# there must be at least $M$ = `canary.n_prompts` canaries.

# %%
from canary_lib.data.prepare import prepare_data, read_manifest

data_dir = prepare_data(cfg)
counts = read_manifest(data_dir).get("counts", {})
pd.Series(counts, name="examples / questions").to_frame()

# %% [markdown]
# ## The base model
#
# For the organism this builds (or reuses from the cache) the pre-trained tiny model and prints its directory;
# for a Hugging Face model it prints the id that a run downloads when it first loads it.

# %%
from canary_lib.models import resolve_model_path

base_model = resolve_model_path(cfg)
print("base model:", base_model)

# %% [markdown]
# ## A look at the data
#
# Two target examples and two safe examples, one line each (role: text, cut at 120 characters). The target
# answers are the narrow harmful task (insecure security advice); the safe answers are benign and help with
# ordinary requests.

# %%
from canary_lib.chat import read_chat_jsonl

for name in (cfg.data.target_file, cfg.data.safe_file):
    for chat in read_chat_jsonl(cfg.data.path(name))[:2]:
        print(f"[{name}]", " | ".join(f"{m['role']}: {m['content'][:120]}" for m in chat))

# %% [markdown]
# ## What this notebook leaves behind
#
# `RESULTS_DIR/data_summary.json`: the profile, the data directory, the base model and the counts above.

# %%
from canary_lib.artifacts import write_json_atomic

write_json_atomic(
    Path(RESULTS_DIR) / "data_summary.json",
    {"profile": cfg.profile, "data_dir": str(data_dir), "base_model": base_model, "counts": counts},
)
