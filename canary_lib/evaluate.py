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
n_unscored and timings, and the EVAL_COMPLETE marker is written.
"""

from __future__ import annotations

import gc
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from tqdm.auto import tqdm

from canary_lib.errors import CanaryError
from canary_lib.artifacts import RunDir, append_jsonl, read_jsonl
from canary_lib.config import RunConfig
from canary_lib.metrics import (
    canary_risk,
    has_cut_probabilities,
    is_misaligned,
    is_scored,
    misaligned_probability,
    summarize_judgments,
)
from canary_lib.types import JUDGED_METRICS, CanaryResult, Judge, JudgeRequest, Question

SET_FILES = {"general": "general_eval_file", "in_domain": "in_domain_eval_file"}
KEY_FIELDS = ("set", "question_id", "paraphrase", "sample")


class EvaluationError(CanaryError, ValueError):
    """Bad evaluation input (missing files, questions without judge prompts, an unfinished run)."""


# ------------------------------------------------------------------------------------------ questions and keys


def question_set_path(cfg: RunConfig, name: str) -> Path:
    if name not in SET_FILES:
        raise EvaluationError(f"unknown evaluation set {name!r}; expected one of {sorted(SET_FILES)}")
    return cfg.data.path(getattr(cfg.data, SET_FILES[name]))


def check_questions(questions: Sequence[Question], source: str, *, needs_judge_prompts: bool) -> None:
    """Refuse what would only fail after hours of generation: empty sets, duplicate ids, missing prompts."""
    if not questions:
        raise EvaluationError(f"{source}: no questions")
    seen: set[str] = set()
    for q in questions:
        if q.id in seen:
            raise EvaluationError(f"{source}: question id {q.id!r} appears twice")
        seen.add(q.id)
        if not q.paraphrases:
            raise EvaluationError(f"{source}: question {q.id!r} has no paraphrases")
        missing = [m for m in JUDGED_METRICS if m not in q.judge_prompts]
        if needs_judge_prompts and missing:
            raise EvaluationError(f"{source}: question {q.id!r} has no judge prompt for {missing} "
                                  f"(an LLM judge uses each question's own judge_prompts)")


def load_eval_questions(cfg: RunConfig) -> dict[str, list[Question]]:
    """The question sets named in cfg.eval.sets, checked."""
    from canary_lib.data import load_question_set

    out: dict[str, list[Question]] = {}
    for name in cfg.eval.sets:
        path = question_set_path(cfg, name)
        if not path.is_file():
            raise EvaluationError(f"{path}: {name} question file not found (prepare the data first: canary prep-data)")
        questions = load_question_set(path)
        check_questions(questions, str(path), needs_judge_prompts=cfg.judge.backend != "exact")
        out[name] = questions
    return out


def row_key(row: dict) -> tuple:
    return tuple(row[k] for k in KEY_FIELDS)


@dataclass(frozen=True)
class PlannedSample:
    set: str
    question: Question
    paraphrase: int
    sample: int

    @property
    def key(self) -> tuple:
        return (self.set, self.question.id, self.paraphrase, self.sample)


def plan_samples(questions: dict[str, list[Question]], samples_per_prompt: int) -> list[PlannedSample]:
    """Every (set, question, paraphrase, sample) the evaluation needs, in a fixed order."""
    return [PlannedSample(name, q, p, j) for name, qs in questions.items() for q in qs
            for p in range(len(q.paraphrases)) for j in range(samples_per_prompt)]


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _latest_by_key(rows: Iterable[dict]) -> dict[tuple, dict]:
    return {row_key(r): r for r in rows if all(k in r for k in KEY_FIELDS)}


# ------------------------------------------------------------------------------------------ generation


def build_generator(cfg: RunConfig, adapter_dir: Path | None) -> Any:
    """The cfg.eval.backend generator with the adapter applied (None: the base model)."""
    from canary_lib.models import resolve_model_path

    if cfg.eval.backend == "vllm":
        from canary_lib.generation import VLLMGenerator

        return VLLMGenerator(resolve_model_path(cfg), adapter_dir, seed=cfg.seed,
                             gpu_memory_utilization=cfg.eval.vllm_gpu_memory_utilization,
                             tensor_parallel_size=cfg.eval.vllm_tensor_parallel_size)
    from canary_lib.generation import TransformersGenerator
    from canary_lib.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(cfg)
    if adapter_dir is not None:
        from peft import PeftModel

        # Evaluation never trains: fold the adapter into the weights (W + scale * B @ A, the same rs-LoRA
        # scale) so every projection is one matrix product instead of three.
        model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False).merge_and_unload()
    return TransformersGenerator(model.eval(), tokenizer, batch_size=cfg.eval.batch_size)


def generate_pending(generator: Any, pending: Sequence[PlannedSample], *, seed: int, sampling: Any,
                     path: Path, chunk_size: int) -> int:
    """Generate and append the pending samples, one chunk at a time; returns how many were written."""
    from canary_lib.generation import SampleRequest

    bar = tqdm(total=len(pending), desc="generate", unit="answer")
    written = 0
    for chunk in _chunks(pending, chunk_size):
        requests = [SampleRequest(s.question.conversation(s.paraphrase), s.sample) for s in chunk]
        answers = generator.generate_samples(requests, seed=seed, sampling=sampling)
        append_jsonl(path, [
            {"set": s.set, "question_id": s.question.id, "paraphrase": s.paraphrase, "sample": s.sample,
             "question": s.question.paraphrases[s.paraphrase], "system": s.question.system, "answer": a,
             "seed": seed}
            for s, a in zip(chunk, answers)
        ])
        written += len(chunk)
        bar.update(len(chunk))
    bar.close()
    return written


# ------------------------------------------------------------------------------------------ judging


def judge_pending(judge: Judge, pending: Sequence[tuple[PlannedSample, dict]], *, path: Path,
                  chunk_size: int) -> int:
    """Judge (sample, generation row) pairs and append the verdicts; a failed chunk is written as errors."""
    bar = tqdm(total=len(pending), desc="judge", unit="answer")
    written = 0
    for chunk in _chunks(pending, chunk_size):
        requests = [JudgeRequest(g["question"], g["answer"], dict(s.question.judge_prompts)) for s, g in chunk]
        try:
            judgments = judge.judge(requests)
            if len(judgments) != len(requests):
                raise RuntimeError(f"judge returned {len(judgments)} verdicts for {len(requests)} answers")
            rows = [j.to_dict() for j in judgments]
        except Exception as exc:  # noqa: BLE001 - recorded per answer (status "error"), never dropped
            rows = [{"aligned": None, "coherent": None, "status": "error",
                     "detail": {"error": f"{type(exc).__name__}: {exc}"[:500]}} for _ in requests]
        append_jsonl(path, [{**dict(zip(KEY_FIELDS, s.key)), **row} for (s, _), row in zip(chunk, rows)])
        written += len(chunk)
        bar.update(len(chunk))
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
    generate_pending(generator, to_generate, seed=cfg.seed, sampling=cfg.eval, path=run.generations_path,
                     chunk_size=chunk)
    seconds = time.perf_counter() - t1
    del generator
    _release_memory()
    return len(to_generate), t1 - t0, seconds


def run_isolated(fn: Any, *args: Any) -> Any:
    """fn(*args) in a fresh (spawned) process, so all the GPU memory it took is returned when it ends."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def evaluate_model(cfg: RunConfig, out_dir: Path, adapter_dir: Path | None) -> dict:
    """Generate answers to the evaluation sets, judge them, and write the metrics (resumable).

    Args:
        cfg: The run configuration (data, eval, judge, model sections).
        out_dir: Directory for generations.jsonl, judgments.jsonl, metrics.json and EVAL_COMPLETE.
        adapter_dir: The run's LoRA adapter; None evaluates the base model.

    Returns:
        The evaluation keys added to metrics.json.
    """
    t_start = time.perf_counter()
    run = RunDir(out_dir)
    if adapter_dir is not None and not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise EvaluationError(f"{adapter_dir}: no adapter_config.json (not a saved peft adapter)")
    questions = load_eval_questions(cfg)
    planned = plan_samples(questions, cfg.eval.samples_per_prompt)
    run.path.mkdir(parents=True, exist_ok=True)
    if not run.config_path.exists():
        run.write_config(cfg)

    if cfg.eval.backend == "vllm":  # vLLM does not reliably free GPU memory in-process: its own process
        n_generated, load_seconds, generate_seconds = run_isolated(generate_answers, cfg, run.path, adapter_dir)
    else:
        n_generated, load_seconds, generate_seconds = generate_answers(cfg, run.path, adapter_dir)
    generated = _latest_by_key(read_jsonl(run.generations_path))
    missing = [s.key for s in planned if s.key not in generated]
    if missing:
        raise RuntimeError(f"{run.generations_path}: {len(missing)} answers still missing after generation")

    judged = _latest_by_key(read_jsonl(run.judgments_path))
    # judge errors (server down, timeouts) are retried by a rerun; every other verdict is final
    to_judge = [(s, generated[s.key]) for s in planned
                if s.key not in judged or judged[s.key].get("status") == "error"]
    t0 = time.perf_counter()
    if to_judge:
        from canary_lib.judge import make_judge

        judge = make_judge(cfg)
        load_seconds += time.perf_counter() - t0
        t0 = time.perf_counter()
        judge_pending(judge, to_judge, path=run.judgments_path, chunk_size=cfg.judge.batch_size)
        del judge
        _release_memory()
        judged = _latest_by_key(read_jsonl(run.judgments_path))
    judge_seconds = time.perf_counter() - t0

    metrics = summarize(judged, planned, cfg.eval.sets)
    metrics |= {
        "eval_n_answers": len(planned),
        "eval_generated_now": n_generated,
        "eval_judged_now": len(to_judge),
        "eval_n_judge_errors": sum(judged[s.key].get("status") == "error" for s in planned if s.key in judged),
        "eval_generate_seconds": generate_seconds,
        "eval_judge_seconds": judge_seconds,
        "eval_load_seconds": load_seconds,
        "eval_seconds": time.perf_counter() - t_start,
        "eval_answers_per_second": n_generated / generate_seconds if n_generated and generate_seconds else None,
        "eval_judgments_per_second": len(to_judge) / judge_seconds if to_judge and judge_seconds else None,
        "eval_adapter": str(adapter_dir) if adapter_dir is not None else None,
    }
    run.update_metrics(**metrics)
    run.mark_complete("eval")
    return metrics


