"""Read and write records: JSON Lines, Parquet, a saved Hugging Face `datasets` folder or a hub id.

Each row is first recognised and converted from the ecosystem's formats (TRL, HH-RLHF,
ratings, ...: data/formats.py; `InputOptions` forces a format, picks a split, renames
columns), then validated. Reading stops at the first bad record with a `DataError` whose
message names the file, the line (the row for Parquet / datasets) and the field:

    prompts.jsonl:7: field 'prompt': missing (give 'prompt' or 'messages')

Writing goes to a temporary file in the same folder, then `os.replace`, so a crash never
leaves a half-written output.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from alignloop.data import hf
from alignloop.data.formats import FormatError, convert, detect, hint, rename_columns, to_trl

R = TypeVar("R", bound=BaseModel)


@dataclass(frozen=True)
class InputOptions:
    """How input files are read: `format` forces one (data/formats.py FORMATS; None recognises
    each row), `split` is the split of a DatasetDict folder or hub id without ':SPLIT' (default
    train), `columns` maps alignloop field -> the dataset's column name."""

    format: str | None = None
    split: str | None = None
    columns: dict[str, str] = field(default_factory=dict)


_input_options: ContextVar[InputOptions] = ContextVar("input_options", default=InputOptions())


@contextmanager
def reading(options: InputOptions):
    """Every read inside the block uses `options` (the commands' --input-format / --split / --columns)."""
    token = _input_options.set(options)
    try:
        yield
    finally:
        _input_options.reset(token)


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


def parse_record(record_type: type[R], data: Any, where: str, note: str = "") -> R:
    """`data` validated as `record_type`; `note` (what the row was read as) ends an error."""
    if not isinstance(data, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(data).__name__}")
    try:
        return record_type.model_validate(data)
    except ValidationError as err:
        raise DataError(f"{where}: {describe_error(err)}{note}") from None


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


def iter_rows(path: str | Path, options: InputOptions | None = None) -> Iterator[tuple[str, Any]]:
    """(where, raw row with --columns renamed) of a .jsonl / .parquet file, a saved `datasets`
    folder or a hub id (each optionally NAME:SPLIT); `where` is 'file:line' or 'file: row N'."""
    opts = options or _input_options.get()
    name, split = hf.split_spec(str(path))
    split = split or opts.split
    path = Path(name)
    try:
        if path.is_dir():
            rows, label = enumerate(hf.iter_dataset(hf.load_folder(path, split)), start=1), f"{path}: row"
        elif path.suffix == ".parquet" and path.exists():
            import pyarrow.parquet as pq

            rows, label = enumerate(hf.iter_dataset(pq.read_table(path).to_pylist()), start=1), f"{path}: row"
        elif path.exists():
            rows, label = _iter_jsonl(path), f"{path}:"
        elif hf.is_hub_id(name):
            rows, label = enumerate(hf.iter_dataset(hf.load_hub(name, split)), start=1), f"{name}[{split or 'train'}]: row"
        else:
            raise DataError(f"{path}: no such file")
    except hf.DatasetSourceError as err:
        raise DataError(str(err)) from None
    for n, row in rows:
        where = f"{label}{n}" if label.endswith(":") else f"{label} {n}"
        if isinstance(row, dict) and opts.columns:
            try:
                row = rename_columns(row, opts.columns)
            except FormatError as err:
                raise DataError(f"{where}: {err}") from None
        yield where, row


def current_input_options() -> InputOptions:
    """The options of the enclosing `reading` block (defaults outside one)."""
    return _input_options.get()


def convert_row(where: str, row: Any, forced: str | None = None) -> tuple[str, Any]:
    """(format, alignloop-shaped row): `row` read as `forced` or as the format its fields show."""
    if not isinstance(row, dict):
        return "alignloop", row
    fmt = forced or detect(row)
    try:
        return fmt, convert(fmt, row)
    except FormatError as err:
        raise DataError(f"{where}: {err}{hint(fmt, row)}") from None


def iter_converted(path: str | Path, options: InputOptions | None = None) -> Iterator[tuple[str, str, Any]]:
    """(where, format, alignloop-shaped row) of every row (see `iter_rows` and `convert_row`)."""
    opts = options or _input_options.get()
    for where, row in iter_rows(path, opts):
        yield where, *convert_row(where, row, opts.format)


def iter_records(path: str | Path, record_type: type[R], options: InputOptions | None = None) -> Iterator[R]:
    """Validated records from a .jsonl / .parquet file, a saved `datasets` folder or a hub id,
    in alignloop's format or one of the ecosystem's (data/formats.py)."""
    for where, fmt, data in iter_converted(path, options):
        yield parse_record(record_type, data, where, hint(fmt, data))


def read_records(path: str | Path, record_type: type[R], options: InputOptions | None = None) -> list[R]:
    records = list(iter_records(path, record_type, options))
    if not records:
        raise DataError(f"{Path(path)}: no records")
    return records


def read_sources(spec: str | Path, record_type: type[R], options: InputOptions | None = None) -> list[R]:
    """`read_records` of several sources joined with commas ("a.jsonl,b.jsonl"), in order; a
    path that exists as given (commas and all) is one source."""
    text = str(spec)
    parts = [text] if Path(text).exists() or "," not in text else [p.strip() for p in text.split(",") if p.strip()]
    return [r for part in parts for r in read_records(part, record_type, options)]


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


@contextmanager
def atomic_folder(path: str | Path):
    """Yield a temporary folder beside `path`; it replaces `path` only if the block succeeds
    (callers check first that an existing `path` may be replaced)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
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


def write_table(path: str | Path, rows: Iterable[dict]) -> int:
    """Rows as .jsonl or .parquet (by suffix), else a `datasets` folder (save_to_disk); atomic."""
    if Path(path).suffix in (".jsonl", ".parquet"):
        return write_records(path, rows)
    if Path(path).exists() and not hf.is_dataset_folder(path):
        raise hf.DatasetSourceError(f"{path}: exists and is no `datasets` folder; give a new folder (or a .jsonl / "
                                    ".parquet file)")
    rows = list(rows)
    with atomic_folder(path) as tmp:
        hf.save_folder(tmp, rows)
    return len(rows)


def write_as(path: str | Path, records: list, fmt: str) -> tuple[int, str]:
    """(rows written, summary) of `records` written as alignloop records or TRL rows (`fmt`:
    alignloop | trl, formats.to_trl) with `write_table`; a DataError when they cannot be."""
    try:
        rows, summary = to_trl(records) if fmt == "trl" else ([record_dict(r) for r in records],
                                                              f"{len(records)} records")
        return write_table(path, rows), summary
    except (FormatError, hf.DatasetSourceError) as err:
        raise DataError(f"{path}: {err}") from None


def to_dataset(records: Iterable[BaseModel | dict]):
    """Records as a Hugging Face `datasets.Dataset` (save it with `.save_to_disk(folder)`)."""
    import datasets

    return datasets.Dataset.from_list([record_dict(r) for r in records])


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one line and flush it to disk (metrics, logs): a crash loses at most this line."""
    append_lines(path, [record])


def append_lines(path: str | Path, records: list[dict]) -> int:
    """Append records as JSON lines in one write, flushed to disk; the number appended."""
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records))
        f.flush()
        os.fsync(f.fileno())
    return len(records)


def read_lines(path: str | Path, missing_ok: bool = False) -> list[dict]:
    """The JSON lines of a file this project wrote (blank lines skipped); [] for a missing file
    when `missing_ok`."""
    path = Path(path)
    if missing_ok and not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
