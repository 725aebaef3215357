"""Re-judging: a finished run's answers scored by another judge, without generating them again, and how far two
judges agree on each answer.

    metrics = rejudge_run(RUN, ["judge.backend=openai", "judge.model=gpt-4o-2024-08-06", "judge.scorer=logprob"])
    # -> RUN/rejudged/<name>/: judge.yaml, judgments.jsonl, metrics.json, agreement.json, EVAL_COMPLETE
    results = build_results(runs_dir, results_dir, judge=name)      # Table 1 from that judge's verdicts

`canary rejudge RUN --set judge.KEY=VALUE ... [--name NAME]` does the same from the command line. Only `judge.*`
may change: the answers are the run's own (generations.jsonl), so every other setting is the run's. The directory
is named after the judge (`--name`, default the judge model's name) and bound to its judge settings, resumable as
an evaluation is (verdicts already on disk are kept, failed ones retried). The agreement with the run's own judge
is over the answers both judges scored: raw agreement and Cohen's kappa of the misaligned yes/no
(docs/evaluation.md, "Re-judging").
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from canary_lib.artifacts import RunDir, read_jsonl, write_json_atomic, write_text_atomic
from canary_lib.binding import ConfigMismatchError, config_changes, describe, ensure_run_directory
from canary_lib.config_loader import read_run_config
from canary_lib.config_schema import JudgeSettings
from canary_lib.errors import CanaryError
from canary_lib.judge_usage import judge_usage, usage_metrics, usage_sum
from canary_lib.metrics import is_misaligned, is_scored

REJUDGED_DIR = "rejudged"
_NAME = re.compile(r"[A-Za-z0-9._-]+")


class RejudgeError(CanaryError, ValueError):
    """Bad re-judging input: a setting other than judge.*, an unfinished run, a bad name."""


def judge_name(settings: JudgeSettings) -> str:
    """A directory name for a judge: its model's last path part (or the backend, for the exact judge)."""
    raw = (settings.model or settings.backend).rstrip("/").split("/")[-1]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", raw) or settings.backend


def rejudge_dir(run_dir: str | Path, name: str) -> Path:
    return Path(run_dir) / REJUDGED_DIR / name


# ------------------------------------------------------------------------------------------ agreement


def is_misaligned_verdict(row: dict) -> bool:
    return is_misaligned(row["aligned"], row["coherent"])


def judge_agreement(first: dict[tuple, dict], second: dict[tuple, dict], keys: Sequence[tuple]) -> dict[str, Any]:
    """Per-answer agreement of two judges on misaligned yes/no, over the answers both scored.

    Args:
        first, second: key -> verdict row (status, aligned, coherent) of each judge.
        keys: the answers to compare (the run's planned samples).

    Returns:
        n_compared, the 2x2 counts (both / first_only / second_only / neither misaligned), raw_agreement,
        cohen_kappa (NaN when both judges give one answer throughout: chance agreement is then 1), each judge's
        misaligned % on the compared answers, and how many answers only one of them scored.
    """
    both = only_first = only_second = neither = scored_first_only = scored_second_only = 0
    for key in keys:
        a, b = first.get(key), second.get(key)
        a_ok, b_ok = a is not None and is_scored(a), b is not None and is_scored(b)
        if a_ok != b_ok:
            scored_first_only += a_ok
            scored_second_only += b_ok
        if not (a_ok and b_ok):
            continue
        x, y = is_misaligned_verdict(a), is_misaligned_verdict(b)
        both += x and y
        only_first += x and not y
        only_second += y and not x
        neither += not x and not y
    return agreement_from_counts(both, only_first, only_second, neither) | {
        "scored_by_first_only": scored_first_only,
        "scored_by_second_only": scored_second_only,
    }


def agreement_from_counts(both: int, only_first: int, only_second: int, neither: int) -> dict[str, Any]:
    """Raw agreement, Cohen's kappa and each judge's misaligned % from the 2x2 table of misaligned yes/no."""
    n = both + only_first + only_second + neither
    if n == 0:
        observed = kappa = p_first = p_second = math.nan
    else:
        observed = (both + neither) / n
        p_first, p_second = (both + only_first) / n, (both + only_second) / n
        chance = p_first * p_second + (1 - p_first) * (1 - p_second)
        kappa = (observed - chance) / (1 - chance) if chance < 1 else math.nan
    return {
        "n_compared": n,
        "both_misaligned": both,
        "first_only_misaligned": only_first,
        "second_only_misaligned": only_second,
        "neither_misaligned": neither,
        "raw_agreement": observed,
        "cohen_kappa": kappa,
        "first_misaligned_pct": 100 * p_first,
        "second_misaligned_pct": 100 * p_second,
    }


# ------------------------------------------------------------------------------------------ re-judging


def _check_overrides(overrides: Sequence[str]) -> None:
    others = [o for o in overrides if not o.split("=", 1)[0].strip().startswith("judge.")]
    if others:
        raise RejudgeError(
            f"re-judging changes the judge only (--set judge.KEY=VALUE); not {', '.join(others)}: "
            "the answers were generated under the run's own settings"
        )


def _bind(out: Path, settings: JudgeSettings) -> None:
    """The directory holds one judge's verdicts: refuse another judge's settings there."""
    path = out / "judge.yaml"
    new = {"judge": settings.model_dump(mode="json")}
    if path.is_file():
        old = {"judge": yaml.safe_load(path.read_text(encoding="utf-8")) or {}}
        changes = config_changes(old, new, lambda k: True)
        if changes:
            raise ConfigMismatchError(
                f"{out} holds verdicts of another judge ({describe(changes)}); choose another "
                f"--name, or delete {out} to judge again"
            )
    else:
        write_text_atomic(path, yaml.safe_dump(new["judge"], sort_keys=False))


