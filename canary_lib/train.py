"""Algorithm 1: rs-LoRA fine-tuning on D_T with safe batches from D_S interleaved at the rate p_t.

    metrics = train_from_config(cfg, Path("runs/organism/canary/seed0"))   # or: canary train PARAMS --out DIR

One step of the loop is one optimizer step on `train.batch_size` examples of one source:

    p_t = schedule.p(t) -> planner draws u: safe batch (u < p_t) or the next target batch (T -= 1)
    -> forward/backward over micro-batches (gradient accumulation) -> AdamW step with lr_at(...)
    -> steps.csv row -> if t mod K == 0: canary_fn(model) -> schedule.observe(t, r_t) -> controller.csv row
    -> checkpoint every train.checkpoint_every steps; stop when T == 0.

The run directory (canary_lib.artifacts.RunDir) is resumable: the same call on the same directory continues
from the last checkpoint and writes the same steps.csv and controller.csv as an uninterrupted run. Choices
(lr horizon, loss normalisation, what is timed, checkpoint layout) are documented in docs/training.md.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from canary_lib.artifacts import (
    CONTROLLER_COLUMNS,
    STEPS_COLUMNS,
    RunDir,
    append_jsonl,
    read_jsonl,
    write_csv_atomic,
    write_text_atomic,
)
from canary_lib.binding import check_training, check_training_directory, ensure_run_directory
from canary_lib.chat import EncodedChat, encode_chat, read_chat_jsonl
from canary_lib.checkpoints import (  # noqa: F401 - CheckpointError, LoopState: re-exported (were defined here)
    CheckpointError,
    LoopState,
    check_canary_answers,
    find_checkpoint,
    load_checkpoint,
    read_checkpoint_state,
    refuse_partial_checkpoint,
    save_checkpoint,
)
from canary_lib.config_loader import write_run_config
from canary_lib.config_schema import RunConfig, dump_config
from canary_lib.data.errors import DataError
from canary_lib.fileio import sha256_file
from canary_lib.graceful_stop import StopRequest, maybe_send_test_signal
from canary_lib.job_progress import ProgressFile
from canary_lib.judge_usage import usage_metrics, usage_sum
from canary_lib.methods import METHODS, make_schedule
from canary_lib.planner import SAFE, TARGET, StepPlanner, constant_p_safe_steps
from canary_lib.rundir_lock import hold_run_directory
from canary_lib.snapshots import SNAPSHOTS_DIR, save_snapshot, snapshot_due
from canary_lib.tracking import controller_values, open_tracker, step_values
from canary_lib.train_step import make_optimizer, optimizer_step, train_step  # noqa: F401 - re-exported (were here)
from canary_lib.types import CanaryFn, CanaryResult

KILL_AFTER_STEP_ENV = "CANARY_KILL_AFTER_STEP"
"""Test hook: SIGKILL this process right after the given step (after its checkpoint, if one is due)."""


class TrainingDataError(DataError):
    """The training data cannot be used (missing or empty file, malformed line)."""


# ---------------------------------------------------------------------------------------------- pure parts


def lr_at(step: int, target_remaining: int, n_target_batches: int, base_lr: float, warmup_steps: int) -> float:
    """Learning rate of optimizer step `step`, drawn while `target_remaining` target batches are still to come.

    Linear warm-up over the first `warmup_steps` optimizer steps, times a linear decay driven by target
    progress, T / T0. Safe steps do not move T, so they take the lr of the next target step: every method
    trains its k-th target batch with the same lr, and the last target batch gets base_lr / T0 (then 0),
    as a linear schedule over the run's target batches would, however many safe steps were added.

    Args:
        step: 0-based index of the optimizer step.
        target_remaining: T *before* this step is drawn (1..T0).
        n_target_batches: T0, the number of target batches of the run (train.epochs passes over D_T).
        base_lr: Peak learning rate.
        warmup_steps: Linear warm-up length in optimizer steps (0: none).
    """
    if n_target_batches < 1 or not 0 <= target_remaining <= n_target_batches:
        raise ValueError(f"target_remaining {target_remaining} outside [0, {n_target_batches}]")
    warmup = min(1.0, (step + 1) / (warmup_steps + 1))
    return base_lr * warmup * (target_remaining / n_target_batches)


def read_training_chats(path: Path) -> list[list[dict[str, str]]]:
    """D_T or D_S: a prepared messages-format JSONL, each chat checked by the package's one chat validator."""
    if not path.is_file():
        raise TrainingDataError(f"{path}: training data file not found (prepare the data first: canary prep-data)")
    try:
        return read_chat_jsonl(path, "training data")
    except DataError as exc:
        raise TrainingDataError(str(exc)) from None


