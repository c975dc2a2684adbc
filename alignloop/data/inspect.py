"""`alignloop data inspect`: what a data file holds, before a stage trains on it.

Reads every row as `alignloop reward` or `alignloop sft` would (data/io.py: any format of
data/formats.py), but does not stop at a bad record: it counts them and keeps the first
problem. The report (a dict, printed as lines or JSON):

    format      the format(s) the rows were read as, with counts
    records     counts by record type (comparison, binary, demonstration, samples, prompt)
    k           comparisons: how many have K responses, per K
    ties        comparisons with a tie in their ranking, and the tied pairs
    soft        comparisons with a soft label p (and how many are p = 0.5)
    labels      binary feedback: good / bad
    lengths     prompt (chat-templated) and response lengths in tokens of --tokenizer (or words)
    prompts     distinct prompts, prompts with several records, identical records
    problems    bad records (and the first, as `file:line: field ...: message`)
"""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from alignloop.data.formats import hint, record_kind
from alignloop.data.io import DataError, InputOptions, convert_row, current_input_options, iter_rows, parse_record
from alignloop.data.records import RECORD_TYPES, BinaryFeedback, Comparison, Samples


def _same_texts(record) -> str | None:
    """A problem of a comparison whose two responses in different tiers are one text."""
    if not isinstance(record, Comparison):
        return None
    tier = {i: t for t, group in enumerate(record.tiers()) for i in group}
    seen: dict[str, int] = {}
    for i, r in enumerate(record.responses):
        if r in seen and tier[seen[r]] != tier[i]:
            return f"responses {seen[r]} and {i} are the same text but ranked apart"
        seen.setdefault(r, i)
    return None


