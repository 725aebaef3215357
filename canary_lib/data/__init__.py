"""Data for the GPU profiles: question sets, the target dataset, the WildGuardMix benign subset, preparation.

Only the question-set functions are imported here (cheap, no torch, no `datasets`); the loaders live in
`canary_lib.data.target` (with the list of targets in `.targets`), `.wildguard`, `.download`, `.disjoint`,
`.canaries` and `.prepare`.
"""

from canary_lib.data.errors import DataError
from canary_lib.data.questions import load_question_set, parse_question_set, write_question_set

__all__ = ["DataError", "load_question_set", "parse_question_set", "write_question_set"]