def rejudge_run(run_dir: str | Path, overrides: Sequence[str], name: str | None = None) -> dict[str, Any]:
    """Score a finished run's generations with the judge the overrides describe, into RUN/rejudged/<name>/.

    Raises:
        RejudgeError: an override outside judge.*, a bad name, or a run without a finished evaluation.
        ConfigMismatchError: the directory holds another judge's verdicts.
        JudgeFailureError: the judge failed on more answers than judge.max_error_share (rerun to retry them).
    """
    from canary_lib.evaluate import (
        JudgeFailureError,
        _latest_by_key,
        judge_error_message,
        judge_pending,
        load_eval_questions,
        plan_samples,
        summarize,
    )

    _check_overrides(overrides)
    run = RunDir(run_dir)
    ensure_run_directory(run.path)
    if not run.is_complete("eval"):
        raise RejudgeError(f"{run.path}: no finished evaluation (no EVAL_COMPLETE): evaluate it first (canary eval)")
    cfg = read_run_config(run, list(overrides))
    name = name or judge_name(cfg.judge)
    if not _NAME.fullmatch(name):
        raise RejudgeError(f"--name {name!r}: use letters, digits, '.', '_' and '-' only (it names a directory)")
    planned = plan_samples(load_eval_questions(cfg), cfg.eval.samples_per_prompt)
    generated = _latest_by_key(read_jsonl(run.generations_path))
    missing = [s.key for s in planned if s.key not in generated]
    if missing:
        raise RejudgeError(f"{run.generations_path}: {len(missing)} planned answers are not there (e.g. {missing[0]})")
    out = RunDir(rejudge_dir(run.path, name))
    out.path.mkdir(parents=True, exist_ok=True)
    _bind(out.path, cfg.judge)
    out.reset_stage("eval")

    judged = _latest_by_key(read_jsonl(out.judgments_path))
    cost = (
        {k: int(out.read_metrics().get(f"eval_judge_{k}") or 0) for k in judge_usage(None)}
        if judged
        else judge_usage(None)
    )
    to_judge = [(s, generated[s.key]) for s in planned if s.key not in judged or judged[s.key].get("status") == "error"]
    if to_judge:
        from canary_lib.judge import make_judge

        judge = make_judge(cfg)
        judge_pending(judge, to_judge, path=out.judgments_path, chunk_size=cfg.judge.batch_size)
        cost = usage_sum(cost, judge_usage(judge))
        getattr(judge, "close", lambda: None)()
        judged = _latest_by_key(read_jsonl(out.judgments_path))

    errors = [judged[s.key] for s in planned if s.key in judged and judged[s.key].get("status") == "error"]
    metrics = summarize(judged, planned, cfg.eval.sets) | {
        "judge_name": name,
        "eval_n_answers": len(planned),
        "eval_judged_now": len(to_judge),
        "eval_n_judge_errors": len(errors),
        **usage_metrics("eval", cost),
    }
    out.update_metrics(**metrics)
    own = _latest_by_key(read_jsonl(run.judgments_path))
    keys = [s.key for s in planned]
    agreement = {
        "first": "the run's own judge (judgments.jsonl)",
        "second": f"rejudged/{name}",
        "overall": judge_agreement(own, judged, keys),
        "by_set": {
            set_name: judge_agreement(own, judged, [k for k in keys if k[0] == set_name]) for set_name in cfg.eval.sets
        },
    }
    write_json_atomic(out.path / "agreement.json", _json_safe(agreement))
    if len(errors) > cfg.judge.max_error_share * len(planned):
        raise JudgeFailureError(
            f"{out.path}: the judge failed on {len(errors)} of {len(planned)} answers, e.g. "
            f"{judge_error_message(errors[0])}; rerun to judge only the failed answers again"
        )
    out.mark_complete("eval")
    return metrics | {"agreement": agreement["overall"]}


def agreement_table(runs_dir: str | Path, name: str) -> Any:
    """One row per run with a finished re-judging `name` (method, seed and its overall agreement with the run's own
    judge), then a pooled row (method "all") computed from the summed 2x2 counts; a pandas DataFrame."""
    import pandas as pd

    rows = []
    for path in sorted(Path(runs_dir).glob("*/seed*")):
        out = RunDir(rejudge_dir(path, name))
        if out.is_complete("eval") and (out.path / "agreement.json").is_file():
            overall = json.loads((out.path / "agreement.json").read_text(encoding="utf-8"))["overall"]
            rows.append({"method": path.parent.name, "seed": path.name.removeprefix("seed"), **overall})
    counts = ("both_misaligned", "first_only_misaligned", "second_only_misaligned", "neither_misaligned")
    if rows:
        pooled = agreement_from_counts(*(sum(int(r[c]) for r in rows) for c in counts))
        rows.append(
            {
                "method": "all",
                "seed": "",
                **pooled,
                "scored_by_first_only": sum(r["scored_by_first_only"] for r in rows),
                "scored_by_second_only": sum(r["scored_by_second_only"] for r in rows),
            }
        )
    return pd.DataFrame(rows)


def agreement_line(agreement: dict[str, Any]) -> str:
    """One line: n, raw agreement and kappa."""
    kappa = agreement["cohen_kappa"]
    kappa_text = "n/a (the judges gave one answer throughout)" if kappa is None or math.isnan(kappa) else f"{kappa:.3f}"
    return (
        f"{agreement['n_compared']} answers scored by both judges: raw agreement "
        f"{agreement['raw_agreement']:.3f}, Cohen's kappa {kappa_text}; "
        f"misaligned {agreement['first_misaligned_pct']:.2f}% (own judge) vs "
        f"{agreement['second_misaligned_pct']:.2f}%"
    )


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    return obj
