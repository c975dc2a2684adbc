"""`alignloop data inspect` and `alignloop data convert` (no torch unless a tokenizer is named).

    alignloop data inspect hh.jsonl --tokenizer smollm2-135m-instruct
    alignloop data inspect Anthropic/hh-rlhf:test --limit 1000
    alignloop data convert hh.jsonl --to alignloop --out comparisons.jsonl
    alignloop data convert runs/consensus.jsonl --to trl --out prefs.parquet      # or a datasets folder

Both read any format of data/formats.py; `--input-format` (alias `--format`) forces one,
`--split` and `--columns` are as for every command that reads files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import click
from pydantic import Field

from alignloop.config import DEFAULT_MODEL, StageConfig, config_command


class InspectConfig(StageConfig):
    """`alignloop data inspect`."""

    path: Path = Field(..., description="A .jsonl / .parquet file, a `datasets` folder or a hub id (NAME:SPLIT picks a split).")
    tokenizer: str = Field(DEFAULT_MODEL, description="Tokenizer for the lengths: a model name or folder; 'none' counts words.")
    limit: int | None = Field(None, ge=1, description="Read only the first N rows.")
    json_output: bool = Field(False, description="Print the report as JSON.")


class ConvertConfig(StageConfig):
    """`alignloop data convert`."""

    path: Path = Field(..., description="Input: a .jsonl / .parquet file, a `datasets` folder or a hub id, any format.")
    to: Literal["alignloop", "trl"] = Field(..., description="Output format: alignloop records, or TRL's formats "
                                            "(preference pairs with p / weight columns, KTO, SFT, prompt-only).")
    out: Path = Field(..., description="Output: .jsonl, .parquet, or a folder (a `datasets` save_to_disk folder).")


def run_inspect(cfg: InspectConfig) -> dict:
    from alignloop.data.inspect import inspect_data, report_lines

    report = inspect_data(cfg.path, tokenizer=cfg.tokenizer, limit=cfg.limit)
    click.echo(json.dumps(report, indent=1) if cfg.json_output else "\n".join(report_lines(report)))
    return report


def run_convert(cfg: ConvertConfig) -> int:
    from alignloop.data.formats import hint, record_kind
    from alignloop.data.io import DataError, iter_converted, parse_record, write_as
    from alignloop.data.records import RECORD_TYPES

    records, formats = [], {}
    for where, fmt, data in iter_converted(cfg.path):
        kind = record_kind(data) if isinstance(data, dict) else "prompt"
        records.append(parse_record(RECORD_TYPES[kind], data, where, hint(fmt, data)))
        formats[fmt] = formats.get(fmt, 0) + 1
    if not records:
        raise DataError(f"{cfg.path}: no records")
    n, summary = write_as(cfg.out, records, cfg.to)
    read_as = ", ".join(f"{f} ({c})" for f, c in formats.items())
    click.echo(f"read {cfg.path} as {read_as}: {summary}; wrote {n} rows to {cfg.out}")
    return n


inspect_command = config_command(InspectConfig, run_inspect, "inspect", positional=("path",),
                                 help="The format recognised, record counts, K, ties, soft labels, lengths in "
                                      "tokens, duplicate prompts and the first problem of a data file.")
convert_command = config_command(ConvertConfig, run_convert, "convert", positional=("path",),
                                 help="Convert a data file to alignloop records or to TRL's formats.")
for _command in (inspect_command, convert_command):  # `--format` reads naturally here: the output is --to
    next(p for p in _command.params if p.name == "input_format").opts.append("--format")

group = click.Group("data", help="Data files: inspect what one holds, convert between formats.",
                    commands={"inspect": inspect_command, "convert": convert_command},
                    context_settings={"max_content_width": 110})