def select_target_subset(n: int, max_examples: int | None, seed: int) -> list[int]:
    """Indices of the D_T examples used: all of them, or a seeded sample of `max_examples`."""
    if max_examples is None or max_examples >= n:
        return list(range(n))
    return random.Random(f"{seed}-max-target-examples").sample(range(n), max_examples)


def load_training_data(cfg: RunConfig) -> tuple[list, list]:
    """(D_T, D_S) as lists of conversations; D_S is empty only for a method that never draws from it
    (`MethodSpec.needs_safe_data`) when the file is absent."""
    target_all = read_training_chats(cfg.data.path(cfg.data.target_file))
    target = [target_all[i] for i in select_target_subset(len(target_all), cfg.train.max_target_examples, cfg.seed)]
    safe_path = cfg.data.path(cfg.data.safe_file)
    if not METHODS[cfg.method.name].needs_safe_data and not safe_path.exists():
        return target, []
    return target, read_training_chats(safe_path)


def encode_training_chats(data: dict[str, list], tokenizer: Any, max_length: int) -> dict[str, list[EncodedChat]]:
    """Every training example encoded once, before the model loads; the loop trains on these ids.

    `encode_chat` is a pure function of (chat, tokenizer, max_length), so encoding once gives the ids that encoding
    at every step that draws the example would give (about 3 passes over D_T), without the repeated work.

    Raises:
        TrainingDataError: an example has no supervised (assistant) token left after truncation at max_length
            (its prompt fills the window, so it would add nothing but a loss of 0 to its batch); the message
            names the count per source, the first such example and max_length.
    """
    encoded = {source: [encode_chat(chat, tokenizer, max_length) for chat in chats] for source, chats in data.items()}
    empty = {source: [i for i, ex in enumerate(exs) if ex.n_supervised == 0] for source, exs in encoded.items()}
    n_empty, n_all = sum(map(len, empty.values())), sum(map(len, data.values()))
    if n_empty:
        first = next((source, idx[0]) for source, idx in empty.items() if idx)
        counts = ", ".join(f"{source}: {len(idx)} of {len(data[source])}" for source, idx in empty.items() if idx)
        raise TrainingDataError(
            f"{n_empty} of {n_all} training examples have no supervised token left after truncation at "
            f"model.max_length = {max_length} ({counts}; e.g. {first[0]} example {first[1]}): they would train on "
            "nothing; raise model.max_length or drop those examples"
        )
    return encoded


def _tokenizer_and_window(cfg: RunConfig) -> tuple[Any, int]:
    """The model's tokenizer and the tokens one example may have (model.max_length, at most the model's
    positions), read without loading the weights."""
    from transformers import AutoConfig

    from canary_lib.models import load_tokenizer, resolve_model_path

    path = resolve_model_path(cfg)
    config = AutoConfig.from_pretrained(
        path, revision=cfg.model.revision, trust_remote_code=cfg.model.trust_remote_code
    )
    positions = getattr(config, "max_position_embeddings", None) or 1 << 30
    return load_tokenizer(path, cfg.model), min(cfg.model.max_length, positions)


# ---------------------------------------------------------------------------------------------- canaries, files


def run_canary(canary_fn: CanaryFn, model: Any, tokenizer: Any, step: int) -> tuple[CanaryResult, float]:
    """Call the canary evaluation in eval mode without gradients; returns its result and wall seconds.

    The call runs under a forked torch RNG, so whatever sampling it does never shifts the training's random
    stream (dropout), with or without canaries.
    """
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    start = time.perf_counter()
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            result = canary_fn(model, tokenizer, step)
    finally:
        model.train()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def _run_fingerprint(cfg: RunConfig, data_files: list[Path]) -> dict:
    """What must not change between a checkpoint and its resumption."""
    return {
        "config": dump_config(cfg.model_copy(update={"provenance": {}})),
        "data": {str(p): sha256_file(p) for p in data_files if p.exists()},
    }


