"""benchmarks/sampling_bench.py runs (the wide-vocabulary case, one repeat) and reports consistent figures."""

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("sampling_bench", ROOT / "benchmarks" / "sampling_bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["sampling_bench"] = module
    spec.loader.exec_module(module)
    return module


def test_wide_vocab_case(tmp_path):
    import torch

    out = tmp_path / "sampling.json"
    threads = torch.get_num_threads()
    try:
        report = _load().main(["--cases", "wide_vocab_canary", "--repeats", "2", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)  # the benchmark pins one thread; later tests keep theirs
    assert json.loads(out.read_text()) == report
    case = report["cases"]["wide_vocab_canary"]
    assert case["n_answers"] == 20 and case["max_new_tokens"] == 64 and case["repeats"] == 2
    assert 0 < case["min_s"] <= case["median_s"] <= case["max_s"]
    assert case["answers_per_s"] == case["n_answers"] / case["median_s"]
    assert len(case["answers_sha256"]) == 1  # the same answers on every repeat (per-row seeded streams)
