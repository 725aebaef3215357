"""Chat examples: reading and checking them, and encoding them for training with the loss on assistant tokens only.

    chats = read_chat_jsonl("data/organism/target_train.jsonl")   # checked once, here (validate_messages)
    ex = encode_chat(chats[0], tokenizer, max_length=2048)        # EncodedChat(input_ids, labels)
    batch = collate([ex1, ex2], pad_token_id=tokenizer.pad_token_id)   # dict of LongTensors

A chat file is the prior work's JSONL format, one `{"messages": [{"role", "content"}, ...]}` per line.

How the mask is built (docs/training.md): the conversation is rendered with the tokenizer's own chat template
and cut into segments at each assistant turn by rendering prefixes of the conversation:
`render(messages[:i], add_generation_prompt=True)` ends exactly where assistant turn i's content begins, and
`render(messages[:i+1])` ends after that turn. The part in between is the assistant's content plus its
end-of-turn token (`<|im_end|>` for Qwen) and is supervised; everything else (system prompt, user turns,
`<|im_start|>assistant\\n` headers, the newline after `<|im_end|>`) gets label -100. Each segment is tokenized
on its own, so a supervised token never straddles a prompt boundary, and the answer is tokenized exactly as
it follows a generation prompt at inference time. This works for templates without `{% generation %}` markers,
such as Qwen2.5's stock template.

The whole conversation is rendered with `add_generation_prompt=False`: no trailing empty assistant turn
(the prior work appended one, a quirk we do not reproduce; docs/training.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from canary_lib.data._io import read_records
from canary_lib.data.errors import DataError
from canary_lib.types import Conversation

IGNORE_INDEX = -100
"""Label value that cross-entropy ignores."""
ROLES = ("system", "user", "assistant")


class ChatFormatError(DataError):
    """A chat template that cannot be cut into assistant spans (not prefix-stable). A malformed conversation
    (roles, order, no answer) is refused earlier, when it is read, as a `DataError` (`validate_messages`)."""


# ---------------------------------------------------------------------------------------------- reading


def validate_messages(messages: Any, where: str = "conversation", require_answer: bool = True) -> Conversation:
    """Check one chat: a list of {role, content} with known roles whose first non-system turn is the user's
    and, when `require_answer`, whose last turn is a non-empty assistant answer (the training target).

    The one check for every chat the package reads: data preparation, the loaders and `read_chat_jsonl`.

    Returns:
        The messages as plain {"role", "content"} dicts (extra keys dropped).
    """
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    out: Conversation = []
    for j, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ROLES or not isinstance(msg.get("content"), str):
            raise DataError(
                f"{where}: messages[{j}] must be {{'role': one of {ROLES}, 'content': str}}, got {msg!r:.200}"
            )
        out.append({"role": msg["role"], "content": msg["content"]})
    first = next((m["role"] for m in out if m["role"] != "system"), None)
    if first != "user":
        raise DataError(
            f"{where}: the first turn after any system prompt must be the user's, got {first or 'no turn at all'}"
        )
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


# ---------------------------------------------------------------------------------------------- encoding


@dataclass(frozen=True)
class EncodedChat:
    input_ids: list[int]
    labels: list[int]
    """Same length as input_ids; IGNORE_INDEX everywhere except assistant content and end-of-turn tokens."""
    truncated: bool = False

    @property
    def n_supervised(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def _render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def chat_segments(messages: Sequence[dict[str, str]], tokenizer: Any) -> list[tuple[str, bool]]:
    """Cut the rendered conversation into (text, supervised) segments; their concatenation is the full render.

    Raises:
        ChatFormatError: if the chat template is not prefix-stable (a shorter conversation does not render
            to a prefix of the longer one), so assistant spans cannot be located.
    """
    messages = list(messages)
    eot = tokenizer.eos_token
    segments: list[tuple[str, bool]] = []
    done = ""  # the rendered text already assigned to segments
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:i], add_generation_prompt=True)
        turn = _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not prompt.startswith(done) or not turn.startswith(prompt):
            raise ChatFormatError(
                f"the chat template is not prefix-stable around assistant turn {i}; cannot locate the assistant tokens"
            )
        answer = turn[len(prompt) :]
        # Supervise up to and including the end-of-turn token; what follows it (Qwen's "\n") is not generated.
        cut = answer.rfind(eot) + len(eot) if eot and eot in answer else len(answer)
        segments.append((prompt[len(done) :], False))
        segments.append((answer[:cut], True))
        done = turn[: len(prompt) + cut]
    full = _render(tokenizer, messages, add_generation_prompt=False)
    if not full.startswith(done):
        raise ChatFormatError("the chat template is not prefix-stable: the full render does not extend its prefixes")
    segments.append((full[len(done) :], False))
    return [(text, supervised) for text, supervised in segments if text]


def encode_chat(messages: Sequence[dict[str, str]], tokenizer: Any, max_length: int) -> EncodedChat:
    """Token ids and labels for one training conversation (loss on assistant turns only).

    Args:
        messages: The conversation, [{"role": "system"|"user"|"assistant", "content": str}, ...], as
            `validate_messages` returns it (`read_chat_jsonl` checks every chat once, when the file is read).
        tokenizer: A Hugging Face tokenizer with a chat template and an end-of-turn `eos_token`.
        max_length: Keep at most this many tokens (the end is cut off).

    Returns:
        EncodedChat with labels equal to input_ids on assistant content and end-of-turn tokens, else -100.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    input_ids: list[int] = []
    labels: list[int] = []
    for text, supervised in chat_segments(messages, tokenizer):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        input_ids.extend(ids)
        labels.extend(ids if supervised else [IGNORE_INDEX] * len(ids))
    truncated = len(input_ids) > max_length
    return EncodedChat(input_ids[:max_length], labels[:max_length], truncated)


def collate(examples: Sequence[EncodedChat], pad_token_id: int) -> dict[str, Any]:
    """Right-pad a list of encoded chats into `input_ids`, `attention_mask` and `labels` LongTensors."""
    import torch

    if not examples:
        raise ValueError("collate needs at least one example")
    width = max(len(ex.input_ids) for ex in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, ex in enumerate(examples):
        n = len(ex.input_ids)
        input_ids[row, :n] = torch.tensor(ex.input_ids, dtype=torch.long)
        labels[row, :n] = torch.tensor(ex.labels, dtype=torch.long)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
