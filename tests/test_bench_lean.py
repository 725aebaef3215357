"""benchmarks/lean_bench.py runs on a barely pre-trained organism (3 steps) and reports consistent figures."""

import json

from _scripts import load_benchmark


def test_lean_bench_all_cases(tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("CANARY_CPU_NUMERICS", "native")  # this process imported torch already: it cannot pin
    out = tmp_path / "lean.json"
    threads = torch.get_num_threads()
    try:
        report = load_benchmark("lean_bench").main(
            [
                "--numerics",
                "native",
                "--pretrain-steps",
                "3",
                "--cache",
                str(tmp_path / "cache"),
                "--steps",
                "4",
                "--block",
                "2",
                "--repeats",
                "1",
                "--run-epochs",
                "0.03",
                "--only",
                "step",
                "canary",
                "run",
                "--out",
                str(out),
            ]
        )
    finally:
        torch.set_num_threads(threads)  # the benchmark pins one thread; later tests keep theirs
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    step, canary, run = (report["cases"][k] for k in ("step", "canary", "run"))  # eval: same code as canary
    assert step["standard"]["n"] == step["lean"]["n"] == 4 and step["n_steps_each"] == 7
    assert step["speedup"] == step["standard"]["median_s"] / step["lean"]["median_s"]
    assert step["loss_first_rel_diff"] < 1e-5 and step["loss_max_rel_diff"] < 1e-4
    assert canary["n_answers"] == 200 and canary["same_answers"] >= 190
    assert run["same_sources_and_p"] and run["standard"]["n_steps"] == run["lean"]["n_steps"] > 0
    assert run["loss_max_rel_diff"] < 1e-4 and run["n_canary_answers"] > 0
