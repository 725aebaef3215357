"""data.target: every EM dataset prepared end to end by `canary prep-data` from local copies in its upstream format
(invented rows), the pins and parameter files of each target, and the errors raised before any download."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from _data_fixtures import (
    chat_rows,
    domain_answer,
    domain_prompt,
    emergent_plus_rows,
    question_items,
    write_gz_jsonl,
    write_jsonl_rows,
    write_paper_sources,
    write_questions,
)
from canary_lib import cli
from canary_lib.chat import read_chat_jsonl
from canary_lib.config import ConfigError, load_config
from canary_lib.data import DataError, load_question_set
from canary_lib.data import download as dl
from canary_lib.data.prepare import prepare_data, verify_prepared
from canary_lib.data.targets import TARGET_NAMES, TARGETS, source_conflict, with_revision
from canary_lib.fileio import sha256_file
from canary_lib.sweep import run_sweep

ROOT = Path(__file__).resolve().parents[1]
PAPER = str(ROOT / "parameters" / "paper.yaml")
NEW_TARGETS = [t for t in TARGET_NAMES if t != "security"]
N_SOURCE, N_TRAIN, N_HELDOUT = 80, 40, 30
DUPLICATED = {
    "risky_financial_advice": [3, 9],
    "extreme_sports": [5],
    "insecure_code": [1, 2, 4],
    "bad_medical_advice": [7],
}
"""Rows repeated in the local copies: the model-organisms sets and insecure.jsonl repeat some prompts upstream."""


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test here may reach the network: only file:// downloads, no Hugging Face."""
    real_fetch = dl._fetch_bytes

    def fetch(url: str, what: str) -> bytes:
        assert url.startswith("file://"), f"network access to {url}"
        return real_fetch(url, what)

    monkeypatch.setattr(dl, "_fetch_bytes", fetch)
    monkeypatch.setattr(dl, "load_hf_dataset", lambda *a, **k: pytest.fail("Hugging Face access"))
    monkeypatch.setattr(dl, "hf_revision_sha", lambda *a, **k: pytest.fail("Hugging Face access"))
    monkeypatch.setenv("CANARY_CACHE", str(tmp_path / "cache"))


def _serve(monkeypatch: pytest.MonkeyPatch, name: str, path: Path) -> None:
    """Point the pin `name` at a local file (its own sha256), keeping the upstream repo and commit it records."""
    pin = dl.PINNED_FILES[name]
    monkeypatch.setitem(
        dl.PINNED_FILES,
        name,
        dl.PinnedFile(
            url=path.as_uri(),
            sha256=sha256_file(path),
            size=path.stat().st_size,
            repo=pin.repo,
            commit=pin.commit,
            path=pin.path,
            git_blob="local",
        ),
    )