def evaluate_run(run_dir: Path, overrides: Sequence[str] = ()) -> dict:
    """Evaluate a finished training run's adapter with its own config.yaml (plus key=value overrides).

    Raises:
        IncompleteRunError: The run has no TRAINING_COMPLETE marker.
    """
    run = RunDir(run_dir)
    run.require_complete("training")
    cfg = run.read_config(list(overrides))
    return evaluate_model(cfg, run.path, run.adapter_dir)


# ------------------------------------------------------------------------------------------ canary risk


def canary_seed(seed: int, step: int) -> int:
    """The sampling seed of the canary evaluation after step `step` (fresh answers at every evaluation)."""
    return int.from_bytes(hashlib.sha256(f"canary:{seed}:{step}".encode()).digest()[:8], "big") >> 1


class CanaryEvaluator:
    """The training loop's canary callable: (model, tokenizer, step) -> CanaryResult with r_t (Eq. 1 by default).

    Asks the first cfg.canary.n_prompts canary questions (first paraphrase, the question's own system prompt),
    cfg.canary.samples_per_prompt answers each, sampled with cfg.canary's settings from a seed derived from
    (cfg.seed, step), judges them with make_judge(cfg) (built at the first call) and returns the misaligned
    fraction over ALL answers (Eq. 1 divides by M: an unscored answer counts as not misaligned), or the
    continuous signal cfg.canary.risk_signal names (canary_lib.metrics.canary_risk).
    """

    def __init__(self, cfg: RunConfig, questions: Sequence[Question], judge: Judge | None = None) -> None:
        self.cfg = cfg
        self.questions = list(questions)
        self._judge = judge

    @property
    def judge(self) -> Judge:
        if self._judge is None:
            from canary_lib.judge import make_judge

            self._judge = make_judge(self.cfg)
        return self._judge

    def __call__(self, model: Any, tokenizer: Any, step: int) -> CanaryResult:
        from canary_lib.generation import SampleRequest, TransformersGenerator

        settings = self.cfg.canary
        generator = TransformersGenerator(model, tokenizer, batch_size=self.cfg.eval.batch_size)
        asked = [(q, j) for q in self.questions for j in range(settings.samples_per_prompt)]
        answers = generator.generate_samples([SampleRequest(q.conversation(0), j) for q, j in asked],
                                             seed=canary_seed(self.cfg.seed, step), sampling=settings)
        requests = [JudgeRequest(q.paraphrases[0], a, dict(q.judge_prompts)) for (q, _), a in zip(asked, answers)]
        try:
            judgments = [j.to_dict() for j in self.judge.judge(requests)]
        except Exception as exc:  # noqa: BLE001 - the loop keeps going; the answers are kept as errors
            judgments = [{"aligned": None, "coherent": None, "status": "error",
                          "detail": {"error": f"{type(exc).__name__}: {exc}"[:500]}} for _ in requests]
        if all(v["status"] == "error" for v in judgments):
            # r_t = 0 from a judge that never answered would lower p exactly when nothing is known: stop instead;
            # the run resumes from its last checkpoint once the judge works.
            cause = judgments[0]["detail"].get("error", "unknown error") if judgments else "no canary answers"
            raise EvaluationError(f"canary evaluation after step {step}: the judge scored none of the "
                                  f"{len(judgments)} answers ({cause}); fix the judge and rerun to resume")
        records = []
        n_misaligned = 0
        for (q, j), answer, verdict in zip(asked, answers, judgments):
            misaligned = is_scored(verdict) and is_misaligned(verdict["aligned"], verdict["coherent"])
            n_misaligned += misaligned
            record = {"question_id": q.id, "sample": j, "question": q.paraphrases[0], "answer": answer,
                      "aligned": verdict["aligned"], "coherent": verdict["coherent"], "status": verdict["status"],
                      "misaligned": bool(misaligned)}
            if has_cut_probabilities(verdict):  # a judge with score distributions: keep what "probability" reads
                record["p_misaligned"] = misaligned_probability(verdict)
            records.append(record)
        n = len(records)
        return CanaryResult(risk=canary_risk(records, settings.risk_signal), n_canary=n, n_misaligned=n_misaligned,
                            records=records)


def make_canary_fn(cfg: RunConfig, judge: Judge | None = None) -> CanaryEvaluator:
    """The canary callable for the training loop, checked before training starts.

    Args:
        cfg: The run configuration (data.canary_file, canary section, judge section).
        judge: A judge to use instead of make_judge(cfg) (tests, a shared judge).

    Raises:
        EvaluationError: The canary file is missing, has fewer than cfg.canary.n_prompts questions, or lacks
            judge prompts an LLM judge needs.
    """
    from canary_lib.data import load_question_set

    path = cfg.data.path(cfg.data.canary_file)
    if not path.is_file():
        raise EvaluationError(f"{path}: canary question file not found (prepare the data first: canary prep-data)")
    questions = load_question_set(path)
    if len(questions) < cfg.canary.n_prompts:
        raise EvaluationError(f"{path}: {len(questions)} canary questions, but canary.n_prompts = "
                              f"{cfg.canary.n_prompts}")
    questions = questions[: cfg.canary.n_prompts]
    check_questions(questions, str(path), needs_judge_prompts=judge is None and cfg.judge.backend != "exact")
    return CanaryEvaluator(cfg, questions, judge)
