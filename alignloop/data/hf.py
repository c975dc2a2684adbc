"""Hugging Face `datasets` as inputs and outputs (no torch here).

Every command that reads a file also reads (data/io.py):

    runs/ds                  a `save_to_disk` folder; of a DatasetDict, the split --split (default train)
    runs/ds:test             the same, split `test`
    data.parquet             a Parquet file
    Anthropic/hh-rlhf        a hub id, `datasets.load_dataset(id, split=...)` (needs a network or the
    Anthropic/hh-rlhf:test   local hub cache); the split after ':' or --split, default train

`save_folder` writes rows as a `datasets` folder (data/io.py's `write_table` and `write_as`
write any of these outputs, atomically). It never imports data/io.py, which imports it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".txt")


class DatasetSourceError(ValueError):
    """A dataset that cannot be opened (a missing split, a DatasetDict without one)."""


def split_spec(name: str) -> tuple[str, str | None]:
    """'ID:test' -> ('ID', 'test'); a name without a ':split' suffix -> (name, None)."""
    head, sep, tail = name.rpartition(":")
    if sep and head and tail and "/" not in tail and not Path(name).exists():
        return head, tail
    return name, None


def is_hub_id(name: str) -> bool:
    """'owner/name' or 'name' that is no local path and no file name."""
    return bool(HUB_ID.match(name)) and not name.endswith(FILE_SUFFIXES) and not name.startswith(".")


def _pick_split(dataset, label: str, split: str | None):
    import datasets

    if not isinstance(dataset, datasets.DatasetDict):
        if split is not None:
            raise DatasetSourceError(f"{label}: a single dataset, not a DatasetDict; drop the split '{split}'")
        return dataset
    want = split or "train"
    if want not in dataset:
        raise DatasetSourceError(f"{label}: no split '{want}' (splits: {', '.join(dataset)}; give one with "
                                 f"--split or {label}:SPLIT)")
    return dataset[want]


def load_folder(path: Path, split: str | None):
    """A `save_to_disk` folder (a Dataset, or one split of a DatasetDict)."""
    import datasets

    return _pick_split(datasets.load_from_disk(str(path)), str(path), split)


def load_hub(name: str, split: str | None):
    """A dataset from the Hugging Face hub (or its local cache): `datasets.load_dataset(name, split)`."""
    import datasets

    try:
        return datasets.load_dataset(name, split=split or "train")
    except Exception as err:  # offline, unknown id, no such split: one line, not a traceback
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise DatasetSourceError(f"{name}: no such file or folder, and not loadable as a Hugging Face hub dataset "
                                 f"({type(err).__name__}: {first})") from None


def iter_dataset(rows) -> Iterator[dict[str, Any]]:
    for row in rows:
        yield {k: v for k, v in row.items() if v is not None}


def is_dataset_folder(path: str | Path) -> bool:
    """A folder `save_to_disk` wrote (a Dataset or a DatasetDict)."""
    return (Path(path) / "state.json").exists() or (Path(path) / "dataset_dict.json").exists()


def save_folder(path: str | Path, rows: list[dict]) -> None:
    """Rows as a `datasets` folder (save_to_disk) at `path`."""
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(path))
