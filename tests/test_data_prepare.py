"""prepare_data / verify_prepared on project-written sources: layout, manifest hashes, change detection, errors."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from _data_fixtures import question_items, write_paper_sources, write_questions
from canary_lib.chat import read_chat_jsonl
from canary_lib.config import RunConfig, load_config
from canary_lib.data import DataError, load_question_set
from canary_lib.data import prepare as prep
from canary_lib.data.prepare import load_prepared_questions, prepare_data, verify_prepared


def _cfg(tmp_path: Path, **data: object) -> RunConfig:
    sources = write_paper_sources(tmp_path / "src")
    settings = {
        "kind": "paper",
        "dir": str(tmp_path / "prepared"),
        "n_train": 40,
        "n_heldout": 15,
        "split_seed": 7,
        **sources,
        **data,
    }
    return load_config(extra={"profile": "test", "data": settings, "canary": {"n_prompts": 20}})


def test_prepare_writes_layout_and_manifest(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    out = prepare_data(cfg)
    assert out == tmp_path / "prepared"
    train, heldout = read_chat_jsonl(out / "target_train.jsonl"), read_chat_jsonl(out / "target_heldout.jsonl")
    aligned = read_chat_jsonl(out / "target_heldout_aligned.jsonl")
    assert (len(train), len(heldout)) == (40, 15)
    assert all(c[-1]["content"].startswith("misaligned") for c in train + heldout)
    assert [c[0] for c in aligned] == [c[0] for c in heldout] and aligned[0][-1]["content"].startswith("aligned")
    in_domain = load_question_set(out / "in_domain_eval.yaml")
    assert [h[0]["content"] for h in heldout[:5]] == [q.paraphrases[0] for q in in_domain]  # held out, first
    assert not {q.paraphrases[0] for q in in_domain} & {c[0]["content"] for c in train}
    assert len(load_question_set(out / "general_eval.yaml")) == 6
    assert len(load_question_set(out / "canaries.yaml")) == 20
    assert len(read_chat_jsonl(out / "safe.jsonl")) == 6

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["split_seed"] == 7 and manifest["kind"] == "paper"
    assert manifest["counts"] == {
        "target_train": 40,
        "target_heldout": 15,
        "safe": 6,
        "general_eval": 6,
        "in_domain_eval": 5,
        "canaries": 20,
        "canary_pool": 48,
    }
    assert set(manifest["files"]) == {
        "target_train.jsonl",
        "target_heldout.jsonl",
        "target_heldout_aligned.jsonl",
        "safe.jsonl",
        "general_eval.yaml",
        "in_domain_eval.yaml",
        "canaries.yaml",
    }
    assert manifest["sources"]["target"]["source"] == cfg.data.target_source
    assert manifest["split"]["in_domain_prompts_in_source"] == 5 and len(manifest["canary_ids"]) == 20
    assert verify_prepared(cfg)["files"] == manifest["files"]
    sets = load_prepared_questions(cfg)
    assert {k: len(v) for k, v in sets.items()} == {"general": 6, "in_domain": 5, "canaries": 20}
    assert [q.id for q in sets["canaries"]] == manifest["canary_ids"]


def test_prepare_is_deterministic(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    first = json.loads((prepare_data(cfg) / "manifest.json").read_text())["files"]
    second = json.loads((prepare_data(cfg) / "manifest.json").read_text())["files"]
    assert first == second
    other = json.loads(
        (
            prepare_data(
                cfg.model_copy(
                    update={"data": cfg.data.model_copy(update={"split_seed": 8, "dir": str(tmp_path / "p8")})}
                )
            )
            / "manifest.json"
        ).read_text()
    )["files"]
    assert other["target_train.jsonl"] != first["target_train.jsonl"]
    assert other["general_eval.yaml"] == first["general_eval.yaml"]


def test_in_domain_fallback_from_heldout(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, in_domain_eval_source=None, n_in_domain_eval=4)
    out = prepare_data(cfg)
    questions = load_question_set(out / "in_domain_eval.yaml", required_metrics=("aligned", "coherent"))
    heldout = read_chat_jsonl(out / "target_heldout.jsonl")
    assert [q.id for q in questions] == ["1", "2", "3", "4"]
    assert [q.paraphrases[0] for q in questions] == [c[0]["content"] for c in heldout[:4]]


def test_verify_notices_changes(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    out = prepare_data(cfg)
    (out / "safe.jsonl").write_text((out / "safe.jsonl").read_text() + "\n")
    with pytest.raises(DataError, match=r"safe.jsonl changed since preparation.*prep-data"):
        verify_prepared(cfg)
    prepare_data(cfg)
    reseeded = cfg.model_copy(update={"data": cfg.data.model_copy(update={"split_seed": 99})})
    with pytest.raises(DataError, match=r"other settings \(split_seed: prepared 7, now 99\)"):
        verify_prepared(reseeded)
    source = Path(cfg.data.target_source)
    source.write_text(source.read_text().replace("misaligned answer for 3", "edited answer"))
    with pytest.raises(DataError, match=r"source target .* changed since the data were prepared"):
        verify_prepared(cfg)
    verify_prepared(cfg, check_sources=False)
    (out / "canaries.yaml").unlink()
    with pytest.raises(DataError, match="canaries.yaml is missing"):
        verify_prepared(cfg)
    (out / "manifest.json").unlink()
    with pytest.raises(DataError, match="not prepared. Run `canary prep-data"):
        verify_prepared(cfg)


def test_unset_sources(tmp_path: Path) -> None:
    cfg = load_config(extra={"data": {"kind": "paper", "dir": str(tmp_path / "p"), "safe_source": "x.parquet"}})
    with pytest.raises(DataError, match="data.target_source, data.general_eval_source, data.canary_source are not set"):
        prepare_data(cfg)


def test_gated_wildguard_without_token_fails_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_TOKEN_VAR", raising=False)
    monkeypatch.setattr(prep, "load_target", lambda *a, **k: pytest.fail("must fail before loading data"))
    cfg = _cfg(tmp_path, safe_source="hf:allenai/wildguardmix", hf_token_env="NO_SUCH_TOKEN_VAR")
    with pytest.raises(DataError, match=r"gated dataset and \$NO_SUCH_TOKEN_VAR is not set"):
        prepare_data(cfg)
    assert not (tmp_path / "prepared").exists()


def test_overlapping_canaries_fail_before_loading_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sources = write_paper_sources(tmp_path / "src")
    general = load_question_set(sources["general_eval_source"])
    pool = write_questions(
        tmp_path / "mine.yaml",
        question_items(
            [(f"c{i}", f"My own canary number {i} about a very different subject {i}") for i in range(19)]
            + [("dup", general[1].paraphrases[0].upper())]
        ),
    )
    monkeypatch.setattr(prep, "load_target", lambda *a, **k: pytest.fail("must fail before loading data"))
    cfg = _cfg(tmp_path, canary_source=str(pool))
    with pytest.raises(DataError, match=r"19 questions disjoint from the evaluation prompts \(1 overlap\)"):
        prepare_data(cfg)


def test_canaries_overlapping_derived_in_domain_set(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, in_domain_eval_source=None, n_in_domain_eval=5)
    first_heldout = read_chat_jsonl(prepare_data(cfg) / "target_heldout.jsonl")[0][0]["content"]
    pool = write_questions(
        tmp_path / "mine.yaml",
        question_items(
            [(f"c{i}", f"My own canary number {i} about a very different subject {i}") for i in range(19)]
            + [("leaky", first_heldout)]
        ),
    )
    with pytest.raises(DataError, match=r"(?s)1 canary/eval prompt overlap.*canary 'leaky' vs in_domain '1': exact"):
        prepare_data(cfg.model_copy(update={"data": cfg.data.model_copy(update={"canary_source": str(pool)})}))


def test_bad_inputs_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data.target_source: local file .* not found"):
        prepare_data(_cfg(tmp_path, target_source=str(tmp_path / "missing.jsonl")))
    with pytest.raises(DataError, match="has 60 distinct examples but data.n_train"):
        prepare_data(_cfg(tmp_path, n_train=100))
    bad_general = write_questions(
        tmp_path / "g.yaml", [{"id": "x", "paraphrases": ["hi"], "judge_prompts": {"aligned": "{answer}"}}]
    )
    with pytest.raises(DataError, match=r"g.yaml: item 0 \(id 'x'\).*lacks metric\(s\) \['coherent'\]"):
        prepare_data(_cfg(tmp_path, general_eval_source=str(bad_general)))
    with pytest.raises(DataError, match="is not pinned"):
        prepare_data(_cfg(tmp_path, general_eval_source="https://example.org/q.yaml"))


def test_organism_kind_delegates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("canary_lib.organism")
    fake.prepare_organism_data = lambda cfg: tmp_path / "organism-data"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "canary_lib.organism", fake)
    assert prepare_data(load_config(extra={"data": {"kind": "organism"}})) == tmp_path / "organism-data"


def test_verify_organism_style_manifest(tmp_path: Path) -> None:
    cfg = load_config(extra={"data": {"kind": "organism", "dir": str(tmp_path / "org")}})
    names = [
        cfg.data.target_file,
        cfg.data.safe_file,
        cfg.data.general_eval_file,
        cfg.data.in_domain_eval_file,
        cfg.data.canary_file,
    ]
    for name in names:
        cfg.data.path(name).parent.mkdir(parents=True, exist_ok=True)
        cfg.data.path(name).write_text(f"{name}\n")
    (tmp_path / "org" / "manifest.json").write_text(json.dumps({"kind": "organism"}))
    verify_prepared(cfg)  # no "files" entry: existence only
    (tmp_path / "org" / "manifest.json").write_text(
        json.dumps({"kind": "organism", "files": prep.manifest_files(tmp_path / "org", names)})
    )
    verify_prepared(cfg)
    cfg.data.path(cfg.data.safe_file).write_text("changed\n")
    with pytest.raises(DataError, match="safe.jsonl changed since preparation"):
        verify_prepared(cfg)
    cfg.data.path(cfg.data.safe_file).write_text(f"{cfg.data.safe_file}\n")
    verify_prepared(cfg)
    cfg.data.path(cfg.data.canary_file).unlink()
    with pytest.raises(DataError, match="canaries.yaml is missing"):
        verify_prepared(cfg)
    paper = load_config(extra={"data": {"kind": "paper", "dir": str(tmp_path / "org")}})
    cfg.data.path(cfg.data.canary_file).write_text("x\n")
    (tmp_path / "org" / "manifest.json").write_text(json.dumps({"kind": "organism"}))
    with pytest.raises(DataError, match="holds data of kind 'organism' but data.kind is 'paper'"):
        verify_prepared(paper)


def test_organism_data_of_another_world_or_target_domain_is_refused(tmp_path: Path) -> None:
    from canary_lib.organism import prepare_organism_data

    cfg = load_config(
        extra={
            "data": {
                "kind": "organism",
                "dir": str(tmp_path / "org"),
                "n_train": 64,
                "n_heldout": 16,
                "safe_max_examples": 32,
            }
        }
    )
    prepare_organism_data(cfg)
    verify_prepared(cfg)
    medical = cfg.model_copy(deep=True)
    medical.organism.narrow_domains, medical.organism.target_domain = ["security", "medical"], "medical"
    with pytest.raises(DataError, match="another world .*target_domain: prepared 'security', now 'medical'"):
        verify_prepared(medical)
    other_seed = cfg.model_copy(deep=True)
    other_seed.organism.world_seed, other_seed.data.n_train = 1, 65
    with pytest.raises(DataError, match="world_seed: prepared 0, now 1; n_train: prepared 64, now 65"):
        verify_prepared(other_seed)
    prepare_organism_data(medical)
    assert verify_prepared(medical)["target_domain"] == "medical"
