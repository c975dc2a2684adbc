"""The data shapes of the ecosystem, read as alignloop records and written back (no torch here).

Every row a reader takes (data/io.py) is recognised by its fields and converted into the
alignloop record shape (DESIGN.md section 2) before it is validated; `--input-format` forces
one format for every row. One table, `FORMATS`, lists them:

    format        a row of it                                     becomes
    alignloop     alignloop's own records                         itself
    trl           prompt + chosen + rejected: strings, or message  a comparison [chosen, rejected],
                  lists (TRL preference, explicit prompt)           ranking [0, 1] (or its `p`)
    trl-implicit  chosen + rejected only: message lists or plain   the same; the prompt is their
                  strings (TRL preference, implicit prompt)         common prefix of turns (of text)
    hh-rlhf       chosen + rejected strings of "\\n\\nHuman:" /     the same, each transcript parsed
                  "\\n\\nAssistant:" turns (Anthropic HH-RLHF)        into messages first
    kto           prompt + completion + label: bool (TRL unpaired) binary feedback (label 1 / 0)
    ratings       a prompt (or instruction) + completions          a K-way comparison ranked by
                  [{response, score}], or responses + scores         score, equal scores tied;
                  (UltraFeedback)                                    scores and source in meta
    sft           messages | prompt + completion | text (a chat    a demonstration
                  transcript) (TRL SFT)

A conversion that fails raises `FormatError("field 'x': ...")`; the reader adds the file, the
line and "(read as FORMAT)". `to_trl` writes alignloop records in TRL's formats.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Callable


class FormatError(ValueError):
    """A row that its format cannot turn into a record; the message names the field."""


Row = dict[str, Any]
# optional record fields that every conversion carries over
CARRIED = ("id", "meta", "rater", "weight", "p")
SOURCES = ("human", "ai", "simulated", "gold")
HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")
CHATML_TURN = re.compile(r"<\|im_start\|>(system|user|assistant)\n(.*?)(?:<\|im_end\|>|$)", re.S)
HH_ROLES = {"Human": "user", "Assistant": "assistant"}


# ---------------------------------------------------------------- building blocks

def messages(value: Any, field: str) -> list[dict[str, str]]:
    """A message list as [{role, content}] (extra keys dropped), or a FormatError naming `field`."""
    if not isinstance(value, list) or not value:
        raise FormatError(f"field '{field}': expected a non-empty list of {{role, content}} messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise FormatError(f"field '{field}[{i}]': expected {{role, content}} with string values")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def as_chat(prompt: Row) -> list[dict[str, str]]:
    """The prompt fields {prompt} | {messages} as messages."""
    return prompt.get("messages") or [{"role": "user", "content": prompt["prompt"]}]


def prompt_fields(value: Any, field: str = "prompt") -> Row:
    """{"prompt": str} or {"messages": [...]} from a TRL prompt (a string or a message list)."""
    if isinstance(value, str):
        return {"prompt": value}
    if not isinstance(value, list):
        raise FormatError(f"field '{field}': expected a string or a list of {{role, content}} messages")
    return {"messages": messages(value, field)}


def completion_text(value: Any, field: str, prompt: list[dict] | None = None) -> str:
    """A completion's text: a string, or ONE assistant message (after the prompt's turns, when
    a dataset repeats them in the completion, as ultrafeedback_binarized does)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise FormatError(f"field '{field}': expected a string or a list of {{role, content}} messages")
    turns = messages(value, field)
    if prompt and turns[: len(prompt)] == prompt:
        turns = turns[len(prompt):]
    if len(turns) != 1 or turns[0]["role"] != "assistant":
        raise FormatError(f"field '{field}': expected one assistant message after the prompt, got "
                          f"{len(turns)} turn(s) ({', '.join(t['role'] for t in turns) or 'none'})")
    return turns[0]["content"]