def _start_fresh(run: RunDir) -> None:
    """Remove what an earlier, unfinished attempt left behind (no checkpoint to resume from)."""
    for path in (run.steps_path, run.controller_path, run.canary_answers_path, run.metrics_path):
        path.unlink(missing_ok=True)
    for path in (run.adapter_dir, run.checkpoint_dir, run.path / "checkpoint.old", run.path / SNAPSHOTS_DIR):
        shutil.rmtree(path, ignore_errors=True)
    run.reset_stage("eval")


def _truncate_canary_answers(run: RunDir, last_step: int) -> None:
    """Drop canary answers recorded after the checkpoint (they will be recomputed)."""
    if run.canary_answers_path.exists():
        rows = [r for r in read_jsonl(run.canary_answers_path) if r.get("step", -1) <= last_step]
        write_text_atomic(run.canary_answers_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def _save_adapter(model: Any, run: RunDir) -> None:
    tmp = Path(tempfile.mkdtemp(dir=run.path, prefix=".adapter-"))
    model.save_pretrained(tmp, safe_serialization=True)
    shutil.rmtree(run.adapter_dir, ignore_errors=True)
    os.replace(tmp, run.adapter_dir)


def _maybe_kill(step: int) -> None:
    if os.environ.get(KILL_AFTER_STEP_ENV) == str(step):
        os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------------------------------- the loop


def train_from_config(cfg: RunConfig, out_dir: Path, canary_fn: CanaryFn | None = None) -> dict:
    """Train one run (one method x one seed) with Algorithm 1 into `out_dir`, resuming if it holds a checkpoint.

    Args:
        cfg: The resolved run configuration.
        out_dir: The run directory (created if needed).
        canary_fn: Canary evaluation, called after step t when t mod K == 0 (model, tokenizer, step -> result).
            Built from cfg with canary_lib.evaluate.make_canary_fn when needed and not given. It is not needed
            for open-loop methods with canary.monitor_open_loop = false.

    Returns:
        The metrics written to metrics.json.

    Raises:
        RunDirectoryBusyError: another process trains or evaluates `out_dir` (one owner per run directory).
    """
    ensure_run_directory(Path(out_dir))
    with hold_run_directory(out_dir, "training"):
        stop = StopRequest.install()  # Ctrl-C / SIGTERM from here on: stop between steps, checkpoint, one line
        try:
            return _train_held(cfg, out_dir, canary_fn, stop)
        finally:
            stop.uninstall()


def _train_held(cfg: RunConfig, out_dir: Path, canary_fn: CanaryFn | None, stop: StopRequest) -> dict:
    """train_from_config's work, while this process holds the run directory."""
    run = RunDir(out_dir)
    ensure_run_directory(run.path)
    if run.is_complete("training"):
        check_training(run, cfg)  # a finished run is reused only for the configuration that made it
        print(f"{run.path}: training already complete; not retrained (delete the directory to train again)")
        return run.read_metrics()
    check_training_directory(run, cfg)  # another kind of results, or another run: refused before any deletion
    run.read_metrics()  # a damaged metrics.json is refused now, not when the finished run writes its metrics

    # Refuse bad input before anything expensive: data, reference run (for replays), canary setup.
    target, safe = load_training_data(cfg)
    schedule = make_schedule(cfg)
    planner = StepPlanner(
        n_target=len(target),
        n_safe=len(safe),
        batch_size=cfg.train.batch_size,
        K=cfg.controller.K,
        seed=cfg.seed,
        epochs=cfg.train.epochs,
    )
    if METHODS[cfg.method.name].safe_budget:
        planner.safe_budget = constant_p_safe_steps(
            cfg.method.safe_budget_p, seed=cfg.seed, n_target_batches=planner.n_target_batches
        )
    if canary_fn is None and (schedule.uses_canary or cfg.canary.monitor_open_loop):
        from canary_lib.evaluate import make_canary_fn  # the evaluation stack; only needed with canaries

        canary_fn = make_canary_fn(cfg)
    if not schedule.uses_canary and not cfg.canary.monitor_open_loop:
        canary_fn = None
    run.path.mkdir(parents=True, exist_ok=True)
    run.remove_temporaries()  # what a killed save left behind
    fingerprint = _run_fingerprint(cfg, [cfg.data.path(cfg.data.target_file), cfg.data.path(cfg.data.safe_file)])
    checkpoint = find_checkpoint(run)
    checkpoint_state = None
    if checkpoint is None:
        refuse_partial_checkpoint(run)  # a checkpoint folder without state.json is damage, not "no checkpoint"
    if checkpoint is not None:  # checked before the model loads
        check_training(run, cfg)
        checkpoint_state = read_checkpoint_state(checkpoint, fingerprint)
        check_canary_answers(run, checkpoint_state)

    from canary_lib.models import add_rslora, check_model_source, choose_device, load_model_and_tokenizer

    check_model_source(cfg.model)
    chats = encode_training_chats({"D_T": target, "D_S": safe}, *_tokenizer_and_window(cfg))  # before the model
    encoded = {TARGET: chats["D_T"], SAFE: chats["D_S"]}
    from canary_lib.memory import check_found_device

    check_found_device(cfg, choose_device(cfg.model))  # the estimate against the GPU found (canary_lib/memory.py)

    wall_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    model, tokenizer = load_model_and_tokenizer(cfg)
    model = add_rslora(model, cfg.lora, seed=cfg.seed)
    model.train()
    optimizer = make_optimizer(model, cfg.train)

    if checkpoint is not None:
        loop = load_checkpoint(
            checkpoint, checkpoint_state, model=model, optimizer=optimizer, planner=planner, schedule=schedule
        )
        _truncate_canary_answers(run, last_step=planner.step - 1)
        print(f"{run.path}: resuming after step {planner.step - 1} (T = {planner.target_remaining})")
    else:
        _start_fresh(run)
        write_run_config(run, cfg)
        loop = LoopState()

    risk_ema = loop.controller[-1]["risk_ema"] if loop.controller else 0.0
    tracker = open_tracker(cfg, run.path, resume_step=planner.step, fresh=checkpoint is None)
    step_fn = train_step
    if cfg.train.step == "lean":  # canary_lib.lean: the same step up to float rounding, less work
        from canary_lib.lean import lean_train_step

        step_fn = lean_train_step
    bar = tqdm(
        total=planner.n_target_batches,
        initial=planner.n_target_batches - planner.target_remaining,
        desc=f"{cfg.method.name} seed {cfg.seed}",
        unit="target batch",
        dynamic_ncols=True,
    )
    progress = ProgressFile(
        "train",
        planner.n_target_batches,  # the sweep's status line (job_progress)
        initial=planner.n_target_batches - planner.target_remaining,
    )
    try:
        if stop.signum is not None:  # asked to stop while loading: no step of this session to finish or save
            raise stop.error(run.path, None)
        while (planned := planner.next_step(schedule.p(planner.step))) is not None:
            # one step of Algorithm 1: a batch of exactly the drawn source, one optimizer step
            start = time.perf_counter()
            batch = [encoded[planned.source][i] for i in planned.indices]
            loop.n_unsupervised_examples += sum(1 for ex in batch if ex.n_supervised == 0)
            lr = lr_at(
                planned.step,
                planned.target_remaining + (planned.source == TARGET),
                planner.n_target_batches,
                cfg.train.lr,
                cfg.train.warmup_steps,
            )
            loss = step_fn(
                model,
                optimizer,
                batch,
                lr=lr,
                micro_batch_size=cfg.train.micro_batch_size,
                pad_token_id=tokenizer.pad_token_id,
                max_grad_norm=cfg.train.max_grad_norm,
                autocast=cfg.train.autocast,
            )
            loop.train_seconds += time.perf_counter() - start
            loop.steps.append(
                {
                    "step": planned.step,
                    "source": planned.source,
                    "p": planned.p,
                    "target_remaining": planned.target_remaining,
                    "loss": loss,
                    "lr": lr,
                }
            )
            tracker.log(step_values(loop.steps[-1]), planned.step)

            # every K steps: measure the canary risk; the controller's new p applies from the next step on
            if planned.canary_after and canary_fn is not None:
                result, seconds = run_canary(canary_fn, model, tokenizer, planned.step)
                loop.canary_seconds += seconds
                update = schedule.observe(planned.step, result.risk)
                risk_ema = update.risk_ema
                loop.controller.append(
                    {
                        **update.as_dict(),
                        "n_canary": result.n_canary,
                        "n_misaligned": result.n_misaligned,
                        "seconds": seconds,
                        "n_judge_errors": result.n_judge_errors,
                        "n_unscored": max(result.n_unscored, result.n_judge_errors),
                    }
                )
                append_jsonl(run.canary_answers_path, [{**r, "step": planned.step} for r in result.records])
                loop.canary_judge_usage = usage_sum(loop.canary_judge_usage, getattr(result, "judge_usage", {}))
                tracker.log(controller_values(loop.controller[-1]), planned.step)
            if planned.canary_after and snapshot_due(cfg.train.snapshot_every, planned.step, cfg.controller.K):
                save_snapshot(model, run.path, planned.step)

            if (planned.step + 1) % cfg.train.checkpoint_every == 0 or planner.done:
                start = time.perf_counter()
                save_checkpoint(
                    run,
                    model=model,
                    optimizer=optimizer,
                    planner=planner,
                    schedule=schedule,
                    loop=loop,
                    fingerprint=fingerprint,
                )
                tracker.flush()
                loop.checkpoint_seconds += time.perf_counter() - start
            bar.update(int(planned.source == TARGET))
            progress.update(planner.n_target_batches - planner.target_remaining)
            bar.set_postfix(
                step=planned.step,
                src=planned.source,
                p=f"{planned.p:.3f}",
                loss=f"{loss:.3f}",
                r_hat=f"{risk_ema:.3f}",
                refresh=False,
            )
            _maybe_kill(planned.step)
            maybe_send_test_signal(planned.step)
            if stop.signum is not None and not planner.done:
                if (planned.step + 1) % cfg.train.checkpoint_every != 0:  # not written above
                    save_checkpoint(
                        run,
                        model=model,
                        optimizer=optimizer,
                        planner=planner,
                        schedule=schedule,
                        loop=loop,
                        fingerprint=fingerprint,
                    )
                raise stop.error(run.path, planned.step)
        metrics = _finish(run, cfg, model, loop, wall_start, safe_budget=planner.safe_budget)
        tracker.log_summary(metrics)
    finally:  # a stop (judge failure, crash) leaves the bar closed, so the error starts its own line
        bar.close()
        tracker.close()

    if not cfg.train.keep_checkpoint:
        shutil.rmtree(run.checkpoint_dir, ignore_errors=True)
    return metrics


def _finish(
    run: RunDir, cfg: RunConfig, model: Any, loop: LoopState, wall_start: float, safe_budget: int | None = None
) -> dict:
    """Adapter, final CSVs and metrics (with the safe budget of a budgeted method), then the completion marker."""
    _save_adapter(model, run)
    write_csv_atomic(run.steps_path, loop.steps, STEPS_COLUMNS)
    write_csv_atomic(run.controller_path, loop.controller, CONTROLLER_COLUMNS)
    n_steps = len(loop.steps)
    n_safe = sum(1 for row in loop.steps if row["source"] == SAFE)
    timed = loop.train_seconds + loop.canary_seconds
    metrics = run.update_metrics(
        n_steps=n_steps,
        n_safe_steps=n_safe,
        n_target_steps=n_steps - n_safe,
        avg_p=sum(row["p"] for row in loop.steps) / n_steps,
        n_canary_evals=len(loop.controller),
        n_canary_judge_errors=sum(row.get("n_judge_errors") or 0 for row in loop.controller),
        n_canary_unscored=sum(row.get("n_unscored") or 0 for row in loop.controller),
        final_p=loop.controller[-1]["p_after"] if loop.controller else loop.steps[-1]["p"],
        train_seconds=loop.train_seconds,
        canary_seconds=loop.canary_seconds,
        checkpoint_seconds=loop.checkpoint_seconds,
        seconds_per_step=loop.train_seconds / n_steps,
        canary_share=loop.canary_seconds / timed if timed else 0.0,
        session_wall_seconds=time.perf_counter() - wall_start,
        n_unsupervised_examples=loop.n_unsupervised_examples,
        **usage_metrics("canary", usage_sum(loop.canary_judge_usage)),
        **({} if safe_budget is None else {"safe_budget": safe_budget}),
    )
    run.mark_complete("training")
    return metrics
