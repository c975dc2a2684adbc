"""Read and write records: JSON Lines, Parquet, or a saved Hugging Face `datasets` folder.

Reading validates every record and stops at the first bad one with a `DataError` whose
message names the file, the line (the row for Parquet / datasets) and the field:

    prompts.jsonl:7: field 'prompt': missing (give 'prompt' or 'messages')

Writing goes to a temporary file in the same folder, then `os.replace`, so a crash never
leaves a half-written output.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

R = TypeVar("R", bound=BaseModel)


class DataError(ValueError):
    """Bad input data; the message names file, line and field."""


def describe_error(err: ValidationError) -> str:
    """One readable line out of a pydantic error: the first problem, with its field."""
    first = err.errors()[0]
    loc = ".".join(str(x) for x in first["loc"])
    msg = first["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if msg.startswith("field '"):
        return msg
    if first["type"] == "missing":
        return f"field '{loc}': missing"
    if first["type"] == "extra_forbidden":
        return f"field '{loc}': unknown field"
    return f"field '{loc}': {msg}" if loc else msg


def parse_record(record_type: type[R], data: Any, where: str) -> R:
    if not isinstance(data, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(data).__name__}")
    try:
        return record_type.model_validate(data)
    except ValidationError as err:
        raise DataError(f"{where}: {describe_error(err)}") from None


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{path}:{lineno}: not valid UTF-8 (byte {err.start})") from None
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: invalid JSON ({err.msg} at column {err.colno})") from None


def _iter_table(path: Path) -> Iterator[tuple[int, Any]]:
    if path.is_dir():
        import datasets  # only when a saved dataset folder is read

        rows = datasets.load_from_disk(str(path))
        if isinstance(rows, datasets.DatasetDict):
            raise DataError(f"{path}: a DatasetDict; point at one split's folder")
        iterator = iter(rows)
    else:
        import pyarrow.parquet as pq

        iterator = iter(pq.read_table(path).to_pylist())
    for i, row in enumerate(iterator, start=1):
        yield i, {k: v for k, v in row.items() if v is not None}


def iter_records(path: str | Path, record_type: type[R]) -> Iterator[R]:
    """Validated records from a .jsonl / .parquet file or a saved `datasets` folder."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    kind = "row" if path.is_dir() or path.suffix == ".parquet" else "line"
    rows = _iter_table(path) if kind == "row" else _iter_jsonl(path)
    for n, data in rows:
        yield parse_record(record_type, data, f"{path}:{n}" if kind == "line" else f"{path}: row {n}")


def read_records(path: str | Path, record_type: type[R]) -> list[R]:
    records = list(iter_records(path, record_type))
    if not records:
        raise DataError(f"{Path(path)}: no records")
    return records


def record_dict(record: BaseModel | dict) -> dict:
    """A record as a plain dict without unset optional fields (keeps files readable)."""
    if isinstance(record, BaseModel):
        return record.model_dump(mode="json", exclude_none=True, exclude_defaults=False)
    return record


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | Path, records: Iterable[BaseModel | dict]) -> int:
    """Write records atomically; returns how many were written."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(record_dict(r), ensure_ascii=False) + "\n")
            n += 1
    return n


def write_records(path: str | Path, records: Iterable[BaseModel | dict]) -> int:
    """Write .jsonl or .parquet (by suffix) atomically."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = [record_dict(r) for r in records]
        with atomic_path(path) as tmp:
            pq.write_table(pa.Table.from_pylist(rows), tmp)
        return len(rows)
    return write_jsonl(path, records)


def to_dataset(records: Iterable[BaseModel | dict]):
    """Records as a Hugging Face `datasets.Dataset` (save it with `.save_to_disk(folder)`)."""
    import datasets

    return datasets.Dataset.from_list([record_dict(r) for r in records])


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one line and flush it to disk (metrics, logs): a crash loses at most this line."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