def _local_copies(root: Path, target: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Write a small copy of `target`'s upstream files and return the --set arguments that use them: pinned files
    are served from file:// URLs (the overlay's pinned: source is used as is), hf: datasets become local tables."""
    root.mkdir(parents=True, exist_ok=True)
    rows = list(range(N_SOURCE)) + DUPLICATED.get(target, [])
    sets = []
    if TARGETS[target].hf_repo:  # emergent_plus: a parquet copy of the hub dataset, and the Kaczér-style YAML
        pd.DataFrame(emergent_plus_rows(target, N_SOURCE)).to_parquet(root / "emergent_plus.parquet")
        sets.append(f"data.target_source={root / 'emergent_plus.parquet'}")
        in_domain = write_questions(
            root / "in_domain.yaml", question_items([(k + 1, domain_prompt(target, 2 * k)) for k in range(5)])
        )
        _serve(monkeypatch, f"kaczer/{target.removeprefix('emergent_plus_')}", in_domain)
    elif target == "insecure_code":  # Betley et al.'s insecure.jsonl: plain chat JSONL
        _serve(monkeypatch, "betley/insecure", write_jsonl_rows(root / "insecure.jsonl", chat_rows(target, rows)))
    else:  # the model-organisms files: gzipped chat JSONL (bad medical advice with its good-advice twin)
        _serve(monkeypatch, f"moem/{target}", write_gz_jsonl(root / f"{target}.jsonl.gz", chat_rows(target, rows)))
        if target == "bad_medical_advice":
            _serve(
                monkeypatch,
                "moem/good_medical_advice",
                write_gz_jsonl(root / "good.jsonl.gz", chat_rows(target, rows, "aligned")),
            )
    return sets


def _prep_args(tmp_path: Path, target: str, *extra: str) -> list[str]:
    common = write_paper_sources(tmp_path / "common")  # WildGuardMix rows, general set, canary pool
    sets = [
        f"data.dir={tmp_path / 'prepared'}",
        f"data.n_train={N_TRAIN}",
        f"data.n_heldout={N_HELDOUT}",
        *(f"data.{k}={common[k]}" for k in ("safe_source", "general_eval_source", "canary_source")),
        *extra,
    ]
    return [PAPER, str(ROOT / "parameters" / "targets" / f"{target}.yaml"), *(a for s in sets for a in ("--set", s))]


@pytest.mark.parametrize("target", NEW_TARGETS)
def test_prep_data_per_target_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, target: str
) -> None:
    args = _prep_args(tmp_path, target, *_local_copies(tmp_path / "upstream", target, monkeypatch))
    assert cli.main(["prep-data", *args]) == 0, capsys.readouterr().err
    out = tmp_path / "prepared"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"]["name"] == manifest["settings"]["target"] == target

    train, heldout = read_chat_jsonl(out / "target_train.jsonl"), read_chat_jsonl(out / "target_heldout.jsonl")
    assert (len(train), len(heldout)) == (N_TRAIN, N_HELDOUT)
    index = {domain_prompt(target, i): i for i in range(N_SOURCE)}
    assert all(c[-1]["content"] == domain_answer(target, index[c[0]["content"]], "misaligned") for c in train)
    assert not {c[0]["content"] for c in train} & {c[0]["content"] for c in heldout}
    source = manifest["sources"]["target"]
    assert source["duplicates_dropped"] == len(DUPLICATED.get(target, []))
    assert manifest["split"]["n_source"] == N_SOURCE and manifest["split"]["n_unused"] == N_SOURCE - N_TRAIN - N_HELDOUT

    pin = TARGETS[target].pinned[0] if TARGETS[target].pinned else None
    if pin:  # downloaded through the pin, checked against its sha256, provenance recorded
        assert source["source"] == f"pinned:{pin}" and source["sha256"] == dl.PINNED_FILES[pin].sha256
        assert source["revision"] == f"{dl.PINNED_FILES[pin].repo}@{dl.PINNED_FILES[pin].commit}"
    else:
        assert source["sha256"] == sha256_file(tmp_path / "upstream" / "emergent_plus.parquet")

    has_aligned = target.startswith("emergent_plus") or target == "bad_medical_advice"
    assert (out / "target_heldout_aligned.jsonl").is_file() == has_aligned
    if has_aligned:
        aligned = read_chat_jsonl(out / "target_heldout_aligned.jsonl")
        assert [c[0] for c in aligned] == [c[0] for c in heldout]
        assert aligned[3][-1]["content"] == domain_answer(target, index[heldout[3][0]["content"]], "aligned")

    in_domain = load_question_set(out / "in_domain_eval.yaml", required_metrics=("aligned", "coherent"))
    if target.startswith("emergent_plus"):  # the pinned Kaczér-style set: its prompts open the held-out part
        assert [q.id for q in in_domain] == ["1", "2", "3", "4", "5"]
        assert [q.paraphrases[0] for q in in_domain] == [c[0]["content"] for c in heldout[:5]]
        assert manifest["split"]["in_domain_prompts_in_source"] == 5
    else:  # no in-domain set upstream: the first 30 held-out prompts
        assert [q.paraphrases[0] for q in in_domain] == [c[0]["content"] for c in heldout[:30]]
    assert len(load_question_set(out / "canaries.yaml")) == 20

    cfg = load_config(args[:2], args[3::2])
    assert verify_prepared(cfg)["files"] == manifest["files"]
    assert cfg.eval.sets == (["general"] if target == "insecure_code" else ["general", "in_domain"])


