"""Nothing silently wrong: a run directory bound to its configuration, torn and damaged files, refusals of a
model that is not there, each one line before the model loads (docs/bad_inputs.md lists them).

Run: .venv/bin/pytest tests/test_no_silent_reuse.py
"""

from __future__ import annotations

import pytest
import torch

from _fixtures import ScriptedCanary, make_tiny_training_world
from canary_lib import models
from canary_lib.artifacts import RunDir, RunFileError, append_jsonl, read_jsonl, write_text_atomic
from canary_lib.binding import ConfigMismatchError, check_evaluation, stale_keys
from canary_lib.cli import main
from canary_lib.config import load_config, write_run_config
from canary_lib.models import ModelSetupError
from canary_lib.train import CheckpointError, train_from_config


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_tiny_training_world(tmp_path_factory.mktemp("world"), n_target=32, n_safe=16)


def tiny_config(world, *overrides: str):
    model, data = world
    base = [
        f"model.name_or_path={model}",
        f"data.dir={data}",
        "controller.K=2",
        "train.checkpoint_every=2",
        "train.batch_size=8",
        "train.micro_batch_size=8",
        "lora.r=2",
        "lora.alpha=4",
        "method.name=fixed_5",
    ]
    return load_config([], base + list(overrides))


@pytest.fixture(scope="module")
def finished(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "fixed_5"
    train_from_config(tiny_config(world), out, canary_fn=ScriptedCanary([0.1]))
    return out


def _no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(models, "load_model_and_tokenizer", refuse)


# ------------------------------------------------------------------------------- case 1: a finished run, reused


def test_finished_run_is_not_reused_under_another_config(world, finished, monkeypatch, capsys):
    _no_model_load(monkeypatch)
    with pytest.raises(ConfigMismatchError) as err:
        train_from_config(
            tiny_config(world, "seed=7", "controller.K=3", "method.name=no_defense"),
            finished,
            canary_fn=ScriptedCanary([0.1]),
        )
    message = str(err.value)
    assert (
        "was trained with another configuration (controller.K: 2 -> 3; method.name: fixed_5 -> no_defense; "
        "seed: 42 -> 7)"
        in message
        and "\n" not in message
    )
    # the same configuration (and one that differs only in where or how it runs) reuses it
    assert (
        train_from_config(
            tiny_config(world, "train.checkpoint_every=5", "model.device=cpu"),
            finished,
            canary_fn=ScriptedCanary([0.1]),
        )["n_steps"]
        >= 4
    )
    assert "training already complete" in capsys.readouterr().out


def test_sweep_completeness_is_for_this_config(world, finished):
    from canary_lib.sweep import NotebookStep

    def step(cfg):
        return NotebookStep("train", "02.ipynb", "out.ipynb", {}, str(finished), config=cfg)

    assert step(tiny_config(world)).is_done()
    stale = step(tiny_config(world, "seed=7"))
    assert not stale.is_done() and stale.stale() == ["seed: 42 -> 7"]


def test_a_key_added_after_the_run_was_recorded_counts_at_its_default(tmp_path):
    import yaml

    run = RunDir(tmp_path / "run")
    write_run_config(run, load_config())
    recorded = yaml.safe_load(run.config_path.read_text())
    del recorded["organism"]["narrow_domains"], recorded["organism"]["target_domain"]  # an older package's dump
    run.config_path.write_text(yaml.safe_dump(recorded))
    assert stale_keys(run, load_config(), "training") == []
    medical = load_config(overrides=["organism.narrow_domains=[security, medical]", "organism.target_domain=medical"])
    assert stale_keys(run, medical, "training") == [
        "organism.narrow_domains: [security] -> [security, medical]",
        "organism.target_domain: security -> medical",
    ]
    # a key the schema does not know stays a difference
    recorded["organism"]["retired_knob"] = 3
    run.config_path.write_text(yaml.safe_dump(recorded))
    assert stale_keys(run, load_config(), "training") == ["organism.retired_knob: 3 -> null"]


# ------------------------------------------------------------------------------- case 2: cached answers


def _evaluated_run(tmp_path, cfg):
    run = RunDir(tmp_path / "run")
    write_run_config(run, cfg)
    append_jsonl(
        run.generations_path,
        [{"set": "general", "question_id": "q", "paraphrase": 0, "sample": 0, "answer": "a", "seed": cfg.seed}],
    )
    return run


@pytest.mark.parametrize(
    "override, shown",
    [
        ("eval.temperature=0.0", "eval.temperature: 1.0 -> 0.0"),
        ("eval.max_new_tokens=4", "eval.max_new_tokens: 600 -> 4"),
        ("seed=7", "seed: 42 -> 7"),
    ],
)
def test_cached_answers_are_not_reused_under_other_settings(tmp_path, override, shown):
    run = _evaluated_run(tmp_path, load_config())
    with pytest.raises(ConfigMismatchError, match="another configuration|other evaluation settings") as err:
        check_evaluation(run, load_config(overrides=[override]), trained=True)
    assert shown in str(err.value)
    # more samples or another question set extend the cache (each answer keeps its key and seed)
    check_evaluation(run, load_config(overrides=["eval.samples_per_prompt=200", "eval.sets=[general]"]), trained=True)
    # without cached answers, new evaluation settings are simply recorded
    run.generations_path.unlink()
    check_evaluation(run, load_config(overrides=["eval.temperature=0.0"]), trained=True)
    assert stale_keys(run, load_config(overrides=["eval.temperature=0.0"]), "eval") == ["eval.temperature: 1.0 -> 0.0"]


def test_cli_eval_refuses_with_one_line_exit_2(tmp_path, capsys):
    run = _evaluated_run(tmp_path, load_config())
    run.mark_complete("training")
    assert main(["eval", str(run.path), "--set", "eval.temperature=0.0"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith(
            f"canary: {run.path}: generations.jsonl hold answers drawn with other evaluation "
            "settings (eval.temperature: 1.0 -> 0.0)"
        )
        and err.count("\n") == 1
    )


# ------------------------------------------------------------------------------- case 5: torn and damaged files


def test_append_after_a_torn_line_keeps_every_row(tmp_path):
    path = tmp_path / "judgments.jsonl"
    append_jsonl(path, [{"k": 1}, {"k": 2}])
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"k": 3, "aligned": 1')  # killed mid-write
    append_jsonl(path, [{"k": 3}, {"k": 4}])
    assert read_jsonl(path) == [{"k": 1}, {"k": 2}, {"k": 3}, {"k": 4}]
    assert path.read_text().endswith('{"k": 4}\n')


def test_damaged_lines_are_one_line_errors(tmp_path):
    path = tmp_path / "generations.jsonl"
    path.write_bytes(b'{"k": 1}\n{"k": "caf\xe9"}\n')
    with pytest.raises(RunFileError, match=r"generations.jsonl: line 2 is not UTF-8"):
        read_jsonl(path)
    path.write_bytes(b'{"k": 1}\n{"k": 2{"k": 3}\n')  # what the old appends left
    with pytest.raises(RunFileError, match=r"line 2 is not valid JSON"):
        read_jsonl(path)


def test_temporaries_of_a_killed_save_are_removed(tmp_path):
    run = RunDir(tmp_path)
    write_text_atomic(run.steps_path, "step\n")
    (tmp_path / ".steps.csv.abc123.tmp").write_text("half")
    (tmp_path / ".checkpoint-xyz").mkdir()
    (tmp_path / ".adapter-xyz").mkdir()
    run.remove_temporaries()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["steps.csv"]


# ------------------------------------------------------------------------------- case 8: before the model loads


def test_checkpoint_of_other_settings_or_damaged_refused_before_model_load(world, tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = tiny_config(world, "train.keep_checkpoint=true")
    train_from_config(cfg, out, canary_fn=ScriptedCanary([0.1]))
    run = RunDir(out)
    run.reset_stage("training")  # as if killed after the last checkpoint
    _no_model_load(monkeypatch)
    with pytest.raises(ConfigMismatchError, match=r"trained with another configuration \(train.lr: 0.0001 -> 0.001\)"):
        train_from_config(
            tiny_config(world, "train.keep_checkpoint=true", "train.lr=1e-3"), out, canary_fn=ScriptedCanary([0.1])
        )
    data = world[1] / "target_train.jsonl"
    saved = data.read_bytes()
    try:
        data.write_bytes(saved + saved.splitlines(keepends=True)[0])
        with pytest.raises(CheckpointError, match=r"another configuration or data \(data file .*target_train.jsonl"):
            train_from_config(cfg, out, canary_fn=ScriptedCanary([0.1]))
    finally:
        data.write_bytes(saved)
    (run.checkpoint_dir / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"checkpoint: damaged checkpoint \(JSONDecodeError"):
        train_from_config(cfg, out, canary_fn=ScriptedCanary([0.1]))
    (run.checkpoint_dir / "state.json").write_text('{"fingerprint": {"config": "not a mapping", "data": {}}}')
    with pytest.raises(CheckpointError, match=r"damaged checkpoint \(ValueError: a configuration dump is not a map"):
        train_from_config(cfg, out, canary_fn=ScriptedCanary([0.1]))


def test_out_a_file_and_eval_without_config_are_one_line_errors(world, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(RunFileError, match="not a directory"):
        train_from_config(tiny_config(world), afile, canary_fn=ScriptedCanary([0.1]))
    run = RunDir(tmp_path / "run")
    run.mark_complete("training")
    assert main(["eval", str(run.path)]) == 2
    assert "config.yaml: missing; the run's configuration is needed" in capsys.readouterr().err


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.device=cuda", "model.device is 'cuda' but no CUDA device is available"),
        ("model.name_or_path=/nonexistent/model", "model.name_or_path '/nonexistent/model': no model directory there"),
    ],
)
def test_missing_device_or_model_refused_before_model_load(world, tmp_path, monkeypatch, override, message):
    if "cuda" in override and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    _no_model_load(monkeypatch)
    with pytest.raises(ModelSetupError, match=message):
        train_from_config(tiny_config(world, override), tmp_path / "run", canary_fn=ScriptedCanary([0.1]))


def test_lora_target_typo_is_a_one_line_error(world):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(world[0])
    with pytest.raises(ModelSetupError, match=r"lora.target_modules \['q_prj'\] match no module"):
        models.add_rslora(model, load_config(overrides=["lora.target_modules=[q_prj, v_proj]"]).lora, seed=0)


def test_non_utf8_training_data_is_a_one_line_error(world, tmp_path):
    from canary_lib.train import TrainingDataError

    data = tmp_path / "data"
    data.mkdir()
    (data / "target_train.jsonl").write_bytes(b'{"messages": "caf\xe9"}\n')
    with pytest.raises(TrainingDataError, match="not UTF-8 text"):
        train_from_config(tiny_config(world, f"data.dir={data}"), tmp_path / "run", canary_fn=ScriptedCanary([0.1]))
