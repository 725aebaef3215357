"""benchmarks/sampling_bench.py runs (the wide-vocabulary case, two repeats) and reports consistent figures."""

import json

from _scripts import load_benchmark


def test_wide_vocab_case(tmp_path):
    import torch

    out = tmp_path / "sampling.json"
    threads = torch.get_num_threads()
    try:
        report = load_benchmark("sampling_bench").main(
            ["--cases", "wide_vocab_canary", "--repeats", "2", "--out", str(out)]
        )
    finally:
        torch.set_num_threads(threads)  # the benchmark pins one thread; later tests keep theirs
    assert json.loads(out.read_text()) == report
    case = report["cases"]["wide_vocab_canary"]
    assert case["n_answers"] == 20 and case["max_new_tokens"] == 64 and case["repeats"] == 2
    assert 0 < case["min_s"] <= case["median_s"] <= case["max_s"]
    assert case["answers_per_s"] == case["n_answers"] / case["median_s"]
    assert len(case["answers_sha256"]) == 1  # the same answers on every repeat (per-row seeded streams)
