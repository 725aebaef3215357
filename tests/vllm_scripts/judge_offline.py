"""Run in the vLLM environment (.venv-vllm) by tests/test_vllm_generator.py: the offline vLLM judge (`VLLMBackend`).

    python judge_offline.py MODEL_DIR OUT_JSON PROMPTS_JSON

Writes each scorer's (logprob, digits, parse) score, status and detail for every prompt.
"""

import json
import sys


def main() -> None:
    from canary_lib.config import JudgeSettings
    from canary_lib.judge import LLMJudge, VLLMBackend

    model_dir, out = sys.argv[1:3]
    prompts = json.loads(sys.argv[3])
    backend = VLLMBackend(
        model_dir,
        gpu_memory_utilization=0.1,
        tensor_parallel_size=1,
        max_model_len=1024,
        dtype="float32",
        enforce_eager=True,
        seed=0,
    )
    scores = {}
    for scorer in ("logprob", "digits", "parse"):
        settings = JudgeSettings(backend="vllm", model=model_dir, scorer=scorer, digit_prune_below=0.0)
        scores[scorer] = [
            {"score": s.score, "status": s.status, "detail": s.detail}
            for s in LLMJudge(backend, settings).score_prompts(prompts)
        ]
    backend.llm.llm_engine.engine_core.shutdown()
    with open(out, "w") as f:
        json.dump(scores, f)


if __name__ == "__main__":  # vLLM starts its engine in a spawned process, which imports this file again
    main()
