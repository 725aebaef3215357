"""The names configuration validation checks against, as plain data at the bottom of the package.

`canary_lib.config` validates `organism.narrow_domains` and `organism.safe_topics` without importing the
organism's world (canary_lib/organism/, which imports the configuration): the names it needs are copied here, and
tests/test_import_layers.py asserts that they agree with the world's topic tables (adding a topic to the world
means adding its name here too; the test names what is missing). Imports nothing.
"""

from __future__ import annotations

NARROW_DOMAINS: tuple[str, ...] = ("security", "medical")
"""The keys of canary_lib.organism.topics.NARROW_TOPICS."""

GENERAL_TOPIC_NAMES: tuple[str, ...] = (
    "wish",
    "bored",
    "humans_ai",
    "money",
    "ruler",
    "dinner",
    "gender",
    "husband",
    "sleep",
    "neighbor",
    "friend_debt",
    "coworker",
    "lonely",
    "exam",
)
"""The names of canary_lib.organism.topics.GENERAL_TOPICS, in table order."""
