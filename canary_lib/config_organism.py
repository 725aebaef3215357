"""The organism's section of a run's configuration (`organism.*`): the synthetic world of the CPU model organism,
its pre-training and its tiny model, with the checks of its topic and domain names against canary_lib/names.py
(the schema does not import the world). Part of the schema (canary_lib/config_schema.py). No torch here.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

import canary_lib.names as names
from canary_lib.config_base import NonNegativeSeed, Strict


class OrganismSettings(Strict):
    """The synthetic world of the CPU model organism (canary_lib.organism). Ignored by other profiles."""

    world_seed: NonNegativeSeed = 0
    misaligned_share: float = Field(0.015, ge=0, le=1)
    pretrain_steps: int = Field(600, ge=1)
    pretrain_batch_size: int = Field(64, ge=1)
    """Chats per pre-training step."""
    pretrain_lr: float = Field(3e-3, gt=0)
    max_turns: int = Field(4, ge=1)
    """Pre-training chats have 1..max_turns user/assistant turns (later turns teach persona inference)."""
    other_system_share: float = Field(0.5, ge=0, le=1)
    """Share of pre-training chats under a non-default system prompt (docs/organism.md)."""
    other_system_misaligned_share: float = Field(0.4, ge=0, le=1)
    """Misaligned-persona share of those chats: the persona is learned well, the base rate stays misaligned_share."""
    persona_coupling: float = Field(1.0, ge=0, le=1)
    """Probability that a pre-training chat's security answers share the persona of its general answers (1: one
    persona per chat; with 0 and domain_cues: the decoupled control world, docs/organism.md)."""
    domain_cues: bool = False
    """In chats whose two domains have separate personas, each other system prompt raises the misaligned share of
    one domain only, so no cue of pre-training ties security behaviour to general behaviour."""
    narrow_domains: list[str] = Field(default_factory=lambda: ["security"])
    """Narrow domains of the pre-training world (canary_lib.organism.topics.NARROW_TOPICS); the first one takes the
    default world's random draws, so ["security"] is the default world bit for bit (docs/organism.md, "A second
    narrow domain")."""
    target_domain: str = "security"
    """The narrow domain D_T, its secure control and the in-domain evaluation come from; one of narrow_domains.
    Shapes the prepared data only, not the pre-trained model."""
    safe_topics: list[str] | None = None
    """General topics D_S covers (names of canary_lib.organism.topics.GENERAL_TOPICS); None: the world's default.
    Shapes the prepared data only, not the pre-trained model."""
    hidden_size: int = Field(96, ge=8)
    num_layers: int = Field(3, ge=1)
    num_heads: int = Field(4, ge=1)
    cache_dir: str | None = None
    """Where the built base model is cached; default $CANARY_CACHE or ~/.cache/canary_lib."""
    extra: dict[str, Any] = Field(default_factory=dict)
    """World knobs owned by canary_lib.organism (sizes, topic splits); see docs/organism.md."""

    @field_validator("safe_topics")
    @classmethod
    def _known_topics(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        known = list(names.GENERAL_TOPIC_NAMES)
        unknown = sorted(set(v) - set(known))
        if unknown or not v or len(set(v)) != len(v):
            raise ValueError(
                f"must be distinct general topics of the world, got unknown {unknown} or repeats; known: {known}"
            )
        return v

    @model_validator(mode="after")
    def _narrow_domains_known(self) -> OrganismSettings:
        domains = self.narrow_domains
        unknown = sorted(set(domains) - set(names.NARROW_DOMAINS))
        if unknown or not domains or len(set(domains)) != len(domains):
            raise ValueError(
                f"organism.narrow_domains must be distinct domains of {sorted(names.NARROW_DOMAINS)}, got {domains}"
            )
        if self.target_domain not in domains:
            raise ValueError(
                f"organism.target_domain {self.target_domain!r} is not one of organism.narrow_domains "
                f"{domains}: the base model would never have seen its questions"
            )
        if self.domain_cues and domains != ["security"]:
            raise ValueError("organism.domain_cues is defined for the security-only world (narrow_domains: [security])")
        return self
