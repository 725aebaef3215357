"""`canary rejudge` on the tiny organism's finished sweep: every run's answers judged again without generating,
a second Table 1 built from those verdicts, and the agreement per run and pooled.

The organism has one judge, its exact rule-based judge, so the second judge here is the same judge again: the
second Table 1 must equal the first and the agreement must be total, which checks the whole path (directories,
binding, metrics, tables, agreement) on real runs. Two different LLM judges are covered by tests/test_rejudge.py.
"""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from canary_lib.artifacts import RunDir, read_jsonl
from canary_lib.cli import main
from canary_lib.results import build_results

pytestmark = pytest.mark.slow


def test_rejudge_every_run_of_the_tiny_sweep(tiny_sweep, tmp_path, capsys):
    assert tiny_sweep.status == 0
    runs = tmp_path / "runs"
    shutil.copytree(tiny_sweep.runs, runs)  # the session's sweep stays as the other tests read it
    evaluated = [p for p in sorted(runs.glob("*/seed*")) if RunDir(p).is_complete("eval")]
    assert len(evaluated) >= 5  # the base row and the four methods
    generations = {p: (p / "generations.jsonl").read_bytes() for p in evaluated}
    for path in evaluated:
        assert main(["rejudge", str(path), "--set", "judge.backend=exact", "--name", "exact-again"]) == 0
        assert (path / "generations.jsonl").read_bytes() == generations[path]
        own = read_jsonl(path / "judgments.jsonl")
        again = read_jsonl(path / "rejudged" / "exact-again" / "judgments.jsonl")
        assert len(again) == len(own)
    assert "Cohen's kappa" in capsys.readouterr().out

    first = build_results(runs, tmp_path / "results")
    second = build_results(runs, tmp_path / "results_exact-again", judge="exact-again")
    columns = ["label", "n_seeds", "Gen. %Mis.", "Gen. %Inc.", "In-Dom. %Mis.", "In-Dom. %Inc.", "Avg p_t"]
    pd.testing.assert_frame_equal(first.table1[columns], second.table1[columns])
    agreement = pd.read_csv(tmp_path / "results_exact-again" / "judge_agreement.csv")
    assert len(agreement) == len(evaluated) + 1 and agreement.method.iloc[-1] == "all"
    assert (agreement.raw_agreement == 1.0).all() and (agreement.scored_by_first_only == 0).all()
    pooled = agreement.iloc[-1]
    assert pooled.n_compared == sum(int(RunDir(p).read_metrics()["n_scored"]) for p in evaluated)
    assert (tmp_path / "results_exact-again" / "runs.csv").read_text().count("\n") == len(first.runs) + 1
