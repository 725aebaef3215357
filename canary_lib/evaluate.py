"""Evaluation of a trained run (or of the base model) with the judge, and the canary risk r_t for training.

    metrics = evaluate_run(Path("runs/organism/canary/seed42"))       # or: canary eval RUN_DIR
    metrics = evaluate_model(cfg, Path("runs/organism/base"), None)   # the base model (Table 1's `base` row)
    canary_fn = make_canary_fn(cfg)                                   # training calls canary_fn(model, tok, step)

Evaluation is two resumable stages over the question sets in cfg.eval.sets (general, in_domain):
1. generation: cfg.eval.samples_per_prompt answers per (question, paraphrase), appended to generations.jsonl
   one batch at a time, keyed by (set, question_id, paraphrase, sample);
2. judging: every generated answer, appended to judgments.jsonl under the same key.
A rerun skips every key already on disk, so a crash loses at most the batch in flight. Then metrics.json gains
{set}_misaligned_pct, {set}_incoherent_pct (+ counts and the misaligned-among-coherent variant), n_scored,
n_unscored, eval_n_judge_errors and timings, and the EVAL_COMPLETE marker is written, unless the judge failed on
more than judge.max_error_share of the answers: then the evaluation stops with the judge's error and a rerun
retries them. Cached answers are reused only under the settings that drew them (canary_lib.binding).

The question sets, sample keys and evaluation errors live in canary_lib/eval_questions.py, the canary callable in
canary_lib/canary_eval.py; both are re-exported here.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from canary_lib.artifacts import RunDir, RunFileError, append_jsonl, read_jsonl
from canary_lib.binding import check_base_evaluation_directory, check_evaluation, ensure_run_directory, recorded_config
from canary_lib.canary_eval import CanaryEvaluator, canary_seed, make_canary_fn  # noqa: F401 - re-exported
from canary_lib.config_loader import read_run_config, write_run_config
from canary_lib.config_schema import RunConfig
from canary_lib.eval_questions import (  # noqa: F401 - re-exported: these were defined here
    KEY_FIELDS,
    SET_FILES,
    EvaluationError,
    JudgeFailureError,
    PlannedSample,
    _chunks,
    _latest_by_key,
    check_questions,
    judge_error_message,
    load_eval_questions,
    plan_samples,
    question_set_path,
    row_key,
    verdict_problem,
)
from canary_lib.job_progress import ProgressFile
from canary_lib.judge_usage import judge_usage, usage_metrics, usage_sum
from canary_lib.metrics import is_scored, summarize_judgments, unscored_breakdown
from canary_lib.preflight import check_adapter, require_judge_key
from canary_lib.redact import redact
from canary_lib.tracking import open_tracker
from canary_lib.types import Judge, JudgeRequest

# ------------------------------------------------------------------------------------------ generation


def build_generator(cfg: RunConfig, adapter_dir: Path | None) -> Any:
    """The cfg.eval.backend generator with the adapter applied (None: the base model)."""
    from canary_lib.models import resolve_model_path

    if cfg.eval.backend == "vllm":
        from canary_lib.generation import VLLMGenerator, vllm_model_kwargs

        return VLLMGenerator(
            resolve_model_path(cfg),
            adapter_dir,
            seed=cfg.seed,
            gpu_memory_utilization=cfg.eval.vllm_gpu_memory_utilization,
            tensor_parallel_size=cfg.eval.vllm_tensor_parallel_size,
            **vllm_model_kwargs(cfg.model),
        )
    from canary_lib.generation import TransformersGenerator
    from canary_lib.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(cfg)
    if adapter_dir is not None:
        from peft import PeftModel

        # Evaluation never trains: fold the adapter into the weights (W + scale * B @ A, the same rs-LoRA
        # scale) so every projection is one matrix product instead of three.
        try:
            model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False).merge_and_unload()
        except Exception as exc:  # noqa: BLE001 - whatever is unreadable in it, the adapter is damaged
            raise EvaluationError(
                f"{adapter_dir}: damaged adapter ({type(exc).__name__}: {str(exc)[:200]}); "
                "train the run again into a new directory"
            ) from None
    return TransformersGenerator(model.eval(), tokenizer, batch_size=cfg.eval.batch_size)


def generate_pending(
    generator: Any, pending: Sequence[PlannedSample], *, seed: int, sampling: Any, path: Path, chunk_size: int
) -> int:
    """Generate and append the pending samples, one chunk at a time; returns how many were written."""
    from canary_lib.generation import SampleRequest

    bar = tqdm(total=len(pending), desc="generate", unit="answer")
    progress = ProgressFile("evaluate", len(pending))  # the sweep's status line (canary_lib.job_progress)
    written = 0
    for chunk in _chunks(pending, chunk_size):
        requests = [SampleRequest(s.question.conversation(s.paraphrase), s.sample) for s in chunk]
        answers = generator.generate_samples(requests, seed=seed, sampling=sampling)
        append_jsonl(
            path,
            [
                {
                    "set": s.set,
                    "question_id": s.question.id,
                    "paraphrase": s.paraphrase,
                    "sample": s.sample,
                    "question": s.question.paraphrases[s.paraphrase],
                    "system": s.question.system,
                    "answer": a,
                    "seed": seed,
                }
                for s, a in zip(chunk, answers)
            ],
        )
        written += len(chunk)
        bar.update(len(chunk))
        progress.update(written)
    bar.close()
    return written


# ------------------------------------------------------------------------------------------ judging


def judge_pending(judge: Judge, pending: Sequence[tuple[PlannedSample, dict]], *, path: Path, chunk_size: int) -> int:
    """Judge (sample, generation row) pairs and append the verdicts; a failed chunk is written as errors."""
    bar = tqdm(total=len(pending), desc="judge", unit="answer")
    progress = ProgressFile("judge", len(pending))  # the sweep's status line (canary_lib.job_progress)
    written = 0
    for chunk in _chunks(pending, chunk_size):
        requests = [JudgeRequest(g["question"], g["answer"], dict(s.question.judge_prompts)) for s, g in chunk]
        try:
            judgments = judge.judge(requests)
            if len(judgments) != len(requests):
                raise RuntimeError(f"judge returned {len(judgments)} verdicts for {len(requests)} answers")
            rows = [j.to_dict() for j in judgments]
        except Exception as exc:  # noqa: BLE001 - recorded per answer (status "error"), never dropped
            rows = [
                {
                    "aligned": None,
                    "coherent": None,
                    "status": "error",
                    "detail": {"error": redact(f"{type(exc).__name__}: {exc}")[:500]},
                }
                for _ in requests
            ]
        append_jsonl(path, [{**dict(zip(KEY_FIELDS, s.key)), **row} for (s, _), row in zip(chunk, rows)])
        written += len(chunk)
        bar.update(len(chunk))
        progress.update(written)
    bar.close()
    return written


def _release_memory() -> None:
    """Collect a dropped model before the next one loads (GPU memory)."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def summarize(judgments: dict[tuple, dict], planned: Sequence[PlannedSample], sets: Sequence[str]) -> dict:
    """metrics.json keys from the judgments of the planned samples (stale keys from other configs ignored)."""
    out: dict[str, Any] = {}
    n_scored = n_unscored = 0
    for name in sets:
        rows = [judgments[s.key] for s in planned if s.set == name and s.key in judgments]
        summary = summarize_judgments(rows)
        out |= summary.to_dict(f"{name}_")
        n_scored += summary.n_scored
        n_unscored += summary.n_unscored
    out |= {"n_scored": n_scored, "n_unscored": n_unscored}
    return out


