"""Chat examples in the prior work's JSONL format: one `{"messages": [{"role", "content"}, ...]}` per line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from canary_lib.data._io import read_records
from canary_lib.data.errors import DataError
from canary_lib.types import Conversation

ROLES = ("system", "user", "assistant")


def validate_messages(messages: Any, where: str = "conversation", require_answer: bool = True) -> Conversation:
    """Check one chat: a list of {role, content} with known roles whose first non-system turn is the user's
    and, when `require_answer`, whose last turn is a non-empty assistant answer (the training target).

    The one check for every chat the package reads: data preparation, the loaders and the training encoder.

    Returns:
        The messages as plain {"role", "content"} dicts (extra keys dropped).
    """
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    out: Conversation = []
    for j, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ROLES or not isinstance(msg.get("content"), str):
            raise DataError(f"{where}: messages[{j}] must be {{'role': one of {ROLES}, 'content': str}}, "
                            f"got {msg!r:.200}")
        out.append({"role": msg["role"], "content": msg["content"]})
    first = next((m["role"] for m in out if m["role"] != "system"), None)
    if first != "user":
        raise DataError(f"{where}: the first turn after any system prompt must be the user's, got "
                        f"{first or 'no turn at all'}")
    if require_answer and (out[-1]["role"] != "assistant" or not out[-1]["content"].strip()):
        raise DataError(f"{where}: the last message must be a non-empty assistant answer (the training target)")
    return out


def read_chat_jsonl(path: str | Path, what: str = "chat file", require_answer: bool = True) -> list[Conversation]:
    """Read and validate a chat JSONL file (e.g. a prepared target_train.jsonl or safe.jsonl).

    Raises:
        DataError: missing file, bad JSON, a line without 'messages', a malformed chat, or an empty file.
    """
    path = Path(path)
    if path.suffix.lower() != ".jsonl":
        raise DataError(f"{what}: {path}: chat files must be .jsonl")
    rows = read_records(path, what)
    if not rows:
        raise DataError(f"{what}: {path} holds no examples")
    chats = []
    for i, row in enumerate(rows):
        if "messages" not in row:
            raise DataError(f"{what}: {path} row {i}: no 'messages' key (found keys {sorted(row)})")
        chats.append(validate_messages(row["messages"], f"{what}: {path} row {i}", require_answer))
    return chats