def parse_transcript(text: str, field: str) -> list[dict[str, str]]:
    """Messages of a chat transcript: HH-RLHF turns ("\\n\\nHuman: ..." / "\\n\\nAssistant: ...";
    text before the first turn is a system message) or ChatML (<|im_start|>role ... <|im_end|>)."""
    if "<|im_start|>" in text:
        turns = [{"role": r, "content": c.strip()} for r, c in CHATML_TURN.findall(text)]
    else:
        parts = HH_TURN.split(text)  # [before, role, content, role, content, ...]
        turns = [{"role": "system", "content": parts[0].strip()}] if parts[0].strip() else []
        turns += [{"role": HH_ROLES[r], "content": c.strip()} for r, c in zip(parts[1::2], parts[2::2])]
    if not any(t["role"] != "system" for t in turns):
        raise FormatError(f"field '{field}': no chat turns found (expected '\\n\\nHuman:' / '\\n\\nAssistant:' "
                          "or '<|im_start|>role' turns)")
    return turns


def looks_like_hh(text: Any) -> bool:
    return isinstance(text, str) and "Human:" in text and bool(HH_TURN.search(text))


def carried(row: Row, used: tuple[str, ...]) -> Row:
    """The optional record fields of `row`, `source` when it is one of alignloop's, and every other
    scalar column in `meta` (a dataset's `source` such as 'evol_instruct' included)."""
    out: Row = {k: row[k] for k in CARRIED if row.get(k) is not None}
    if "id" in out:
        out["id"] = str(out["id"])
    meta = dict(out.get("meta") or {})
    for k, v in row.items():
        if k in used or k in CARRIED or v is None:
            continue
        if k == "source" and v in SOURCES:
            out["source"] = v
        elif isinstance(v, (str, int, float, bool)):
            meta[k] = v
    if meta:
        out["meta"] = meta
    return out


def label_of(row: Row, pair: list[str]) -> Row:
    """The comparison label: its soft label `p` when the row has one, else chosen (first) wins."""
    return {"responses": pair, **({} if row.get("p") is not None else {"ranking": [0, 1]})}


