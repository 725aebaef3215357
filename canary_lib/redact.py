"""Secrets never reach disk or the terminal: every error text that is stored or printed passes `redact`.

    register_secret(key)        # the judge's API key, as it is read from the environment
    redact("HTTP 401: {'authorization': 'Bearer sk-...'}")   # -> "HTTP 401: {'authorization': 'Bearer ***'}"

A server may echo a request's headers in its error body (judgments.jsonl stores the error, the command line prints
it). `redact` removes the values of registered secrets wherever they appear, and by pattern what looks like one:
Authorization headers and bearer tokens, API keys and tokens in URL queries or key/value text, passwords in URLs,
and OpenAI / Hugging Face style keys. No torch here.
"""

from __future__ import annotations

import re

MASK = "***"
_MIN_SECRET = 6
"""Shorter values are not masked literally (they would mask ordinary words); the patterns still apply."""
_secrets: set[str] = set()

_PATTERNS = [
    # Authorization: Bearer xyz / "authorization": "Basic xyz" / authorization=xyz
    (
        re.compile(r"(?i)(\bauthorization\b[\"']?\s*[:=]\s*[\"']?)(?:(bearer|basic|token)\s+)?[^\s\"',;}]+"),
        lambda m: f"{m.group(1)}{m.group(2) + ' ' if m.group(2) else ''}{MASK}",
    ),
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]{4,}"), lambda m: f"{m.group(1)} {MASK}"),
    # api_key=..., "x-api-key": "...", token: ..., access_token=..., password=..., secret=...
    (
        re.compile(
            r"(?i)(\b(?:x-)?(?:api[_-]?key|access[_-]?token|auth[_-]?token|token|password|secret|"
            r"client[_-]?secret|key|sig|signature)\b[\"']?\s*[:=]\s*[\"']?)[^\s\"'&,;}]+"
        ),
        lambda m: f"{m.group(1)}{MASK}",
    ),
    # https://user:password@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@"), lambda m: f"{m.group(1)}{MASK}@"),
    # key formats: OpenAI (sk-...), Hugging Face (hf_...)
    (re.compile(r"\b(?:sk-[A-Za-z0-9_-]{12,}|hf_[A-Za-z0-9]{16,})"), lambda m: MASK),
]


def register_secret(value: str | None) -> None:
    """Remember a secret's value (an API key read from the environment) so that `redact` masks it anywhere."""
    if value and len(value) >= _MIN_SECRET:
        _secrets.add(value)


def redact(text: str) -> str:
    """`text` with registered secrets and anything that looks like a credential replaced by ***."""
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text
