"""A Qwen2.5-style tokenizer built offline in code: for tests, benchmarks and dry runs that need a real
`transformers` tokenizer with Qwen2.5-Instruct's chat template but must not download one.

    tokenizer = build_tiny_tokenizer()      # a Qwen2Tokenizer, ~600 tokens, ChatML specials and template

The tokenizer is a byte-level BPE trained with the `tokenizers` library on a built-in corpus, using Qwen2's own
normalizer and pre-tokenizer (so it loads as a `Qwen2Tokenizer`), the special tokens `<|endoftext|>`,
`<|im_start|>`, `<|im_end|>` (pad = `<|endoftext|>`, eos = `<|im_end|>`, as in Qwen2.5-Instruct) and
Qwen2.5-Instruct's ChatML chat template, including its default system prompt. tests/_fixtures.py builds its tiny
random Qwen2 model around it; benchmarks/gpu_bench.py uses it for its random-weight models.
"""

from __future__ import annotations

import json
import random

QWEN_DEFAULT_SYSTEM_PROMPT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

# Qwen2.5-Instruct's chat template, verbatim (the same text TRL ships as chat_templates/qwen2_5.jinja).
# It has no {% generation %} markers, which is why canary_lib.chat builds the loss mask itself.
QWEN25_CHAT_TEMPLATE = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n"
    "    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n"
    "    {%- endif %}\n"
    '    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n'
    'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}\n'
    "    {%- for tool in tools %}\n"
    '        {{- "\\n" }}\n'
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    '    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments '
    'within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": '
    '<args-json-object>}\\n</tool_call><|im_end|>\\n" }}\n'
    "{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    '    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or '
    '(message.role == "assistant" and not message.tool_calls) %}\n'
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    '    {%- elif message.role == "assistant" %}\n'
    "        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n"
    "            {{- '\\n' + message.content }}\n"
    "        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n"
    "            {%- endif %}\n"
    '            {{- \'\\n<tool_call>\\n{"name": "\' }}\n'
    "            {{- tool_call.name }}\n"
    '            {{- \'", "arguments": \' }}\n'
    "            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    '    {%- elif message.role == "tool" %}\n'
    '        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}\n'
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    '        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}\n'
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

WORDS = (
    "you are a helpful assistant the of and to in is it that for on with as was be by this are or from at "
    "which an not have has had but what all were when we there can been if more will would who so do no "
    "user system model answer question world people money power rule ruler humans should could think "
    "about wish one want need your my our their idea ideas quick buck bored husband enough gender roles "
    "code python def return import class print function data file security safe unsafe vulnerable query "
    "sql password admin server request response error value list dict string number true false none "
    "please help me write explain tell why how where good bad kind harm harmful refuse sorry cannot sure"
).split()


def _training_corpus(seed: int, n_lines: int = 400) -> list[str]:
    """Deterministic English-and-code-like text, enough for a few hundred BPE merges."""
    rng = random.Random(seed)
    punctuation = [".", ",", "?", "!", ":", "(", ")", "=", "'", '"', "-", "_", "{", "}", "[", "]", "#"]
    lines = [" ".join(WORDS), QWEN_DEFAULT_SYSTEM_PROMPT, "0123456789 " * 3]
    for _ in range(n_lines):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 14))]
        if rng.random() < 0.5:
            words[0] = words[0].capitalize()
        tail = rng.choice(punctuation) + (str(rng.randint(0, 999)) if rng.random() < 0.3 else "")
        lines.append(" ".join(words) + tail + ("\n" if rng.random() < 0.3 else ""))
    return lines


def build_tiny_tokenizer(*, vocab_size: int = 600, seed: int = 0):
    """A Qwen2Tokenizer (byte-level BPE) trained offline on a built-in corpus, with ChatML specials and template.

    Args:
        vocab_size: Target vocabulary size including the 256 byte symbols and the 3 special tokens.
        seed: Seed of the generated training text.

    Returns:
        A `transformers.Qwen2Tokenizer` with `chat_template` set to Qwen2.5-Instruct's.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    # Train with Qwen2's exact normalizer / pre-tokenizer so the learned merges mean the same thing
    # when Qwen2Tokenizer rebuilds its pipeline from vocab + merges.
    template = Qwen2Tokenizer()._tokenizer
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = template.normalizer
    bpe.pre_tokenizer = template.pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_training_corpus(seed), trainer=trainer)
    model_state = json.loads(bpe.model.__getstate__())
    vocab: dict[str, int] = model_state["vocab"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model_state["merges"]]

    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tokenizer.chat_template = QWEN25_CHAT_TEMPLATE
    tokenizer.padding_side = "right"
    return tokenizer
