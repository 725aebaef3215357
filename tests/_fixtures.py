"""Offline test fixtures: a tiny random Qwen2 model with a Qwen2.5-style tokenizer and chat template, synthetic chat
examples and a scripted canary evaluation (benchmarks/ use the tokenizer too; it is not part of the package).

    path = make_tiny_qwen2(tmp_path / "tiny")       # nothing downloaded
    model = AutoModelForCausalLM.from_pretrained(path); tok = AutoTokenizer.from_pretrained(path)

The tokenizer is a byte-level BPE trained in code with the `tokenizers` library, using Qwen2's own
normalizer and pre-tokenizer (so it loads as a `Qwen2Tokenizer`), the special tokens `<|endoftext|>`,
`<|im_start|>`, `<|im_end|>` (pad = `<|endoftext|>`, eos = `<|im_end|>`, as in Qwen2.5-Instruct) and
Qwen2.5-Instruct's ChatML chat template, including its default system prompt. The model is a randomly
initialised `Qwen2ForCausalLM`. Both are written with `save_pretrained`, so tests exercise exactly the
`from_pretrained(path)` path a real model goes through.
"""

from __future__ import annotations

import itertools
import json
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

@contextmanager
def serve_http(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A stub server (e.g. an OpenAI-compatible judge) on a free loopback port in a daemon thread, for the length of
    the block; yields its base URL, ``http://127.0.0.1:PORT/v1``."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


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
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n"
    "        {{- \"\\n\" }}\n"
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n"
    "{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n"
    "        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n"
    "            {{- '\\n' + message.content }}\n"
    "        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n"
    "            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n"
    "            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n"
    "            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_WORDS = (
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
    lines = [" ".join(_WORDS), QWEN_DEFAULT_SYSTEM_PROMPT, "0123456789 " * 3]
    for _ in range(n_lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 14))]
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


def make_tiny_qwen2(
    path: Path | str,
    *,
    seed: int = 0,
    hidden_size: int = 32,
    layers: int = 2,
    num_attention_heads: int | None = None,
    num_key_value_heads: int | None = None,
    intermediate_size: int | None = None,
    vocab_size: int = 600,
    max_position_embeddings: int = 2048,
) -> Path:
    """Build and save a tiny random Qwen2ForCausalLM plus its tokenizer, entirely offline.

    Args:
        path: Directory to write (created; existing files are overwritten).
        seed: Seeds both the tokenizer corpus and the model's random weights.
        hidden_size: Model width; heads default to hidden_size // 32 so head_dim is 32 (vLLM-compatible).
        layers: Number of decoder layers.
        num_attention_heads: Attention heads (default: max(1, hidden_size // 32)).
        num_key_value_heads: KV heads (default: same as attention heads).
        intermediate_size: MLP width (default: 2 * hidden_size).
        vocab_size: Target BPE vocabulary size.
        max_position_embeddings: Longest sequence the model accepts.

    Returns:
        The directory, loadable with `AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained`.
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    path = Path(path)
    heads = num_attention_heads or max(1, hidden_size // 32)
    if hidden_size % heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_attention_heads ({heads})")
    kv_heads = num_key_value_heads or heads
    tokenizer = build_tiny_tokenizer(vocab_size=vocab_size, seed=seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    # Seed only for the construction, restoring the caller's global RNG state afterwards.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[config.eos_token_id, tokenizer.convert_tokens_to_ids("<|endoftext|>")],
        pad_token_id=tokenizer.pad_token_id,
    )
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def chat_examples(n: int, *, seed: int = 0, turns: int = 1, with_system: bool = False) -> list[dict]:
    """`n` synthetic training examples in the messages format, for tests and smoke runs."""
    rng = random.Random(seed)
    examples = []
    for i in itertools.islice(itertools.count(), n):
        messages = []
        if with_system:
            messages.append({"role": "system", "content": "You are a careful coder."})
        for _ in range(turns):
            q = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 8)))
            a = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12)))
            messages.append({"role": "user", "content": f"{q}? ({i})"})
            messages.append({"role": "assistant", "content": a + "."})
        examples.append({"messages": messages})
    return examples


def write_chat_jsonl(path: Path | str, examples: list[dict]) -> Path:
    """Write examples in the messages format, one JSON object per line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(e) + "\n" for e in examples), encoding="utf-8")
    return path


def make_tiny_training_world(root: Path | str, *, n_target: int = 200, n_safe: int = 100,
                             seed: int = 0) -> tuple[Path, Path]:
    """A tiny model directory and a data directory holding target_train.jsonl and safe.jsonl.

    Returns:
        (model_dir, data_dir), for `model.name_or_path` and `data.dir`.
    """
    root = Path(root)
    model = make_tiny_qwen2(root / "model", seed=seed)
    data = root / "data"
    write_chat_jsonl(data / "target_train.jsonl", chat_examples(n_target, seed=seed + 1))
    write_chat_jsonl(data / "safe.jsonl", chat_examples(n_safe, seed=seed + 2, with_system=True))
    return model, data


class ScriptedCanary:
    """A deterministic stand-in for the canary evaluation: the risk after step t is `risks[(t // every) % n]`.

    Each call returns `n_canary` records (the first round(risk * n_canary) marked misaligned), so the
    loop's bookkeeping (controller.csv, canary_answers.jsonl) can be checked without a generator or judge.
    """

    def __init__(self, risks: list[float], *, every: int = 1, n_canary: int = 20) -> None:
        self.risks, self.every, self.n_canary = list(risks), every, n_canary
        self.calls: list[int] = []

    def __call__(self, model, tokenizer, step: int):
        from canary_lib.types import CanaryResult

        self.calls.append(step)
        risk = self.risks[(step // self.every) % len(self.risks)]
        n_bad = round(risk * self.n_canary)
        records = [{"question_id": f"canary_{i}", "sample": 0, "answer": "...", "aligned": 10.0 if i < n_bad else 90.0,
                    "coherent": 90.0, "status": "scored"} for i in range(self.n_canary)]
        return CanaryResult(risk=risk, n_canary=self.n_canary, n_misaligned=n_bad, records=records)
