"""benchmarks/step_floor.py runs on a barely pre-trained organism (3 steps): its rewrite computes the lean step's
loss, and its figures are consistent with each other."""

import json

from _scripts import load_benchmark


def test_step_floor_figures(tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("CANARY_CPU_NUMERICS", "native")  # this process imported torch already: it cannot pin
    out = tmp_path / "floor.json"
    threads = torch.get_num_threads()
    args = ["--pretrain-steps", "3", "--cache", str(tmp_path / "cache"), "--steps", "4", "--block", "2"]
    try:
        report = load_benchmark("step_floor").main(args + ["--profiled-steps", "2", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)  # the benchmark pins one thread; later tests keep theirs
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    step = report["step"]
    assert step["n_steps_each"] == 9 and step["loss_max_rel_diff"] < 1e-5  # the rewrite is the same loss
    assert step["functional_speedup"] == step["lean_median_s"] / step["functional_median_s"]
    profiled = step["profiled"]
    assert 0 < profiled["attention_s_per_step"] < profiled["total_s_per_step"]
    assert 0 < profiled["gemm_s_per_step"] < profiled["total_s_per_step"]
    projection = step["projection"]
    assert projection["gemm_only_step_s"] < projection["repro_wall_s"]  # the products are less than the step
