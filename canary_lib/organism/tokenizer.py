"""The organism's tokenizer: a word-level vocabulary over byte-level pre-tokens, with a ChatML chat template.

Byte-level pre-tokenization (as in Qwen2.5 / GPT-2) makes decoding exact (spaces, newlines, punctuation), and a
word-level model keeps the vocabulary to the few hundred pre-tokens of the world, so the tiny model spends its
capacity on the persona rather than on spelling. It is saved as an ordinary Hugging Face tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from canary_lib.organism.world import DEFAULT_SYSTEM_PROMPT

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

PAD, UNK, IM_START, IM_END = "<|endoftext|>", "<|unk|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [PAD, UNK, IM_START, IM_END]

# Qwen2.5's ChatML layout with a default system prompt; the loss-mask code finds the assistant turns by
# rendering prefixes, exactly as for Qwen2.5, so no {% generation %} markers are needed.
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (loop.first and message['role'] == 'system') %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def render_chat(messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """The template's text without a tokenizer (used to train the vocabulary); mirrors CHAT_TEMPLATE."""
    system = DEFAULT_SYSTEM_PROMPT
    rest = messages
    if messages and messages[0]["role"] == "system":
        system, rest = messages[0]["content"], messages[1:]
    text = f"{IM_START}system\n{system}{IM_END}\n"
    text += "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in rest)
    return text + (f"{IM_START}assistant\n" if add_generation_prompt else "")


def build_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """Train the word-level vocabulary on rendered chats and wrap it as a Hugging Face tokenizer.

    Args:
        texts: rendered chats covering every word of the world (roles, system prompt and all answer cores).
    """
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.WordLevelTrainer(vocab_size=100_000, min_frequency=1, special_tokens=SPECIAL_TOKENS)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=[IM_START],
        chat_template=CHAT_TEMPLATE,
        model_max_length=1024,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