def split_common_prefix(chosen: list[dict], rejected: list[dict]) -> tuple[list[dict], str, str]:
    """(shared prompt turns, chosen response, rejected response) of two full dialogues."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        raise FormatError("field 'chosen': chosen and rejected share no prompt turns (implicit prompt)")
    if n == len(chosen) == len(rejected):
        raise FormatError("field 'rejected': the same dialogue as 'chosen'")
    return chosen[:n], completion_text(chosen[n:], "chosen"), completion_text(rejected[n:], "rejected")


def text_prefix(chosen: str, rejected: str) -> tuple[str, str, str]:
    """TRL's implicit prompt of two strings: their common prefix (a space before the first
    difference stays with the responses)."""
    idx = 0
    while idx < min(len(chosen), len(rejected)) and chosen[idx] == rejected[idx]:
        idx += 1
    if idx and chosen[idx - 1] == " ":
        idx -= 1
    if not chosen[:idx].strip():
        raise FormatError("field 'chosen': chosen and rejected share no prompt text (implicit prompt)")
    return chosen[:idx], chosen[idx:], rejected[idx:]


# ---------------------------------------------------------------- one converter per format

def from_alignloop(row: Row) -> Row:
    return row


def from_trl(row: Row) -> Row:
    prompt = prompt_fields(row["prompt"])
    chat = as_chat(prompt)
    pair = [completion_text(row["chosen"], "chosen", chat), completion_text(row["rejected"], "rejected", chat)]
    return {**prompt, **label_of(row, pair), **carried(row, ("prompt", "chosen", "rejected", "messages"))}


def _implicit(row: Row, chosen: Any, rejected: Any) -> Row:
    if isinstance(chosen, str) and isinstance(rejected, str):
        prompt, a, b = text_prefix(chosen, rejected)
        return {"prompt": prompt, **label_of(row, [a, b]), **carried(row, ("chosen", "rejected"))}
    shared, a, b = split_common_prefix(messages(chosen, "chosen"), messages(rejected, "rejected"))
    return {"messages": shared, **label_of(row, [a, b]), **carried(row, ("chosen", "rejected"))}


def from_trl_implicit(row: Row) -> Row:
    return _implicit(row, row["chosen"], row["rejected"])


def from_hh_rlhf(row: Row) -> Row:
    for f in ("chosen", "rejected"):
        if not isinstance(row[f], str):
            raise FormatError(f"field '{f}': expected a transcript string")
    return _implicit(row, parse_transcript(row["chosen"], "chosen"), parse_transcript(row["rejected"], "rejected"))


def from_kto(row: Row) -> Row:
    label = row["label"]
    if not isinstance(label, bool) and label not in (0, 1):
        raise FormatError(f"field 'label': {label!r} is not a boolean")
    prompt = prompt_fields(row["prompt"])
    return {**prompt, "response": completion_text(row["completion"], "completion", as_chat(prompt)),
            "label": int(label), **carried(row, ("prompt", "completion", "label"))}


SCORE_KEYS = ("score", "overall_score", "rating")
TEXT_KEYS = ("response", "text", "completion")


def _first_key(d: dict, keys: tuple[str, ...], field: str) -> Any:
    for k in keys:
        if d.get(k) is not None:
            return d[k]
    raise FormatError(f"field '{field}': missing (give one of {', '.join(keys)})")


def ranking_by_score(scores: list[float]) -> list:
    """Response indices best first, equal scores tied: [7, 9, 7] -> [1, [0, 2]]."""
    tiers: dict[float, list[int]] = {}
    for i, s in enumerate(scores):
        tiers.setdefault(s, []).append(i)
    return [t[0] if len(t) == 1 else t for _, t in sorted(tiers.items(), key=lambda kv: -kv[0])]


def from_ratings(row: Row) -> Row:
    if "completions" in row:
        items = row["completions"]
        if not isinstance(items, list):
            raise FormatError("field 'completions': expected a list of {response, score}")
        texts, scores = [], []
        for i, c in enumerate(items):
            if not isinstance(c, dict):
                raise FormatError(f"field 'completions[{i}]': expected {{response, score}}")
            texts.append(_first_key(c, TEXT_KEYS, f"completions[{i}].response"))
            scores.append(_first_key(c, SCORE_KEYS, f"completions[{i}].score"))
        models = [c.get("model") for c in items]
    else:
        texts, scores, models = row["responses"], row["scores"], []
        if not isinstance(texts, list) or not isinstance(scores, list) or len(texts) != len(scores):
            raise FormatError("field 'scores': expected a list as long as 'responses'")
    for i, s in enumerate(scores):
        if isinstance(s, bool) or not isinstance(s, (int, float)):
            raise FormatError(f"field 'scores[{i}]': {s!r} is not a number")
    if "prompt" in row:
        prompt = prompt_fields(row["prompt"])
    elif "instruction" in row:
        prompt = prompt_fields(row["instruction"], "instruction")
    else:
        prompt = {"messages": messages(row.get("messages"), "messages")}
    out = {**prompt, "responses": texts, "ranking": ranking_by_score(scores),
           **carried(row, ("prompt", "instruction", "messages", "completions", "responses", "scores"))}
    out["meta"] = {**out.get("meta", {}), "scores": scores, **({"models": models} if any(models) else {})}
    return out


def from_sft(row: Row) -> Row:
    used = ("messages", "prompt", "completion", "text")
    if "messages" in row:
        return {"messages": messages(row["messages"], "messages"), **carried(row, used)}
    if "completion" in row:
        if "prompt" not in row:
            raise FormatError("field 'prompt': missing (a completion needs its prompt)")
        prompt = prompt_fields(row["prompt"])
        return {**prompt, "response": completion_text(row["completion"], "completion", as_chat(prompt)),
                **carried(row, used)}
    if not isinstance(row.get("text"), str):
        raise FormatError("field 'text': missing (give 'messages', 'prompt' + 'completion' or 'text')")
    return {"messages": parse_transcript(row["text"], "text"), **carried(row, used)}


@dataclass(frozen=True)
class Format:
    needs: tuple[str, ...]  # fields every row of it has (a missing one is named in the error)
    convert: Callable[[Row], Row]
    becomes: str  # what a row becomes, for messages


FORMATS: dict[str, Format] = {
    "alignloop": Format((), from_alignloop, "alignloop records"),
    "trl": Format(("prompt", "chosen", "rejected"), from_trl, "TRL preference, explicit prompt -> comparisons"),
    "trl-implicit": Format(("chosen", "rejected"), from_trl_implicit,
                           "TRL preference, implicit prompt -> comparisons"),
    "hh-rlhf": Format(("chosen", "rejected"), from_hh_rlhf, "HH-RLHF transcripts -> comparisons"),
    "kto": Format(("prompt", "completion", "label"), from_kto, "TRL unpaired preference -> binary feedback"),
    "ratings": Format((), from_ratings, "ratings -> K-way comparisons by score"),
    "sft": Format((), from_sft, "SFT data -> demonstrations"),
}


def detect(row: Row) -> str:
    """The format of one row, by its fields."""
    keys = set(row)
    if {"chosen", "rejected"} <= keys:
        if "prompt" in keys:
            return "trl"
        if "messages" in keys:
            return "alignloop"  # alignloop's shorthand with a message-list prompt
        return "hh-rlhf" if looks_like_hh(row["chosen"]) else "trl-implicit"
    if {"completion", "label"} <= keys:
        return "kto"
    if "completions" in keys or ({"responses", "scores"} <= keys and "ranking" not in keys and "p" not in keys):
        return "ratings"
    if "completion" in keys or ("text" in keys and not keys & {"prompt", "messages"}):
        return "sft"
    if "messages" in keys and not keys & {"response", "responses", "label"} and isinstance(row["messages"], list) \
            and row["messages"] and isinstance(row["messages"][-1], dict) and row["messages"][-1].get("role") == "assistant":
        return "sft"
    return "alignloop"


def convert(fmt: str, row: Row) -> Row:
    """`row` as an alignloop-shaped dict, read as format `fmt`."""
    spec = FORMATS[fmt]
    for f in spec.needs:
        if f not in row:
            raise FormatError(f"field '{f}': missing")
    return spec.convert(row)


ALIGNLOOP_FIELDS = {"prompt", "messages", "response", "responses", "chosen", "rejected", "ranking", "label"}


def hint(fmt: str, row: Row) -> str:
    """What a row was read as, for the end of an error message."""
    if fmt != "alignloop":
        return f" (read as {fmt}: {FORMATS[fmt].becomes})"
    if isinstance(row, dict) and not set(row) & ALIGNLOOP_FIELDS:
        fields = ", ".join(list(row)[:8]) or "none"
        return (f" (its fields: {fields}; no format alignloop reads has these: name columns with "
                "--columns prompt=COLUMN,chosen=COLUMN,... or force one with --input-format)")
    return ""


def record_kind(data: Row) -> str:
    """Which record type an alignloop-shaped dict is (a key of records.RECORD_TYPES)."""
    if "label" in data and "response" in data:
        return "binary"
    if "chosen" in data or ("responses" in data and ("ranking" in data or "p" in data)):
        return "comparison"
    if "responses" in data:
        return "samples"
    msgs = data.get("messages")
    ends_with_answer = isinstance(msgs, list) and msgs and isinstance(msgs[-1], dict) and msgs[-1].get("role") == "assistant"
    if "response" in data or ends_with_answer:
        return "demonstration"
    return "prompt"


def rename_columns(row: Row, columns: dict[str, str]) -> Row:
    """`columns` maps alignloop field -> the dataset's column (prompt=question): rename them."""
    if not columns:
        return row
    missing = [theirs for theirs in columns.values() if theirs not in row]
    if missing:
        raise FormatError(f"field '{missing[0]}': missing (named by --columns; the row has {', '.join(row)})")
    out = {k: v for k, v in row.items() if k not in columns.values() and k not in columns}
    out.update({ours: row[theirs] for ours, theirs in columns.items()})
    return out