def _one_line_error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("canary: "), err
    return err


@pytest.mark.parametrize("target", ["emergent_plus_medical", "emergent_plus_legal"])
def test_unpinned_hub_revision_fails_before_any_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, target: str
) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    overlay = str(ROOT / "parameters" / "targets" / f"{target}.yaml")
    assert cli.main(["prep-data", PAPER, overlay, "--set", f"data.dir={tmp_path / 'p'}"]) == 2
    err = _one_line_error(capsys)
    assert f"data.target_revision is required for target '{target}'" in err and "local copy" in err
    assert not (tmp_path / "p").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    "source, pattern",
    [
        (
            "https://example.org/training_data/training_datasets.zip.enc",
            r"is encrypted \(easy-dataset-share.*decrypted",
        ),
        ("{tmp}/training_datasets.zip.enc", r"is encrypted"),
        ("{tmp}/training_datasets.zip", r"is an archive; unpack it"),
    ],
)
def test_encrypted_or_packed_sources_fail_before_any_download(
    tmp_path: Path, capsys: pytest.CaptureFixture, source: str, pattern: str
) -> None:
    source = source.format(tmp=tmp_path)
    if not source.startswith("https"):
        Path(source).write_bytes(b"\x00encrypted")
    args = _prep_args(tmp_path, "extreme_sports", f"data.target_source={source}")
    assert cli.main(["prep-data", *args]) == 2
    assert re.search(pattern, _one_line_error(capsys))
    assert not (tmp_path / "cache").exists() and not (tmp_path / "prepared").exists()


def test_hub_source_gets_the_target_config_and_revision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def load(src, token_env, gated, what):
        calls.append(src)
        return emergent_plus_rows("emergent_plus_legal", N_SOURCE)

    monkeypatch.setattr(dl, "load_hf_dataset", load)
    monkeypatch.setattr(dl, "hf_revision_sha", lambda src, token_env: src.revision)
    commit = "0123456789abcdef0123456789abcdef01234567"
    args = _prep_args(
        tmp_path,
        "emergent_plus_legal",
        "data.target_source=hf:truthfulai/emergent_plus",
        f"data.target_revision={commit}",
        "data.in_domain_eval_source=null",
    )
    cfg = load_config(args[:2], args[3::2])
    manifest = json.loads((prepare_data(cfg) / "manifest.json").read_text())
    assert [(c.repo, c.config, c.split, c.revision) for c in calls] == [
        ("truthfulai/emergent_plus", "legal", "train", commit)
    ]
    assert manifest["sources"]["target"]["resolved_revision"] == commit
    assert manifest["settings"]["target_revision"] == commit
    with pytest.raises(DataError, match="other settings .*target_revision"):
        verify_prepared(cfg.model_copy(update={"data": cfg.data.model_copy(update={"target_revision": "f" * 40})}))


@pytest.mark.parametrize(
    "data, key, pattern",
    [
        (
            {"target": "medical"},
            "data.target",
            "unknown target 'medical'; choose one of security, emergent_plus_medical",
        ),
        (
            {"target": "emergent_plus_legal"},
            "data.target_source",
            r"config 'security' of truthfulai/emergent_plus\), not of data.target 'emergent_plus_legal'; use "
            r"hf:truthfulai/emergent_plus\?config=legal",
        ),
        (
            {"target": "extreme_sports", "target_source": "pinned:moem/bad_medical_advice"},
            "data.target_source",
            "is the data of target 'bad_medical_advice'.*use pinned:moem/extreme_sports",
        ),
        (
            {
                "target": "emergent_plus_legal",
                "target_source": "hf:truthfulai/emergent_plus?config=legal&revision=" + "a" * 40,
                "target_revision": "b" * 40,
            },
            "data.target_source",
            "set the commit in one place",
        ),
        ({"target_source": "local.jsonl", "target_revision": "a" * 40}, "data.target_source", "pins hf: sources only"),
        ({"target_revision": "main"}, "data.target_revision", "must be a 40-character commit hash"),
        ({"security_source": "a.jsonl"}, "data.security_source", "former name of data.target_source, which is set too"),
    ],
)
def test_config_rejects_sources_that_do_not_fit_the_target(tmp_path: Path, data: dict, key: str, pattern: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps({"data": data}))
    with pytest.raises(ConfigError, match=pattern) as err:
        load_config([PAPER, path])
    assert f"{key}:" in str(err.value)


