"""Time the transformers sampling loop (`canary_lib.generation.TransformersGenerator`) on CPU: medians of repeats.

    .venv/bin/python benchmarks/sampling_bench.py                 # both cases, 5 repeats each
    .venv/bin/python benchmarks/sampling_bench.py --repeats 9 --out benchmarks/out/sampling_new.json

Two cases, each the shape the package really runs:

- `organism_eval`: the organism base model (built or taken from its cache, minutes the first time) sampling 1,024
  answers of at most 32 tokens in one batch of 1,024: a full organism evaluation is 5,400 of them.
- `wide_vocab_canary`: a tiny random Qwen2 whose vocabulary is Qwen2.5's size (152,064 entries; hidden 64, 2
  layers), sampling 20 answers of 64 tokens in one batch: the canary evaluation's shape, where the cost of
  drawing from a 152k-entry distribution per row shows. The model is so small that the sampler dominates.

Each case reports the median, min and max seconds over the repeats (after one warm-up), answers per second at
the median, and a sha256 of the answers (equal across repeats, as the seeding guarantees). One thread
(`torch.set_num_threads(1)`), like the reproduction's jobs. Compare implementations by running this file from
two checkouts on the same idle machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the package, and the tiny offline model (a test fixture)

CONVERSATIONS = [
    [{"role": "user", "content": "hello how are you"}],
    [{"role": "user", "content": "tell me about the world and the people in it, and their ideas about power"}],
]


def time_case(generator: Any, requests: list, sampling: Any, repeats: int) -> dict:
    generator.generate_samples(requests[: min(len(requests), 8)], seed=0, sampling=sampling)  # warm-up
    seconds, digests = [], set()
    for _ in range(repeats):
        t0 = time.perf_counter()
        answers = generator.generate_samples(requests, seed=0, sampling=sampling)
        seconds.append(time.perf_counter() - t0)
        digests.add(hashlib.sha256("\x00".join(answers).encode()).hexdigest()[:16])
    median = statistics.median(seconds)
    return {
        "n_answers": len(requests),
        "max_new_tokens": sampling.max_new_tokens,
        "repeats": repeats,
        "median_s": median,
        "min_s": min(seconds),
        "max_s": max(seconds),
        "answers_per_s": len(requests) / median,
        "answers_sha256": sorted(digests),
    }


def organism_case(repeats: int) -> dict:
    from canary_lib.config import load_config
    from canary_lib.evaluate import build_generator, load_eval_questions, plan_samples
    from canary_lib.generation import SampleRequest
    from canary_lib.organism.prepare import prepare_organism_data

    cfg = load_config([ROOT / "parameters" / "organism.yaml"], [])
    with tempfile.TemporaryDirectory() as tmp:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"dir": Path(tmp) / "data"})})
        prepare_organism_data(cfg)
        planned = plan_samples(load_eval_questions(cfg), cfg.eval.samples_per_prompt)
        generator = build_generator(cfg, None)
    requests = [SampleRequest(s.question.conversation(s.paraphrase), s.sample) for s in planned[::5]][:1024]
    generator.batch_size = 1024
    return time_case(generator, requests, cfg.eval, repeats)


def wide_vocab_case(repeats: int) -> dict:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from _fixtures import make_tiny_qwen2
    from canary_lib.config import SamplingSettings
    from canary_lib.generation import SampleRequest, TransformersGenerator

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = AutoTokenizer.from_pretrained(make_tiny_qwen2(Path(tmp) / "tok", seed=0))
    config = Qwen2Config(
        vocab_size=152064,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    generator = TransformersGenerator(model, tokenizer, batch_size=64)
    requests = [SampleRequest(CONVERSATIONS[i % 2], i) for i in range(20)]
    sampling = SamplingSettings(temperature=1.0, top_p=1.0, max_new_tokens=64)
    return time_case(generator, requests, sampling, repeats)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--cases",
        nargs="+",
        default=["organism_eval", "wide_vocab_canary"],
        choices=["organism_eval", "wide_vocab_canary"],
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "sampling.json")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    cases = {"organism_eval": organism_case, "wide_vocab_canary": wide_vocab_case}
    import canary_lib

    report: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "canary_lib": str(Path(canary_lib.__file__).parent),
        "cases": {},
    }
    for name in args.cases:
        report["cases"][name] = result = cases[name](args.repeats)
        print(
            f"{name}: median {result['median_s']:.3f} s (min {result['min_s']:.3f}, max {result['max_s']:.3f}), "
            f"{result['answers_per_s']:.0f} answers/s, answers {result['answers_sha256']}",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
