"""Run in the vLLM environment (.venv-vllm) by tests/test_vllm_generator.py: `VLLMGenerator` with an rs-LoRA adapter.

    python generate_lora.py MODEL_DIR ADAPTER_DIR OUT_JSON

Writes the greedy answers (`generate`), the greedy token ids and the top-20 log-probabilities of the first answer
token (the same engine and LoRA request, through `llm.generate` with logprobs), the vLLM processes seen while it
ran (pid -> command line) and those of vLLM's engine still alive after `close()` (Python's own resource tracker
ends with this process).
"""

import json
import sys
import time


def main() -> None:
    import psutil

    from canary_lib.config import SamplingSettings
    from canary_lib.generation import VLLMGenerator, chat_prompt_ids

    model_dir, adapter_dir, out = sys.argv[1:4]
    conversations = json.loads(sys.argv[4])
    t0 = time.perf_counter()
    gen = VLLMGenerator(
        model_dir,
        adapter_dir,
        seed=0,
        gpu_memory_utilization=0.1,
        max_model_len=512,
        dtype="float32",
        engine_args={"enforce_eager": True},
    )
    load_s = time.perf_counter() - t0
    children = {p.pid: " ".join(p.cmdline())[:200] for p in psutil.Process().children(recursive=True)}
    greedy = SamplingSettings(temperature=0.0, top_p=1.0, max_new_tokens=12)
    t1 = time.perf_counter()
    texts = gen.generate(conversations, n=1, seed=0, sampling=greedy)
    from vllm import SamplingParams

    prompts = [{"prompt_token_ids": chat_prompt_ids(gen.tokenizer, c)} for c in conversations]
    outputs = gen.llm.generate(
        prompts,
        SamplingParams(temperature=0.0, max_tokens=12, logprobs=20),
        lora_request=gen._lora_request(),
        use_tqdm=False,
    )
    generate_s = time.perf_counter() - t1
    rows = [
        {
            "text": texts[i][0],
            "tokens": list(o.outputs[0].token_ids),
            "first_logprobs": {str(k): v.logprob for k, v in o.outputs[0].logprobs[0].items()},
        }
        for i, o in enumerate(outputs)
    ]
    gen.close()
    deadline = time.monotonic() + 15
    engine = {pid for pid, cmd in children.items() if "multiprocessing.resource_tracker" not in cmd}
    while (
        left := [p for p in engine if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    ) and time.monotonic() < deadline:
        time.sleep(0.2)
    with open(out, "w") as f:
        json.dump(
            {
                "rows": rows,
                "children": children,
                "left": {p: children[p] for p in left},
                "load_s": load_s,
                "generate_s": generate_s,
                "max_lora_rank": gen.llm.llm_engine.vllm_config.lora_config.max_lora_rank,
            },
            f,
        )


if __name__ == "__main__":  # vLLM starts its engine in a spawned process, which imports this file again
    main()