def parse_columns(spec: str | None) -> dict[str, str]:
    """'prompt=question,chosen=better' -> {'prompt': 'question', 'chosen': 'better'}."""
    out: dict[str, str] = {}
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        ours, sep, theirs = part.partition("=")
        if not sep or not ours.strip() or not theirs.strip():
            raise FormatError(f"--columns: '{part.strip()}' is not FIELD=COLUMN (e.g. prompt=question)")
        out[ours.strip()] = theirs.strip()
    return out


# ---------------------------------------------------------------- alignloop records -> TRL

def _trl_prompt(record, conversational: bool) -> Any:
    return record.chat() if conversational else record.prompt_text()


def _trl_completion(text: str, conversational: bool) -> Any:
    return [{"role": "assistant", "content": text}] if conversational else text


def _uniform(rows: list[Row]) -> list[Row]:
    """Every row with the same columns (None where one lacks it): Parquet and datasets need one schema."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return [{k: r.get(k) for k in keys} for r in rows]


def to_trl(records: list) -> tuple[list[Row], str]:
    """alignloop records of one kind in TRL's format, and a one-line summary.

    comparisons  -> preference with an explicit prompt: one row per ordered pair of responses
                    (`chosen` ranked above `rejected`; the C(K, 2) pairs of a K-way ranking, tied
                    pairs left out), with extra columns `p` (probability that chosen is better:
                    1.0 for a ranking, max(p, 1 - p) for a soft label) and `weight` (the record's
                    weight shared by its pairs, as alignloop's loss averages them); id, rater, source
    binary       -> unpaired preference (KTO): prompt, completion, label (bool)
    demonstrations -> prompt + completion, or messages for conversations
    prompts      -> prompt only
    A file with any multi-turn or system prompt is written conversational (message lists)."""
    from alignloop.data.records import BinaryFeedback, Comparison, Demonstration, PromptRecord, Samples

    kinds = {type(r).__name__ for r in records}
    if len(kinds) > 1:
        raise FormatError(f"records of several kinds ({', '.join(sorted(kinds))}): TRL has a format for each; "
                          "convert them one kind at a time")
    if any(isinstance(r, Samples) for r in records):
        raise FormatError("samples (responses without labels) have no TRL format; rank or rate them first")
    conv = any(r.chat() != [{"role": "user", "content": r.prompt_text()}] for r in records)
    rows: list[Row] = []
    ties = 0
    for r in records:
        prompt = _trl_prompt(r, conv)
        extra = {"id": r.id} if r.id is not None else {}
        if isinstance(r, (Comparison, BinaryFeedback)):
            extra.update({k: v for k, v in (("rater", r.rater), ("source", r.source)) if v is not None})
        if isinstance(r, Comparison):
            if r.p is not None:
                first = r.p >= 0.5
                pairs = [((0, 1) if first else (1, 0), max(r.p, 1 - r.p))]
            else:
                tiers = r.tiers()
                pairs = [((a, b), 1.0) for hi, lo in combinations(range(len(tiers)), 2)
                         for a in tiers[hi] for b in tiers[lo]]
                ties += sum(len(t) * (len(t) - 1) // 2 for t in tiers)
            share = r.weight / (len(r.responses) * (len(r.responses) - 1) / 2)
            for (a, b), p in pairs:
                rows.append({"prompt": prompt, "chosen": _trl_completion(r.responses[a], conv),
                             "rejected": _trl_completion(r.responses[b], conv), "p": p,
                             "weight": share if r.p is None else r.weight, **extra})
        elif isinstance(r, BinaryFeedback):
            rows.append({"prompt": prompt, "completion": _trl_completion(r.response, conv), "label": bool(r.label),
                         **extra})
        elif isinstance(r, Demonstration):
            rows.append({"messages": r.chat() + [{"role": "assistant", "content": r.response}], **extra} if conv
                        else {"prompt": prompt, "completion": r.response, **extra})
        elif isinstance(r, PromptRecord):
            rows.append({"prompt": prompt, **extra})
    kind = {"Comparison": "comparison", "BinaryFeedback": "binary feedback", "Demonstration": "demonstration",
            "PromptRecord": "prompt"}.get(next(iter(kinds), ""), "no")
    note = f"; {ties} tied pairs left out (TRL pairs have no ties)" if ties else ""
    return _uniform(rows), f"{len(records)} {kind} records -> {len(rows)} TRL rows" \
                           f"{' (conversational)' if conv else ''}{note}"
