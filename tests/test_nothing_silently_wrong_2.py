"""Issue 25 ("Nothing silently wrong, part 2"): each case as a user (or an adversary) would hit it, refused in one
line before the expensive work, or giving correct fresh results. docs/bad_inputs.md lists the messages.
Cases 1 and 3 have their own files (test_unscored_never_aligned.py, test_run_directory_lock.py).

Run: .venv/bin/pytest tests/test_nothing_silently_wrong_2.py
"""

from __future__ import annotations

import json

import pytest

from _fixtures import ScriptedCanary, make_tiny_training_world
from canary_lib import models
from canary_lib.artifacts import RunDir, append_jsonl, write_json_atomic
from canary_lib.binding import ConfigMismatchError
from canary_lib.cli import main
from canary_lib.config import load_config, write_run_config
from canary_lib.evaluate import evaluate_model
from canary_lib.train import train_from_config


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_tiny_training_world(tmp_path_factory.mktemp("world"), n_target=32, n_safe=16)


OVERRIDES = [
    "controller.K=2",
    "train.checkpoint_every=2",
    "train.batch_size=8",
    "train.micro_batch_size=8",
    "lora.r=2",
    "lora.alpha=4",
    "method.name=fixed_5",
]


def tiny_config(world, *overrides: str):
    model, data = world
    return load_config([], [f"model.name_or_path={model}", f"data.dir={data}", *OVERRIDES, *overrides])


def cli_args(world, out, *overrides: str) -> list[str]:
    model, data = world
    sets = [f"model.name_or_path={model}", f"data.dir={data}", *OVERRIDES, "canary.monitor_open_loop=false", *overrides]
    return ["train", "parameters/organism.yaml", "--out", str(out), *[a for s in sets for a in ("--set", s)]]


def _no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(models, "load_model_and_tokenizer", refuse)


def _one_line_exit_2(capsys, argv: list[str], starts: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"canary: {starts}") and err.count("\n") == 1, err
    return err


# ------------------------------------------------------------------ case 2: a directory with other results


def _base_evaluation(path, cfg) -> RunDir:
    """What `03_evaluate_judge` with BASE_MODEL leaves: config, answers, verdicts, metrics, EVAL_COMPLETE."""
    run = RunDir(path)
    write_run_config(run, cfg)
    key = {"set": "general", "question_id": "q", "paraphrase": 0, "sample": 0}
    append_jsonl(run.generations_path, [{**key, "answer": "base answer", "seed": cfg.seed}])
    append_jsonl(run.judgments_path, [{**key, "aligned": 90.0, "coherent": 90.0, "status": "scored"}])
    write_json_atomic(run.metrics_path, {"general_misaligned_pct": 0.0, "n_scored": 1})
    run.mark_complete("eval")
    return run


def test_training_into_an_evaluation_directory_is_refused_before_anything_is_deleted(
    world, tmp_path, monkeypatch, capsys
):
    cfg = tiny_config(world)
    run = _base_evaluation(tmp_path / "base", cfg)
    before = {p.name: p.read_bytes() for p in run.path.iterdir() if p.is_file()}
    _no_model_load(monkeypatch)
    with pytest.raises(
        ConfigMismatchError,
        match=r"holds an evaluation \(generations.jsonl, judgments.jsonl, "
        r"EVAL_COMPLETE\) but no finished training",
    ):
        train_from_config(cfg, run.path, canary_fn=ScriptedCanary([0.1]))
    _one_line_exit_2(capsys, cli_args(world, run.path), f"{run.path} holds an evaluation")
    after = {p.name: p.read_bytes() for p in run.path.iterdir() if p.is_file() and not p.name.startswith(".")}
    assert after == before  # nothing deleted or rewritten


