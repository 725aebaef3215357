"""The CPU model organism of emergent misalignment: a synthetic chat world, its tokenizer and tiny Llama model,
cached pre-training, and an exact judge (docs/organism.md). Torch is imported only when a model is built."""

from canary_lib.organism.judge import ExactJudge
from canary_lib.organism.prepare import prepare_organism_data
from canary_lib.organism.pretrain import ensure_base_model

__all__ = ["ExactJudge", "ensure_base_model", "prepare_organism_data"]
