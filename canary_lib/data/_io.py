"""Small file helpers shared by the data modules: JSONL, table readers, content hashes (atomic writes and file
digests: canary_lib.fileio)."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from canary_lib.fileio import write_text_atomic


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """One JSON object per line, UTF-8, non-ASCII kept as is; written atomically."""
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return write_text_atomic(path, text)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


TABLE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet", ".csv")


def table_suffix(path: str | Path) -> str:
    """The file type of a table: ".jsonl.gz" for gzipped JSONL (the model-organisms datasets), else the suffix."""
    name = Path(path).name.lower()
    return ".jsonl.gz" if name.endswith(".jsonl.gz") else Path(name).suffix


def read_records(path: str | Path, what: str = "file") -> list[dict[str, Any]]:
    """Rows of a local JSONL (optionally gzipped) / JSON-list / parquet / CSV file as dicts.

    Raises:
        DataError: missing file, unsupported suffix, a damaged gzip file, or a line that is not a JSON object
            (with its line number).
    """
    from canary_lib.data.errors import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what}: file {path} not found; check the path")
    suffix = table_suffix(path)
    try:
        return _read_records(path, suffix, what)
    except UnicodeDecodeError as exc:
        raise DataError(f"{what}: {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _read_records(path: Path, suffix: str, what: str) -> list[dict[str, Any]]:
    from canary_lib.data.errors import DataError

    if suffix in (".jsonl", ".jsonl.gz"):
        try:
            return _read_jsonl(path, suffix == ".jsonl.gz", what)
        except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
            raise DataError(
                f"{what}: {path}: could not read it ({exc}); is the file complete and, for .jsonl.gz, gzip-compressed?"
            ) from None
    if suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{what}: {path}: not valid JSON ({exc.msg})") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise DataError(f"{what}: {path}: expected a JSON list of objects")
        return rows
    if suffix in (".parquet", ".csv"):
        import pandas as pd

        frame = pd.read_parquet(path) if suffix == ".parquet" else pd.read_csv(path, keep_default_na=False)
        frame = frame.astype(object).where(frame.notna(), None)  # NaN/NA -> None, numpy scalars kept as objects
        return frame.to_dict(orient="records")
    raise DataError(f"{what}: {path}: unsupported file type {suffix!r}; use one of {', '.join(TABLE_SUFFIXES)}")


def _read_jsonl(path: Path, gzipped: bool, what: str) -> list[dict[str, Any]]:
    from canary_lib.data.errors import DataError

    rows = []
    with gzip.open(path, "rt", encoding="utf-8") if gzipped else open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{what}: {path} line {lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{what}: {path} line {lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def as_rows(dataset: Any) -> list[dict[str, Any]]:
    """A `datasets.Dataset` (or any iterable of dicts) as a list of row dicts; `to_list` is much faster."""
    return dataset.to_list() if hasattr(dataset, "to_list") else [dict(row) for row in dataset]