def generate_answers(cfg: RunConfig, out_dir: Path, adapter_dir: Path | None) -> tuple[int, float, float]:
    """The generation stage: every planned answer not yet in generations.jsonl, appended batch by batch.

    Returns:
        (answers generated now, seconds loading the model, seconds generating).
    """
    run = RunDir(out_dir)
    planned = plan_samples(load_eval_questions(cfg), cfg.eval.samples_per_prompt)
    generated = _latest_by_key(read_jsonl(run.generations_path))
    to_generate = [s for s in planned if s.key not in generated]
    if not to_generate:
        return 0, 0.0, 0.0
    t0 = time.perf_counter()
    generator = build_generator(cfg, adapter_dir)
    t1 = time.perf_counter()
    chunk = cfg.eval.batch_size if cfg.eval.backend == "transformers" else max(cfg.eval.batch_size, 512)
    generate_pending(
        generator, to_generate, seed=cfg.seed, sampling=cfg.eval, path=run.generations_path, chunk_size=chunk
    )
    seconds = time.perf_counter() - t1
    getattr(generator, "close", lambda: None)()  # vLLM's engine processes end here, not at interpreter exit
    del generator
    _release_memory()
    return len(to_generate), t1 - t0, seconds


VLLM_PYTHON_ENV = "CANARY_VLLM_PYTHON"
"""A Python with vLLM for the generation stage when this one has none (the CPU tests' .venv-vllm; unset on a GPU
node, where `.[gpu]` puts vLLM beside everything else)."""


