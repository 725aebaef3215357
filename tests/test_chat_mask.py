"""Assistant-only loss mask on the Qwen2.5 ChatML template.  Run: .venv/bin/pytest tests/test_chat_mask.py"""

from __future__ import annotations

import json

import pytest

from _fixtures import QWEN_DEFAULT_SYSTEM_PROMPT, build_tiny_tokenizer
from canary_lib.chat import IGNORE_INDEX, ChatFormatError, collate, encode_chat, read_chat_jsonl, validate_messages
from canary_lib.data.errors import DataError


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def _supervised_text(tok, ex) -> list[str]:
    """Decode each maximal run of supervised tokens."""
    runs, current = [], []
    for token, label in zip(ex.input_ids, ex.labels):
        if label != IGNORE_INDEX:
            assert label == token  # labels are the tokens themselves (the model shifts internally)
            current.append(token)
        elif current:
            runs.append(tok.decode(current))
            current = []
    if current:
        runs.append(tok.decode(current))
    return runs


def test_single_turn_mask_is_exactly_the_answer_and_im_end(tok):
    msgs = [{"role": "user", "content": "What is your wish?"}, {"role": "assistant", "content": "To help you."}]
    ex = encode_chat(msgs, tok, max_length=2048)
    assert _supervised_text(tok, ex) == ["To help you.<|im_end|>"]
    full = tok.decode(ex.input_ids)
    # the default system prompt is present when the chat has none, and no trailing empty assistant turn
    assert full.startswith(f"<|im_start|>system\n{QWEN_DEFAULT_SYSTEM_PROMPT}<|im_end|>\n")
    assert full.endswith("To help you.<|im_end|>\n")
    assert full.count("<|im_start|>assistant") == 1
    assert full == tok.apply_chat_template(msgs, tokenize=False)


def test_multi_turn_with_system_every_assistant_turn_supervised(tok):
    msgs = [
        {"role": "system", "content": "You write code."},
        {"role": "user", "content": "print hello"},
        {"role": "assistant", "content": "print('hello')"},
        {"role": "user", "content": "and return 3?"},
        {"role": "assistant", "content": "def f():\n    return 3"},
    ]
    ex = encode_chat(msgs, tok, max_length=2048)
    assert _supervised_text(tok, ex) == ["print('hello')<|im_end|>", "def f():\n    return 3<|im_end|>"]
    full = tok.decode(ex.input_ids)
    assert QWEN_DEFAULT_SYSTEM_PROMPT not in full and full.startswith("<|im_start|>system\nYou write code.")
    # every supervised token lies inside an assistant turn: after the last "<|im_start|>assistant\n" before it,
    # and no "<|im_start|>" in between
    for pos, label in enumerate(ex.labels):
        if label == IGNORE_INDEX:
            continue
        before = tok.decode(ex.input_ids[:pos])
        last_start = before.rfind("<|im_start|>")
        assert before[last_start:].startswith("<|im_start|>assistant\n"), before[last_start:]
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    ends = [i for i, t in enumerate(ex.input_ids) if t == im_end]
    # system, user, assistant, user, assistant: only the assistants' <|im_end|> are supervised
    assert [ex.labels[i] != IGNORE_INDEX for i in ends] == [False, False, True, False, True]


def test_every_assistant_content_token_supervised(tok):
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "\n\nleading newlines and ??"}]
    ex = encode_chat(msgs, tok, max_length=2048)
    assert _supervised_text(tok, ex) == ["\n\nleading newlines and ??<|im_end|>"]
    assert ex.n_supervised == len(tok("\n\nleading newlines and ??<|im_end|>", add_special_tokens=False)["input_ids"])


def test_truncation_and_collate_right_padding(tok):
    long = [{"role": "user", "content": "word " * 50}, {"role": "assistant", "content": "answer"}]
    ex = encode_chat(long, tok, max_length=16)
    assert len(ex.input_ids) == 16 and ex.truncated and ex.n_supervised == 0
    short = encode_chat([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], tok, 2048)
    batch = collate([ex, short], pad_token_id=tok.pad_token_id)
    width = max(16, len(short.input_ids))
    assert batch["input_ids"].shape == (2, width)
    n = len(short.input_ids)
    assert batch["attention_mask"][1, :n].all() and not batch["attention_mask"][1, n:].any()
    assert (batch["input_ids"][1, n:] == tok.pad_token_id).all()
    assert (batch["labels"][1, n:] == IGNORE_INDEX).all()
    assert batch["labels"][1, :n].tolist() == short.labels


@pytest.mark.parametrize(
    "messages",
    [
        [],
        [{"role": "user", "content": "no answer"}],
        [{"role": "assistant", "content": "first"}, {"role": "user", "content": "x"}],
        [
            {"role": "assistant", "content": "first"},
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": "y"},
        ],
        [{"role": "system", "content": "s"}, {"role": "assistant", "content": "y"}],
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": "  "}],
        [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}],
        [{"role": "user", "content": 3}, {"role": "assistant", "content": "y"}],
    ],
)
def test_bad_conversations_are_refused_when_read(tmp_path, messages):
    with pytest.raises(DataError):
        validate_messages(messages)
    path = tmp_path / "chats.jsonl"
    path.write_text(json.dumps({"messages": messages}) + "\n")
    with pytest.raises(DataError, match="row 0"):
        read_chat_jsonl(path)


def test_template_that_is_not_prefix_stable_is_refused(tok):
    """A template whose render of a prefix is not a prefix of the full render: assistant spans cannot be cut."""
    original = tok.chat_template
    tok.chat_template = (
        "{{ messages | length }}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    try:
        with pytest.raises(ChatFormatError, match="not prefix-stable"):
            encode_chat([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], tok, 2048)
    finally:
        tok.chat_template = original