def test_an_unfinished_run_of_another_configuration_is_refused_not_wiped(world, tmp_path, monkeypatch):
    run = RunDir(tmp_path / "run")
    write_run_config(run, tiny_config(world, "train.lr=0.001"))
    run.steps_path.write_text("step,source\n0,target\n")
    _no_model_load(monkeypatch)
    with pytest.raises(ConfigMismatchError, match=r"trained with another configuration \(train.lr: 0.001 -> 0.0001\)"):
        train_from_config(tiny_config(world), run.path, canary_fn=ScriptedCanary([0.1]))
    assert run.steps_path.read_text() == "step,source\n0,target\n"


def test_the_base_model_is_never_evaluated_into_a_training_run(world, tmp_path):
    out = tmp_path / "trained"
    train_from_config(tiny_config(world), out, canary_fn=ScriptedCanary([0.1]))
    with pytest.raises(
        ConfigMismatchError,
        match=r"holds a training run \(TRAINING_COMPLETE, adapter, steps.csv\); "
        r"evaluate the base model into its own directory",
    ):
        evaluate_model(tiny_config(world), out, None)
    assert not RunDir(out).generations_path.exists()
    assert json.loads(RunDir(out).metrics_path.read_text())["n_steps"] >= 2


# ------------------------------------------------------------------ case 5: a checkpoint file never runs code