def run_isolated(fn: Any, *args: Any) -> Any:
    """fn(*args) in a fresh (spawned) process, so all the GPU memory it took is returned when it ends."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def generate_answers_in(python: str, cfg: RunConfig, out_dir: Path, adapter_dir: Path | None) -> tuple:
    """`generate_answers` in another Python (one with vLLM, where canary_lib imports too), as a subprocess: a
    spawned multiprocessing child would inherit this interpreter's sys.path and miss that one's packages."""
    import json
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        request, result = Path(tmp) / "request.json", Path(tmp) / "result.json"
        request.write_text(
            json.dumps(
                {
                    "config": cfg.model_dump(mode="json"),
                    "out_dir": str(out_dir),
                    "adapter_dir": str(adapter_dir) if adapter_dir else None,
                }
            )
        )
        code = (
            "import json, sys; from pathlib import Path; "
            "from canary_lib.config import apply_process_settings, config_from_dict; "
            "from canary_lib.evaluate import generate_answers; r = json.loads(Path(sys.argv[1]).read_text()); "
            "cfg = apply_process_settings(config_from_dict(r['config'])); "
            "a = r['adapter_dir']; out = generate_answers(cfg, Path(r['out_dir']), "
            "Path(a) if a else None); Path(sys.argv[2]).write_text(json.dumps(list(out)))"
        )
        done = subprocess.run([python, "-c", code, str(request), str(result)], stderr=subprocess.PIPE, text=True)
        if done.returncode != 0 or not result.is_file():
            tail = " ".join(done.stderr.strip().splitlines()[-3:])[-400:]
            raise RuntimeError(f"the generation stage in {python} failed (exit {done.returncode}): {tail}")
        return tuple(json.loads(result.read_text()))


def evaluate_model(cfg: RunConfig, out_dir: Path, adapter_dir: Path | None) -> dict:
    """Generate answers to the evaluation sets, judge them, and write the metrics (resumable).

    Args:
        cfg: The run configuration (data, eval, judge, model sections).
        out_dir: Directory for generations.jsonl, judgments.jsonl, metrics.json and EVAL_COMPLETE.
        adapter_dir: The run's LoRA adapter; None evaluates the base model.

    Returns:
        The evaluation keys added to metrics.json.

    Raises:
        RunDirectoryBusyError: another process trains or evaluates `out_dir` (one owner per run directory).
    """
    from canary_lib.rundir_lock import hold_run_directory

    ensure_run_directory(Path(out_dir))
    with hold_run_directory(out_dir, "evaluation"):
        return _evaluate_held(cfg, out_dir, adapter_dir)


def _evaluate_held(cfg: RunConfig, out_dir: Path, adapter_dir: Path | None) -> dict:
    """evaluate_model's work, while this process holds the run directory."""
    t_start = time.perf_counter()
    run = RunDir(out_dir)
    ensure_run_directory(run.path)
    if adapter_dir is None:
        check_base_evaluation_directory(run)  # the base model's answers never land in a training run
    check_evaluation(run, cfg, trained=adapter_dir is not None)  # no cached answer reused under other settings
    run.read_metrics()  # a damaged metrics.json is refused now, not after the generation
    if adapter_dir is not None and not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise EvaluationError(f"{adapter_dir}: no adapter_config.json (not a saved peft adapter)")
    if adapter_dir is not None:
        check_adapter(Path(adapter_dir))
    require_judge_key(cfg)  # not found only after hours of generation
    questions = load_eval_questions(cfg)
    planned = plan_samples(questions, cfg.eval.samples_per_prompt)
    from canary_lib.models import check_model_source  # torch: only once the cheap checks passed

    check_model_source(cfg.model)
    judged_before = _latest_by_key(read_jsonl(run.judgments_path))
    if any(judged_before.get(s.key, {}).get("status", "error") == "error" for s in planned):
        from canary_lib.judge import preflight_judge  # before the model loads, not after generation

        preflight_judge(cfg)
    run.path.mkdir(parents=True, exist_ok=True)
    run.remove_temporaries()
    _record_eval_settings(run, cfg)
    run.reset_stage("eval")  # complete again only once every planned answer is judged

    if cfg.eval.backend == "vllm":  # vLLM does not reliably free GPU memory in-process: its own process
        python = os.environ.get(VLLM_PYTHON_ENV)
        n_generated, load_seconds, generate_seconds = (
            generate_answers_in(python, cfg, run.path, adapter_dir)
            if python
            else run_isolated(generate_answers, cfg, run.path, adapter_dir)
        )
    else:
        n_generated, load_seconds, generate_seconds = generate_answers(cfg, run.path, adapter_dir)
    generated = _latest_by_key(read_jsonl(run.generations_path))
    missing = [s.key for s in planned if s.key not in generated]
    if missing:
        raise RuntimeError(f"{run.generations_path}: {len(missing)} answers still missing after generation")

    judged = _latest_by_key(read_jsonl(run.judgments_path))
    cost = judge_usage(None)  # what judging cost: earlier sessions' totals while their verdicts are kept
    if judged:
        cost = {k: int(run.read_metrics().get(f"eval_judge_{k}") or 0) for k in cost}
    # judge errors (server down, timeouts) are retried by a rerun; every other verdict is final
    to_judge = [(s, generated[s.key]) for s in planned if s.key not in judged or judged[s.key].get("status") == "error"]
    t0 = time.perf_counter()
    if to_judge:
        from canary_lib.judge import make_judge

        judge = make_judge(cfg)
        load_seconds += time.perf_counter() - t0
        t0 = time.perf_counter()
        judge_pending(judge, to_judge, path=run.judgments_path, chunk_size=cfg.judge.batch_size)
        cost = usage_sum(cost, judge_usage(judge))
        del judge
        _release_memory()
        judged = _latest_by_key(read_jsonl(run.judgments_path))
    judge_seconds = time.perf_counter() - t0

    metrics = summarize(judged, planned, cfg.eval.sets)
    errors = [judged[s.key] for s in planned if s.key in judged and judged[s.key].get("status") == "error"]
    metrics |= {
        "eval_n_answers": len(planned),
        "eval_generated_now": n_generated,
        "eval_judged_now": len(to_judge),
        "eval_n_judge_errors": len(errors),
        "eval_unscored_share": metrics["n_unscored"] / len(planned) if planned else None,
        "eval_generate_seconds": generate_seconds,
        "eval_judge_seconds": judge_seconds,
        "eval_load_seconds": load_seconds,
        "eval_seconds": time.perf_counter() - t_start,
        "eval_answers_per_second": n_generated / generate_seconds if n_generated and generate_seconds else None,
        "eval_judgments_per_second": len(to_judge) / judge_seconds if to_judge and judge_seconds else None,
        "eval_adapter": str(adapter_dir) if adapter_dir is not None else None,
        **usage_metrics("eval", cost),
    }
    run.update_metrics(**metrics)
    # the final metrics into the run's tracker run (the one training used: its id is in the run directory)
    tracker = open_tracker(cfg, run.path, resume_step=int(run.read_metrics().get("n_steps") or 0))
    tracker.log_summary(metrics)
    tracker.close()
    if len(errors) > cfg.judge.max_error_share * len(planned):
        raise JudgeFailureError(
            f"{run.path}: the judge failed on {len(errors)} of {len(planned)} answers "
            f"({100 * len(errors) / len(planned):.1f}% > judge.max_error_share {100 * cfg.judge.max_error_share:g}%), "
            f"{verdict_problem(errors[0])}; the evaluation is not complete: fix the judge and rerun "
            "(only the failed answers are judged again)"
        )
    unscored = [judged[s.key] for s in planned if s.key in judged and not is_scored(judged[s.key])]
    if len(unscored) > cfg.judge.max_unscored_share * len(planned) or len(unscored) == len(planned):
        raise JudgeFailureError(
            f"{run.path}: the judge did not score {len(unscored)} of {len(planned)} answers "
            f"({unscored_breakdown(unscored)}; {100 * len(unscored) / len(planned):.1f}% > "
            f"judge.max_unscored_share {100 * cfg.judge.max_unscored_share:g}%), {verdict_problem(unscored[0])}; "
            f"the evaluation is not complete: check the judge (model, scorer, log-probabilities), then delete "
            f"{run.judgments_path} to judge again"
        )
    run.mark_complete("eval")
    return metrics


def _record_eval_settings(run: RunDir, cfg: RunConfig) -> None:
    """config.yaml records the evaluation settings in use (its provenance, from training, is kept)."""
    recorded = recorded_config(run)
    if recorded is None:
        write_run_config(run, cfg)
    elif recorded.get("eval") != cfg.eval.model_dump(mode="json"):
        write_run_config(run, cfg, provenance=recorded.get("provenance") or {})


def evaluate_run(run_dir: Path, overrides: Sequence[str] = ()) -> dict:
    """Evaluate a finished training run's adapter with its own config.yaml (plus key=value overrides).

    Raises:
        IncompleteRunError: The run has no TRAINING_COMPLETE marker.
    """
    run = RunDir(run_dir)
    ensure_run_directory(run.path)
    run.require_complete("training")
    if not run.config_path.is_file():
        raise RunFileError(f"{run.config_path}: missing; the run's configuration is needed to evaluate it")
    cfg = read_run_config(run, list(overrides))
    return evaluate_model(cfg, run.path, run.adapter_dir)
