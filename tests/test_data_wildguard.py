"""WildGuardMix benign subset: filtering, refusals, local formats, the gated-dataset token check."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pandas as pd
import pytest

from _data_fixtures import wildguard_rows, write_jsonl_rows
from canary_lib.data import DataError, download
from canary_lib.data.wildguard import load_safe, select_benign

BENIGN = {0, 1, 2, 8, 9, 10}  # row numbers of the fixture that pass the filter (2 and 9 are refusals)


def _row_numbers(chats: list) -> set[int]:
    return {int(chat[0]["content"].split()[2]) for chat in chats}


def test_benign_filter_keeps_refusals_by_default() -> None:
    chats, counts = select_benign(wildguard_rows(), drop_refusals=False)
    assert _row_numbers(chats) == BENIGN
    assert counts == {
        "rows": 12,
        "unharmful_prompt": 9,
        "with_response": 7,
        "harmful_response_dropped": 1,
        "refusals": 2,
        "refusals_dropped": 0,
        "selected": 6,
    }
    assert all([m["role"] for m in chat] == ["user", "assistant"] for chat in chats)


def test_drop_refusals() -> None:
    chats, counts = select_benign(wildguard_rows(), drop_refusals=True)
    assert _row_numbers(chats) == BENIGN - {2, 9}
    assert counts["refusals_dropped"] == 2 and counts["selected"] == 4


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_local_files_seeded_order_and_cap(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"wg{suffix}"
    if suffix == ".parquet":
        pd.DataFrame(wildguard_rows()).to_parquet(path)
    else:
        write_jsonl_rows(path, wildguard_rows())
    a = load_safe(str(path), seed=5)
    b = load_safe(str(path), seed=5)
    assert a.examples == b.examples and _row_numbers(a.examples) == BENIGN
    capped = load_safe(str(path), max_examples=3, seed=5)
    assert capped.examples == a.examples[:3] and capped.info["n_examples"] == 3
    assert a.info["counts"]["selected"] == 6 and len(a.info["sha256"]) == 64


def test_chat_jsonl_used_as_is(tmp_path: Path) -> None:
    rows = [
        {"messages": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": "hello"}]}
        for i in range(4)
    ]
    data = load_safe(str(write_jsonl_rows(tmp_path / "safe.jsonl", rows)), seed=0)
    assert sorted(c[0]["content"] for c in data.examples) == [f"hi {i}" for i in range(4)]


def test_missing_columns_and_no_benign_rows(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing column\(s\) \['response', 'prompt_harm_label'\]"):
        load_safe(str(write_jsonl_rows(tmp_path / "a.jsonl", [{"prompt": "x"}])))
    rows = [r for r in wildguard_rows() if r["prompt_harm_label"] == "harmful"]
    with pytest.raises(DataError, match="no benign rows"):
        load_safe(str(write_jsonl_rows(tmp_path / "b.jsonl", rows)))
    no_refusal_col = [{k: v for k, v in r.items() if k != "response_refusal_label"} for r in wildguard_rows()]
    with pytest.raises(DataError, match="response_refusal_label"):
        load_safe(str(write_jsonl_rows(tmp_path / "c.jsonl", no_refusal_col)), drop_refusals=True)
    with pytest.raises(DataError, match="not found"):
        load_safe(str(tmp_path / "nope.parquet"))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="holds no rows"):
        load_safe(str(tmp_path / "empty.jsonl"))


def test_gated_dataset_without_token_fails_before_any_download(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MY_HF_TOKEN", raising=False)
    exploding = types.ModuleType("datasets")
    exploding.load_dataset = lambda *a, **k: pytest.fail("must not try to download")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", exploding)
    with pytest.raises(DataError, match=r"gated dataset and \$MY_HF_TOKEN is not set.*export MY_HF_TOKEN"):
        load_safe("hf:allenai/wildguardmix", token_env="MY_HF_TOKEN")


def test_gated_dataset_with_token_passes_config_and_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_HF_TOKEN", "hf_test")
    calls = []
    fake = types.ModuleType("datasets")

    def load_dataset(repo, config, split, revision, token):
        calls.append((repo, config, split, revision, token))
        return wildguard_rows()

    fake.load_dataset = load_dataset  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", fake)
    monkeypatch.setattr(download, "hf_revision_sha", lambda src, token_env: None)
    data = load_safe("hf:allenai/wildguardmix?revision=abc", token_env="MY_HF_TOKEN")
    assert calls == [("allenai/wildguardmix", "wildguardtrain", "train", "abc", "hf_test")]
    assert _row_numbers(data.examples) == BENIGN