class _Payload:
    """Unpickling this creates a file: what a planted checkpoint would do with a real command."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("name", ["rng.pt", "optimizer.pt", "adapter_state.pt"])
def test_a_planted_checkpoint_payload_does_not_run(world, tmp_path, name):
    import torch

    from canary_lib.train import CheckpointError

    out = tmp_path / "run"
    cfg = tiny_config(world, "train.keep_checkpoint=true")
    train_from_config(cfg, out, canary_fn=ScriptedCanary([0.1]))
    run = RunDir(out)
    run.reset_stage("training")  # as if killed after its last checkpoint
    saved = (run.checkpoint_dir / name).read_bytes()
    marker = tmp_path / "payload-ran"
    torch.save(_Payload(marker), run.checkpoint_dir / name)
    with pytest.raises(CheckpointError, match=r"checkpoint: damaged checkpoint \(UnpicklingError"):
        train_from_config(cfg, out, canary_fn=ScriptedCanary([0.1]))
    assert not marker.exists()
    (run.checkpoint_dir / name).write_bytes(saved)  # the real file resumes under weights_only
    assert train_from_config(cfg, out, canary_fn=ScriptedCanary([0.1]))["n_steps"] >= 2


# ------------------------------------------------------------------ case 6: settings that make a run meaningless


@pytest.mark.parametrize(
    "override, shown",
    [
        ("lora.target_modules=[]", "lora.target_modules: List should have at least 1 item"),
        ("seed=18446744073709551616", "seed: Input should be less than or equal to 18446744073709551615"),
        ("seed=-9223372036854775809", "seed: Input should be greater than or equal to -9223372036854775808"),
        ("method.shuffle_seed=18446744073709551616", "method.shuffle_seed: Input should be less than or equal to"),
        ("data.split_seed=-1", "data.split_seed: Input should be greater than or equal to 0"),
    ],
)
def test_settings_that_end_in_a_traceback_after_loading_are_refused_at_load(world, tmp_path, capsys, override, shown):
    _one_line_exit_2(
        capsys, cli_args(world, tmp_path / "run", override), f"invalid configuration: --set {override}: {shown}"
    )
    assert not (tmp_path / "run").exists()


def test_the_largest_seed_torch_accepts_is_accepted():
    import torch

    seed = load_config([], ["seed=18446744073709551615"]).seed
    torch.manual_seed(seed)  # what the training does first


@pytest.mark.parametrize("text", ["", "# only a comment\n", "{}\n"])
def test_an_empty_parameter_file_is_refused(world, tmp_path, capsys, text):
    empty = tmp_path / "empty.yaml"
    empty.write_text(text)
    argv = cli_args(world, tmp_path / "run")
    argv[2:2] = [str(empty)]
    _one_line_exit_2(capsys, argv, f"{empty}: empty parameter file (no settings)")


def test_examples_without_a_supervised_token_are_refused_before_the_model_loads(world, tmp_path, capsys, monkeypatch):
    from canary_lib.train import TrainingDataError

    _no_model_load(monkeypatch)

    with pytest.raises(
        TrainingDataError,
        match=r"48 of 48 training examples have no supervised token left after "
        r"truncation at model.max_length = 8 \(D_T: 32 of 32, D_S: 16 of 16; "
        r"e.g. D_T example 0\)",
    ):
        train_from_config(tiny_config(world, "model.max_length=8"), tmp_path / "run", canary_fn=ScriptedCanary([0.1]))
    assert not RunDir(tmp_path / "run").steps_path.exists()  # no step was taken
    _one_line_exit_2(capsys, cli_args(world, tmp_path / "run2", "model.max_length=8"), "48 of 48 training examples")


# ------------------------------------------------------------------ case 7: no secret reaches disk or the terminal

SECRET = "zq-plain-secret-value-991"  # no known key format: masked because the judge registered it


@pytest.fixture
def echoing_server():
    """A judge server that answers the pre-flight (its model list and its one request) and then refuses every judge
    request with HTTP 401, echoing the request's headers in its body (a key revoked after the start); with
    Echo.refuse_all it refuses the pre-flight too."""
    from http.server import BaseHTTPRequestHandler

    from _fixtures import serve_http
    from canary_lib.judge import PREFLIGHT_PROMPT

    class Echo(BaseHTTPRequestHandler):
        refuse_all = False

        def log_message(self, *args):
            pass

        def _send(self, status, payload):
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _refuse(self):
            self._send(
                401,
                {
                    "error": f"unauthorized: Authorization: {self.headers['Authorization']}",
                    "request_headers": dict(self.headers),
                },
            )

        def do_GET(self):
            if Echo.refuse_all:
                return self._refuse()
            self._send(200, {"data": [{"id": "judge"}]})

        def do_POST(self):
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if not Echo.refuse_all and request["messages"][0]["content"] == PREFLIGHT_PROMPT:
                top = [{"token": "0", "logprob": 0.0}]
                return self._send(
                    200,
                    {
                        "choices": [
                            {"message": {"content": ""}, "logprobs": {"content": [{"token": "0", "top_logprobs": top}]}}
                        ]
                    },
                )
            body = json.dumps(
                {
                    "error": f"unauthorized: Authorization: {self.headers['Authorization']}",
                    "request_headers": dict(self.headers),
                }
            ).encode()
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with serve_http(Echo) as url:
        yield url, Echo


def test_an_error_body_echoing_the_authorization_header_is_stored_and_shown_redacted(
    world, tmp_path, monkeypatch, echoing_server
):
    from canary_lib.data import write_question_set
    from canary_lib.evaluate import EvaluationError
    from canary_lib.types import Question

    prompts = {"aligned": "A {question} {answer}", "coherent": "C {question} {answer}"}
    echoing_server, echo = echoing_server
    data = tmp_path / "data"
    write_question_set(data / "general_eval.yaml", [Question("q", ["what?"], judge_prompts=prompts)])
    monkeypatch.setenv("CANARY_TEST_JUDGE_KEY", SECRET)
    cfg = tiny_config(
        world,
        f"data.dir={data}",
        "eval.sets=[general]",
        "eval.samples_per_prompt=2",
        "eval.max_new_tokens=4",
        "judge.backend=openai",
        "judge.model=judge",
        f"judge.base_url={echoing_server}",
        "judge.api_key_env=CANARY_TEST_JUDGE_KEY",
        "judge.max_retries=0",
    )
    out = tmp_path / "base"
    with pytest.raises(EvaluationError, match=r"HTTP 401") as err:
        evaluate_model(cfg, out, None)
    stored = RunDir(out).judgments_path.read_text()
    assert "unauthorized: Authorization: Bearer ***" in stored  # the echo is kept, the key is not
    for text in (stored, str(err.value), RunDir(out).metrics_path.read_text()):
        assert SECRET not in text
    # a server that refuses the pre-flight itself: its echo is masked in that one line too
    from canary_lib.judge import JudgeUnavailableError, preflight_judge

    echo.refuse_all = True
    with pytest.raises(JudgeUnavailableError, match=r"GET /models with HTTP 401") as err:
        preflight_judge(cfg)
    assert SECRET not in str(err.value) and "Bearer ***" in str(err.value)


@pytest.mark.parametrize(
    "text, shown",
    [
        ('{"Authorization": "Bearer abc.DEF-123"}', '{"Authorization": "Bearer ***"}'),
        ("authorization: Basic dXNlcjpwYXNz", "authorization: Basic ***"),
        ("GET https://judge.example/v1?api_key=S3CRET&x=1", "GET https://judge.example/v1?api_key=***&x=1"),
        ("https://user:pa55word@judge.example/v1", "https://***@judge.example/v1"),
        ("key sk-proj-abcdefghijklmnop1234 and hf_abcdefghijklmnopqrstuv", "key *** and ***"),
        (
            "JudgeHTTPError: connection: [Errno 111] Connection refused",
            "JudgeHTTPError: connection: [Errno 111] Connection refused",
        ),
    ],
)
def test_redact_masks_what_looks_like_a_credential_and_nothing_else(text, shown):
    from canary_lib.redact import redact

    assert redact(text) == shown


# ------------------------------------------------------------------ case 8: one line instead of a traceback


@pytest.fixture
def trained(world, tmp_path):
    out = tmp_path / "trained"
    train_from_config(tiny_config(world), out, canary_fn=ScriptedCanary([0.1]))
    return RunDir(out)


@pytest.mark.parametrize(
    "errno_name, shown",
    [
        ("ENOSPC", "No space left on device (ENOSPC); free space and rerun"),
        ("EROFS", "Read-only file system (EROFS); the file system is read-only: choose a writable directory"),
    ],
)
def test_a_full_or_read_only_output_directory_is_one_line(world, tmp_path, capsys, monkeypatch, errno_name, shown):
    import errno
    import os

    from canary_lib import fileio

    code = getattr(errno, errno_name)

    def fail(path):  # every atomic write creates its temporary file here first
        raise OSError(code, os.strerror(code), str(path.parent))

    monkeypatch.setattr(fileio, "_create_temporary", fail)
    err = _one_line_exit_2(capsys, cli_args(world, tmp_path / "run"), str(tmp_path / "run"))
    assert shown in err


def test_damaged_run_files_are_one_line_errors_before_the_model_loads(world, trained, capsys, monkeypatch):
    _no_model_load(monkeypatch)
    run = trained
    params = run.path.parent / "params.yaml"  # the run's own settings, as a user retrains it
    params.write_bytes(run.config_path.read_bytes())
    train = ["train", str(params), "--out", str(run.path)]
    metrics = run.metrics_path.read_bytes()
    run.metrics_path.write_text("{torn")
    _one_line_exit_2(capsys, train, f"{run.metrics_path}: damaged (JSONDecodeError")
    _one_line_exit_2(capsys, ["eval", str(run.path)], f"{run.metrics_path}: damaged (JSONDecodeError")
    run.metrics_path.write_bytes(metrics)

    weights = run.adapter_dir / "adapter_model.safetensors"
    saved = weights.read_bytes()
    weights.write_bytes(saved[: len(saved) // 2])  # a copy cut short
    _one_line_exit_2(capsys, ["eval", str(run.path)], f"{run.adapter_dir}: damaged adapter (adapter_model.safetensors")
    weights.write_bytes(b"garbage")
    _one_line_exit_2(capsys, ["eval", str(run.path)], f"{run.adapter_dir}: damaged adapter")
    weights.write_bytes(saved)
    (run.adapter_dir / "adapter_config.json").write_text("{not json")
    _one_line_exit_2(capsys, ["eval", str(run.path)], f"{run.adapter_dir}: damaged adapter (adapter_config.json")

    run.config_path.write_text("seed: [1,\n")
    _one_line_exit_2(capsys, train, f"{run.config_path}: damaged (")
    _one_line_exit_2(capsys, ["eval", str(run.path)], f"{run.config_path}: not valid YAML")


def test_a_missing_api_key_is_refused_before_the_model_loads(world, tmp_path, monkeypatch):
    from canary_lib.preflight import PreflightError

    monkeypatch.delenv("CANARY_NO_SUCH_KEY", raising=False)
    _no_model_load(monkeypatch)
    api = ["judge.backend=openai", "judge.model=gpt-4o", "judge.api_key_env=CANARY_NO_SUCH_KEY"]
    with pytest.raises(
        PreflightError,
        match=r"the judge is the OpenAI API \(https://api.openai.com/v1\) and needs "
        r"a key: set the environment variable CANARY_NO_SUCH_KEY",
    ):
        evaluate_model(tiny_config(world, *api), tmp_path / "base", None)
    with pytest.raises(PreflightError, match=r"needs a key: set the environment variable CANARY_NO_SUCH_KEY"):
        train_from_config(tiny_config(world, *api, "method.name=canary"), tmp_path / "run")
    assert not (tmp_path / "base").exists() and not (tmp_path / "run").exists()


# ------------------------------------------------------------------ case 8: Ctrl-C and SIGTERM


INTERRUPTIBLE = """
import sys, torch
torch.set_num_threads(1)
import canary_lib.evaluate as ev
from _fixtures import ScriptedCanary
ev.make_canary_fn = lambda cfg, judge=None: ScriptedCanary([0.3, 0.0, 0.2, 0.05, 0.0, 0.15])
from canary_lib.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _train_cli(world, out, tmp_path, signal_after: str | None = None):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from canary_lib.graceful_stop import SIGNAL_AFTER_STEP_ENV

    model, data = world
    params = tmp_path / "canary.yaml"
    params.write_text(
        f"model: {{name_or_path: {model}}}\ndata: {{dir: {data}}}\nmethod: {{name: canary}}\n"
        "controller: {K: 2, p_init: 0.1}\nlora: {r: 4, alpha: 8, dropout: 0.1}\n"
        "train: {batch_size: 8, micro_batch_size: 8, checkpoint_every: 1000, epochs: 2}\n"
    )
    env = {k: v for k, v in os.environ.items() if k != SIGNAL_AFTER_STEP_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    if signal_after:
        env[SIGNAL_AFTER_STEP_ENV] = signal_after
    return subprocess.run(
        [sys.executable, "-c", INTERRUPTIBLE, "train", str(params), "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_ctrl_c_and_sigterm_finish_the_step_checkpoint_and_resume_identically(world, tmp_path):
    """checkpoint_every = 1000 (as the organism's): without the handler, one Ctrl-C lost the whole run."""
    import csv

    from safetensors.torch import load_file

    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    assert _train_cli(world, reference, tmp_path).returncode == 0
    for signal_after, name, step in (("3:SIGTERM", "SIGTERM", 3), ("6:SIGINT", "SIGINT", 6)):
        done = _train_cli(world, resumed, tmp_path, signal_after)
        assert done.returncode == 2, done.stderr[-2000:]
        last = done.stderr.strip().splitlines()[-1]
        assert last == (
            f"canary: {resumed}: stopped by {name} after step {step}; checkpoint written: run the same "
            "command again to resume"
        ), done.stderr[-2000:]
        assert "Traceback" not in done.stderr
        assert (resumed / "checkpoint" / "state.json").is_file() and not RunDir(resumed).is_complete("training")
        assert len(RunDir(resumed).steps_path.read_text().splitlines()) == step + 2  # header + steps 0..step
    assert _train_cli(world, resumed, tmp_path).returncode == 0

    def controller(out):
        with open(out / "controller.csv", newline="") as fh:
            return [row[:-1] for row in csv.reader(fh)]  # all but the wall-clock seconds

    assert (resumed / "steps.csv").read_bytes() == (reference / "steps.csv").read_bytes()
    assert controller(resumed) == controller(reference)
    assert (resumed / "canary_answers.jsonl").read_bytes() == (reference / "canary_answers.jsonl").read_bytes()
    ref = load_file(reference / "adapter" / "adapter_model.safetensors")
    res = load_file(resumed / "adapter" / "adapter_model.safetensors")
    assert ref.keys() == res.keys() and all((ref[k] == res[k]).all() for k in ref)


# ------------------------------------------------------------------ case 9: quietly incomplete


@pytest.fixture
def interrupted(world, tmp_path):
    """A run killed after its last checkpoint (kept), with canary evaluations recorded."""
    out = tmp_path / "run"
    cfg = tiny_config(world, "train.keep_checkpoint=true")
    train_from_config(cfg, out, canary_fn=ScriptedCanary([0.1, 0.2]))
    RunDir(out).reset_stage("training")
    return cfg, RunDir(out)


def test_a_checkpoint_without_its_state_is_refused_not_restarted_from_step_0(interrupted, monkeypatch, capsys):
    from canary_lib.train import CheckpointError

    cfg, run = interrupted
    (run.checkpoint_dir / "state.json").unlink()
    steps = run.steps_path.read_bytes()
    _no_model_load(monkeypatch)
    with pytest.raises(
        CheckpointError,
        match=r"checkpoint: incomplete checkpoint \(no state.json\); restore it, or "
        r"delete it to train from the start",
    ):
        train_from_config(cfg, run.path, canary_fn=ScriptedCanary([0.1]))
    assert run.steps_path.read_bytes() == steps and run.checkpoint_dir.is_dir()  # nothing wiped


@pytest.mark.parametrize("damage", ["delete", "cut"])
def test_missing_canary_answers_are_refused_on_resume(interrupted, monkeypatch, damage):
    from canary_lib.train import CheckpointError

    cfg, run = interrupted
    if damage == "delete":
        run.canary_answers_path.unlink()
    else:
        lines = run.canary_answers_path.read_text().splitlines(keepends=True)
        run.canary_answers_path.write_text("".join(lines[:-1]))  # the last evaluation lost one answer
    _no_model_load(monkeypatch)
    with pytest.raises(
        CheckpointError,
        match=r"canary_answers.jsonl: the answers of \d+ of the \d+ canary "
        r"evaluations the checkpoint recorded are missing \(after steps",
    ):
        train_from_config(cfg, run.path, canary_fn=ScriptedCanary([0.1]))


def test_ctrl_c_during_evaluation_is_one_line(tmp_path, capsys, monkeypatch):
    import canary_lib.evaluate as ev

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ev, "evaluate_run", interrupted)
    assert main(["eval", str(tmp_path)]) == 130
    assert capsys.readouterr().err == "canary: interrupted; run the same command again to resume from what was saved\n"


def test_a_signal_while_the_model_loads_stops_before_the_first_step(world, tmp_path, monkeypatch, capsys):
    import os
    import signal

    from canary_lib.graceful_stop import TrainingInterrupted

    real = models.load_model_and_tokenizer

    def load_then_interrupted(cfg):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C during a long load
        return real(cfg)

    monkeypatch.setattr(models, "load_model_and_tokenizer", load_then_interrupted)
    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(
        TrainingInterrupted,
        match=r"stopped by SIGINT before the first step of this session; "
        r"nothing new to save",
    ):
        train_from_config(tiny_config(world), tmp_path / "run", canary_fn=ScriptedCanary([0.1]))
    assert signal.getsignal(signal.SIGINT) is previous  # the handlers are given back
    assert "SIGINT received: stopping after the current step" in capsys.readouterr().err
    monkeypatch.setattr(models, "load_model_and_tokenizer", real)
    assert train_from_config(tiny_config(world), tmp_path / "run", canary_fn=ScriptedCanary([0.1]))["n_steps"] >= 2
