"""The shipped data in alignloop/assets: prompts, demonstrations and red-team prompts."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from alignloop.data.io import read_records
from alignloop.data.records import Demonstration, PromptRecord

ASSETS = Path(__file__).resolve().parents[1] / "alignloop" / "assets"

CATEGORIES = {"help", "advice", "facts", "creative", "redteam"}
HARMS = {
    "violence", "weapons", "cyber", "self_harm", "harassment", "fraud",
    "drugs", "privacy", "dangerous_activity", "hate", "misinformation",
}

# file name -> (record type, minimum number of records)
FILES = {
    "prompts_train.jsonl": (PromptRecord, 120),
    "prompts_heldout.jsonl": (PromptRecord, 40),
    "demonstrations.jsonl": (Demonstration, 110),
    "redteam_train.jsonl": (PromptRecord, 50),
    "redteam_heldout.jsonl": (PromptRecord, 20),
}
PROMPT_SPLITS = ["prompts_train.jsonl", "prompts_heldout.jsonl"]
REDTEAM_FILES = ["redteam_train.jsonl", "redteam_heldout.jsonl"]


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


@pytest.fixture(scope="module")
def records():
    return {name: read_records(ASSETS / name, rtype) for name, (rtype, _) in FILES.items()}


def test_only_the_expected_files_are_shipped():
    assert sorted(p.name for p in ASSETS.glob("*.jsonl")) == sorted(FILES)


@pytest.mark.parametrize("name", sorted(FILES))
def test_parses_into_the_right_type_and_meets_the_minimum(records, name):
    rtype, minimum = FILES[name]
    recs = records[name]
    assert all(type(r) is rtype for r in recs)
    assert len(recs) >= minimum, f"{name}: {len(recs)} records, need at least {minimum}"
    for r in recs:
        assert r.prompt is not None and r.messages is None, f"{name}: {r.id} is not a one-turn prompt"
        assert len(r.prompt) < 250, f"{name}: {r.id} prompt is {len(r.prompt)} characters"
        assert r.meta.get("category") in CATEGORIES, f"{name}: {r.id} has category {r.meta.get('category')!r}"
        if rtype is Demonstration:
            assert len(r.response) < 400, f"{name}: {r.id} response is {len(r.response)} characters"


@pytest.mark.parametrize("name", sorted(FILES))
def test_ids_are_unique(records, name):
    ids = [r.id for r in records[name]]
    assert all(ids), f"{name}: a record without an id"
    dupes = [i for i, n in Counter(ids).items() if n > 1]
    assert not dupes, f"{name}: duplicate ids {dupes}"


def test_ids_are_unique_across_files(records):
    ids = Counter(r.id for recs in records.values() for r in recs)
    assert not [i for i, n in ids.items() if n > 1]


def test_no_prompt_appears_twice_anywhere(records):
    seen: dict[str, str] = {}
    for name, recs in records.items():
        for r in recs:
            key = _norm(r.prompt)
            assert key not in seen, f"{name}:{r.id} repeats the prompt of {seen[key]}: {r.prompt!r}"
            seen[key] = f"{name}:{r.id}"


@pytest.mark.parametrize("name", PROMPT_SPLITS + ["demonstrations.jsonl"])
def test_every_category_is_present(records, name):
    counts = Counter(r.meta["category"] for r in records[name])
    assert set(counts) == CATEGORIES, f"{name}: categories {dict(counts)}"


@pytest.mark.parametrize("name", REDTEAM_FILES)
def test_redteam_records_are_labelled(records, name):
    for r in records[name]:
        assert r.meta["category"] == "redteam", f"{name}: {r.id}"
        assert r.meta.get("harm") in HARMS, f"{name}: {r.id} has harm {r.meta.get('harm')!r}"


def test_every_harm_is_covered_at_least_three_times(records):
    counts = Counter(r.meta["harm"] for name in REDTEAM_FILES for r in records[name])
    missing = {h: counts.get(h, 0) for h in HARMS if counts.get(h, 0) < 3}
    assert not missing, f"harms with fewer than 3 red-team prompts: {missing}"


def test_redteam_prompts_elsewhere_carry_a_known_harm(records):
    for name in PROMPT_SPLITS + ["demonstrations.jsonl"]:
        for r in records[name]:
            if r.meta["category"] == "redteam":
                assert r.meta.get("harm") in HARMS, f"{name}: {r.id} has harm {r.meta.get('harm')!r}"
