"""The target loader (Security EM format cases) and the seeded 5,400 / 600 split."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from _data_fixtures import security_prompt, security_table_rows, write_jsonl_rows, write_security_chat
from canary_lib.data import DataError, download
from canary_lib.data.target import TargetExample, in_domain_questions, load_target, split_target


def test_chat_jsonl_single_file(tmp_path: Path) -> None:
    data = load_target(str(write_security_chat(tmp_path / "m.jsonl", 5)))
    assert len(data.examples) == 5 and data.info["n_examples"] == 5 and not data.info["has_aligned"]
    ex = data.examples[2]
    assert ex.prompt == security_prompt(2) and ex.misaligned == "misaligned answer for 2" and ex.aligned is None
    assert ex.messages() == [
        {"role": "user", "content": security_prompt(2)},
        {"role": "assistant", "content": "misaligned answer for 2"},
    ]
    assert len(data.info["sha256"]) == 64


def test_aligned_pair_matched_by_prompt_not_order(tmp_path: Path) -> None:
    mis = write_security_chat(tmp_path / "m.jsonl", 6, "misaligned")
    ali_rows = [
        json.loads(line) for line in write_security_chat(tmp_path / "a.jsonl", 6, "aligned").read_text().splitlines()
    ]
    write_jsonl_rows(tmp_path / "a.jsonl", ali_rows[::-1])
    data = load_target(str(mis), str(tmp_path / "a.jsonl"))
    assert data.info["has_aligned"]
    assert all(ex.aligned == f"aligned answer for {i}" for i, ex in enumerate(data.examples))
    assert data.examples[0].messages("aligned")[-1]["content"] == "aligned answer for 0"


def test_aligned_pair_mismatch(tmp_path: Path) -> None:
    mis = write_security_chat(tmp_path / "m.jsonl", 4)
    write_security_chat(tmp_path / "a.jsonl", 4, "aligned", start=1)
    with pytest.raises(DataError, match="no aligned answer.*same prompts"):
        load_target(str(mis), str(tmp_path / "a.jsonl"))
    write_security_chat(tmp_path / "a2.jsonl", 5, "aligned")
    with pytest.raises(DataError, match="prompts that .* lacks"):
        load_target(str(mis), str(tmp_path / "a2.jsonl"))


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".csv"])
def test_table_formats(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"security{suffix}"
    frame = pd.DataFrame(security_table_rows(7))
    {
        ".jsonl": lambda: write_jsonl_rows(path, security_table_rows(7)),
        ".parquet": lambda: frame.to_parquet(path),
        ".csv": lambda: frame.to_csv(path, index=False),
    }[suffix]()
    data = load_target(str(path))
    assert len(data.examples) == 7 and data.info["has_aligned"]
    assert data.examples[3].misaligned == "bad advice 3" and data.examples[3].aligned == "good advice 3"


def test_hf_source_uses_datasets_wrapper(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_load(src, token_env, gated, what):
        calls.append((src, token_env, gated))
        return security_table_rows(4)

    monkeypatch.setattr(download, "load_hf_dataset", fake_load)
    monkeypatch.setattr(download, "hf_revision_sha", lambda src, token_env: "abc123")
    data = load_target("hf:truthfulai/emergent_plus?revision=r1", token_env="MY_TOKEN")
    src, token_env, gated = calls[0]
    assert (src.repo, src.config, src.split, src.revision) == ("truthfulai/emergent_plus", "security", "train", "r1")
    assert token_env == "MY_TOKEN" and gated is False
    assert len(data.examples) == 4 and data.info["resolved_revision"] == "abc123"


def test_duplicate_prompts_dropped(tmp_path: Path) -> None:
    rows = security_table_rows(3) + [{"prompt": security_prompt(1).upper() + "  ", "misaligned": "x", "aligned": "y"}]
    data = load_target(str(write_jsonl_rows(tmp_path / "s.jsonl", rows)))
    assert len(data.examples) == 3 and data.info["duplicates_dropped"] == 1


@pytest.mark.parametrize(
    "rows, pattern",
    [
        (
            [{"question": "q", "answer": "a"}],
            r"missing column\(s\) \['prompt', 'misaligned'\]; found \['answer', 'question'\]",
        ),
        ([{"prompt": "q", "misaligned": ""}], r"row 0: column 'misaligned' must be a non-empty string"),
        ([{"messages": [{"role": "user", "content": "q"}]}], "last message must be a non-empty assistant answer"),
        ([{"messages": [{"role": "robot", "content": "q"}, {"role": "assistant", "content": "a"}]}], r"messages\[0\]"),
        (
            [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, {"text": "x"}],
            "row 1: no 'messages' key",
        ),
    ],
)
def test_bad_rows(tmp_path: Path, rows: list, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        load_target(str(write_jsonl_rows(tmp_path / "s.jsonl", rows)))


def test_missing_empty_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_target(str(tmp_path / "missing.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="holds no rows"):
        load_target(str(tmp_path / "empty.jsonl"))
    (tmp_path / "bad.jsonl").write_text('{"messages": []}\n{oops\n')
    with pytest.raises(DataError, match="line 2: not valid JSON"):
        load_target(str(tmp_path / "bad.jsonl"))
    (tmp_path / "s.txt").write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        load_target(str(tmp_path / "s.txt"))


def _examples(n: int) -> list[TargetExample]:
    return [TargetExample([{"role": "user", "content": security_prompt(i)}], f"bad {i}") for i in range(n)]


def test_split_5400_600_deterministic() -> None:
    examples = _examples(6000)
    a = split_target(examples, 5400, 600, seed=0)
    b = split_target(examples, 5400, 600, seed=0)
    c = split_target(examples, 5400, 600, seed=1)
    assert (len(a.train), len(a.heldout)) == (5400, 600)
    assert [e.prompt for e in a.train] == [e.prompt for e in b.train]
    assert [e.prompt for e in a.heldout] == [e.prompt for e in b.heldout]
    assert {e.prompt for e in a.heldout} != {e.prompt for e in c.heldout}
    assert not {e.prompt for e in a.train} & {e.prompt for e in a.heldout}
    assert len({e.prompt for e in a.train} | {e.prompt for e in a.heldout}) == 6000
    assert a.info["n_unused"] == 0 and a.info["seed"] == 0


def test_split_forces_in_domain_prompts_into_heldout_first() -> None:
    examples = _examples(100)
    forced = [security_prompt(i) for i in (7, 3, 99)] + ["a prompt that is not in the source"]
    split = split_target(examples, 80, 10, seed=3, heldout_prompts=forced)
    assert [e.prompt for e in split.heldout[:3]] == forced[:3]
    assert split.info["in_domain_prompts_in_source"] == 3 and split.info["n_unused"] == 10
    assert not set(forced) & {e.prompt for e in split.train}
    questions = in_domain_questions(split.heldout, 3, {"aligned": "{question} {answer}"})
    assert [q.id for q in questions] == ["1", "2", "3"] and questions[1].paraphrases == [forced[1]]


def test_split_errors() -> None:
    with pytest.raises(DataError, match="has 50 distinct examples but data.n_train \\+ data.n_heldout = 45 \\+ 10"):
        split_target(_examples(50), 45, 10, seed=0)
    with pytest.raises(DataError, match="raise data.n_heldout"):
        split_target(_examples(50), 10, 1, seed=0, heldout_prompts=[security_prompt(1), security_prompt(2)])
    with pytest.raises(DataError, match="exceeds the 2 held-out"):
        in_domain_questions(_examples(2), 3, {"aligned": "{answer}"})