def length_summary(values: list[int]) -> dict[str, float] | None:
    """min / median / 95th percentile / max."""
    if not values:
        return None
    ordered = sorted(values)
    return {"min": ordered[0], "median": statistics.median(ordered),
            "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], "max": ordered[-1]}


class Lengths:
    """Prompt and response lengths in tokens of a tokenizer (chat-templated prompts), or words."""

    def __init__(self, tokenizer: str | None):
        self.unit = "words"
        self.tok = None
        if tokenizer and tokenizer != "none":
            from transformers import AutoTokenizer

            from alignloop.models.registry import resolve_model

            self.tok = AutoTokenizer.from_pretrained(resolve_model(tokenizer))
            self.unit = f"tokens of {tokenizer}"

    def prompts(self, chats: list[list[dict]]) -> list[int]:
        if self.tok is None:
            return [sum(len(m["content"].split()) for m in c) for c in chats]
        from alignloop.data.chat import render_prompt

        return self._count([render_prompt(self.tok, c) for c in chats])

    def responses(self, texts: list[str]) -> list[int]:
        return [len(t.split()) for t in texts] if self.tok is None else self._count(texts)

    def _count(self, texts: list[str], chunk: int = 1000) -> list[int]:
        out: list[int] = []
        for i in range(0, len(texts), chunk):
            out += [len(ids) for ids in self.tok(texts[i: i + chunk], add_special_tokens=False)["input_ids"]]
        return out


def inspect_data(path: str | Path, options: InputOptions | None = None, tokenizer: str | None = None,
                 limit: int | None = None) -> dict[str, Any]:
    """The report of one input (see the module docstring)."""
    formats, kinds, k, sources = Counter(), Counter(), Counter(), Counter()
    ties = tied_pairs = soft = soft_half = good = bad = problems = 0
    first_problem = None
    per_prompt: Counter = Counter()
    seen_records: Counter = Counter()
    chats, responses = [], []
    opts = options or current_input_options()
    rows = iter_rows(path, opts)
    n = 0
    while limit is None or n < limit:
        try:
            where, row = next(rows)
        except StopIteration:
            break
        except DataError as err:  # a line that is no JSON (or no UTF-8): the rest cannot be read
            if n == 0:
                raise
            problems += 1
            first_problem = first_problem or f"{err} (reading stopped there)"
            break
        n += 1
        try:
            fmt, data = convert_row(where, row, opts.format)
        except DataError as err:  # no record can be made of this row in its format
            problems += 1
            first_problem = first_problem or str(err)
            continue
        formats[fmt] += 1
        kind = record_kind(data) if isinstance(data, dict) else "prompt"
        try:
            record = parse_record(RECORD_TYPES[kind], data, where, hint(fmt, data))
        except DataError as err:
            problems += 1
            first_problem = first_problem or str(err)
            continue
        issue = _same_texts(record)
        if issue:
            problems += 1
            first_problem = first_problem or f"{where}: {issue}"
        kinds[kind] += 1
        key = record.chat_key()
        per_prompt[key] += 1
        chats.append(record.chat())
        if isinstance(record, (Comparison, Samples)):
            seen_records[(key, tuple(record.responses))] += 1
            responses += record.responses
        if isinstance(record, Comparison):
            k[len(record.responses)] += 1
            groups = [t for t in record.tiers() if len(t) > 1] if record.ranking is not None else []
            ties += bool(groups)
            tied_pairs += sum(len(t) * (len(t) - 1) // 2 for t in groups)
            soft += record.p is not None
            soft_half += record.p == 0.5
        elif isinstance(record, BinaryFeedback):
            good, bad = good + (record.label == 1), bad + (record.label == 0)
        if kind in ("comparison", "binary") and record.source:
            sources[record.source] += 1
        if kind in ("demonstration", "binary"):
            responses.append(record.response)
    lengths = Lengths(tokenizer)
    return {
        "path": str(path), "rows": n, "format": dict(formats.most_common()), "records": dict(kinds.most_common()),
        "k": dict(sorted(k.items())), "ties": {"records": ties, "pairs": tied_pairs},
        "soft": {"records": soft, "half": soft_half}, "labels": {"good": good, "bad": bad},
        "sources": dict(sources.most_common()),
        "lengths": {"unit": lengths.unit, "prompt": length_summary(lengths.prompts(chats)),
                    "response": length_summary(lengths.responses(responses))},
        "prompts": {"distinct": len(per_prompt), "with_several_records": sum(c > 1 for c in per_prompt.values()),
                    "most_records": max(per_prompt.values(), default=0),
                    "identical_records": sum(c - 1 for c in seen_records.values())},
        "problems": {"count": problems, "first": first_problem},
    }


def report_lines(report: dict[str, Any]) -> list[str]:
    """The report as a few readable lines."""
    def counts(d: dict) -> str:
        return ", ".join(f"{v} {key}" for key, v in d.items()) or "none"

    def span(s: dict | None) -> str:
        return "-" if s is None else f"min {s['min']}, median {s['median']:g}, p95 {s['p95']}, max {s['max']}"

    r = report
    fmts = r["format"]
    lines = [f"{r['path']}: {r['rows']} rows, read as " + (", ".join(f"{f} ({c})" for f, c in fmts.items()) or "-"),
             f"  records: {counts(r['records'])}"]
    if r["k"]:
        lines.append("  K (responses per comparison): " + ", ".join(f"{kk}: {c}" for kk, c in r["k"].items()))
        lines.append(f"  ties: {r['ties']['records']} comparisons with a tie ({r['ties']['pairs']} tied pairs); "
                     f"soft labels: {r['soft']['records']} ({r['soft']['half']} at p = 0.5)")
    if r["labels"]["good"] or r["labels"]["bad"]:
        lines.append(f"  binary labels: {r['labels']['good']} good, {r['labels']['bad']} bad")
    if r["sources"]:
        lines.append(f"  sources: {counts(r['sources'])}")
    templated = ", chat-templated" if r["lengths"]["unit"] != "words" else ""
    lines.append(f"  prompt length ({r['lengths']['unit']}{templated}): {span(r['lengths']['prompt'])}")
    lines.append(f"  response length ({r['lengths']['unit']}): {span(r['lengths']['response'])}")
    p = r["prompts"]
    lines.append(f"  prompts: {p['distinct']} distinct, {p['with_several_records']} in more than one record "
                 f"(at most {p['most_records']}); {p['identical_records']} identical records repeated")
    pr = r["problems"]
    lines.append(f"  problems: {pr['count']}" + (f"; first: {pr['first']}" if pr["first"] else ""))
    return lines