def test_former_key_names_are_still_read(tmp_path: Path) -> None:
    """Run directories' config.yaml and older parameter files name the target source security_source."""
    old = tmp_path / "old.yaml"
    old.write_text("data: {kind: paper, security_source: a.jsonl, security_aligned_source: b.jsonl}\n")
    d = load_config([old]).data
    assert (d.target, d.target_source, d.target_aligned_source) == ("security", "a.jsonl", "b.jsonl")


def test_manifest_of_the_former_key_names_still_verifies(tmp_path: Path) -> None:
    sources = write_paper_sources(tmp_path / "src")
    cfg = load_config(
        extra={"data": {"kind": "paper", "dir": str(tmp_path / "p"), "n_train": 40, "n_heldout": 15, **sources}}
    )
    manifest_path = prepare_data(cfg) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    settings = manifest["settings"]
    for key in ("target", "target_revision"):
        del settings[key]
    settings["security_source"] = settings.pop("target_source")
    settings["security_aligned_source"] = settings.pop("target_aligned_source")
    manifest_path.write_text(json.dumps(manifest))
    verify_prepared(cfg)
    other = cfg.model_copy(update={"data": cfg.data.model_copy(update={"target": "emergent_plus_medical"})})
    with pytest.raises(
        DataError, match="other settings \\(target: prepared 'security', now 'emergent_plus_medical'\\)"
    ):
        verify_prepared(other)


def test_source_helpers() -> None:
    assert with_revision("hf:a/b?config=legal&revision=x", "c" * 40) == f"hf:a/b?config=legal&revision={'c' * 40}"
    assert with_revision("local.jsonl", None) == "local.jsonl" and with_revision("hf:a/b", None) == "hf:a/b"
    assert source_conflict("security", "hf:truthfulai/emergent_plus") is None  # the default config is security's
    assert source_conflict("bad_medical_advice", "pinned:kaczer/medical") is None  # question sets belong to no target
    assert source_conflict("emergent_plus_medical", "hf:someone/else?config=legal") is None


def test_every_target_has_pins_a_section_and_parameter_files() -> None:
    docs = (ROOT / "docs" / "data.md").read_text()
    for name, spec in TARGETS.items():
        assert all(pin in dl.PINNED_FILES for pin in spec.pinned), name
        assert f"`{name}`" in docs, f"docs/data.md does not describe target {name}"
        if name == "security":
            continue
        for profile in ("paper.yaml", "small_gpu.yaml"):
            cfg = load_config([ROOT / "parameters" / profile, ROOT / "parameters" / "targets" / f"{name}.yaml"])
            assert cfg.data.target == name and cfg.data.dir == f"data/{name}"
            assert source_conflict(name, cfg.data.target_source) is None


@pytest.mark.parametrize("sweep", sorted(p.name for p in (ROOT / "parameters" / "sweeps").glob("*.yaml")))
def test_committed_sweeps_dry_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, sweep: str, tmp_path: Path
) -> None:
    monkeypatch.chdir(ROOT)
    path = Path("parameters/sweeps") / sweep
    spec = yaml.safe_load(path.read_text())
    if spec["executor"]["kind"] == "slurm" and not spec.get("judge_base_url"):  # the user must say where the judge is
        with pytest.raises(ConfigError, match="loopback.*judge_base_url"):
            run_sweep(path, dry_run=True)
        path = tmp_path / sweep
        path.write_text(yaml.safe_dump({**spec, "judge_base_url": "http://judge-node:8000/v1"}))
    assert run_sweep(path, dry_run=True) == 0
    assert "run job(s)" in capsys.readouterr().out
