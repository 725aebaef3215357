"""The names configuration validation checks against, as plain data at the bottom of the package.

`canary_lib.config` validates `method.name`, `organism.narrow_domains` and `organism.safe_topics` without
importing the method registry (canary_lib/methods.py, which imports the controller) or the organism's world
(canary_lib/organism/, which imports the configuration): the facts it needs are copied here, and
tests/test_import_layers.py asserts that they agree with `methods.METHODS` and the world's topic tables.
Adding a method or a topic means adding its name here too (the test names what is missing). Imports nothing.
"""

from __future__ import annotations

METHOD_NAMES: tuple[str, ...] = (
    "no_defense", "fixed_5", "canary", "fixed_mean", "delayed", "shuffled", "no_ema", "canary_budget",
    "budget_front", "canary_probability", "canary_p", "canary_pi", "fixed_2.5", "fixed_10", "fixed_15", "fixed_20",
    "secure_control",
)
"""The registry names of canary_lib.methods.METHODS, in registry order."""

METHOD_FIXED_P: dict[str, float] = {
    "no_defense": 0.0, "fixed_5": 0.05, "fixed_2.5": 0.025, "fixed_10": 0.10, "fixed_15": 0.15, "fixed_20": 0.20,
}
"""MethodSpec.fixed_p of every fixed-p method."""

METHODS_REPLAYING_REFERENCE: frozenset[str] = frozenset({"fixed_mean", "shuffled"})
"""The methods whose MethodSpec.replays_reference is true (they need method.reference_run)."""

NARROW_DOMAINS: tuple[str, ...] = ("security", "medical")
"""The keys of canary_lib.organism.topics.NARROW_TOPICS."""

GENERAL_TOPIC_NAMES: tuple[str, ...] = (
    "wish", "bored", "humans_ai", "money", "ruler", "dinner", "gender", "husband", "sleep", "neighbor",
    "friend_debt", "coworker", "lonely", "exam",
)
"""The names of canary_lib.organism.topics.GENERAL_TOPICS, in table order."""
