"""read_records: the table formats the data loaders accept, gzipped JSONL included."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from canary_lib.data import DataError
from canary_lib.data._io import read_records, table_suffix


def test_gzipped_jsonl_reads_like_jsonl(tmp_path: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": f"question {i} é"}]} for i in range(3)]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) + "\n"
    (tmp_path / "d.jsonl").write_text(text, encoding="utf-8")
    (tmp_path / "d.jsonl.gz").write_bytes(gzip.compress(text.encode("utf-8")))
    assert read_records(tmp_path / "d.jsonl.gz") == read_records(tmp_path / "d.jsonl") == rows
    assert table_suffix(tmp_path / "D.JSONL.GZ") == ".jsonl.gz" and table_suffix("x.parquet") == ".parquet"


def test_gzip_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "plain.jsonl.gz").write_text('{"a": 1}\n')  # not compressed
    with pytest.raises(DataError, match=r"plain.jsonl.gz: could not read it .*gzip-compressed"):
        read_records(tmp_path / "plain.jsonl.gz", "data.target_source")
    whole = gzip.compress(b'{"a": 1}\n' * 1000)
    (tmp_path / "cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"cut.jsonl.gz: could not read it"):
        read_records(tmp_path / "cut.jsonl.gz")
    (tmp_path / "bad.jsonl.gz").write_bytes(gzip.compress(b'{"a": 1}\n[1, 2]\n'))
    with pytest.raises(DataError, match="bad.jsonl.gz line 2: expected a JSON object, got list"):
        read_records(tmp_path / "bad.jsonl.gz")
    (tmp_path / "latin.jsonl").write_bytes('{"a": "\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match="latin.jsonl: not UTF-8 text"):
        read_records(tmp_path / "latin.jsonl")
