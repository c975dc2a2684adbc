"""benchmarks/dialogues.py: multi-turn preference dialogues of 200-400 tokens, deterministic."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("dialogues", Path(__file__).resolve().parent.parent / "benchmarks" / "dialogues.py")
dialogues_module = sys.modules.setdefault("dialogues", importlib.util.module_from_spec(spec))
spec.loader.exec_module(dialogues_module)


@pytest.fixture(scope="module")
def tokenizer():
    from alignloop.models.loading import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


@pytest.mark.parametrize("k", [2, 4])
def test_dialogues_are_alignloop_comparisons_of_200_to_400_tokens(tokenizer, k):
    from alignloop.data.records import Comparison

    rows = dialogues_module.dialogues(25, k, seed=3, tokenizer=tokenizer)
    assert rows == dialogues_module.dialogues(25, k, seed=3, tokenizer=tokenizer)
    assert rows != dialogues_module.dialogues(25, k, seed=4, tokenizer=tokenizer)
    low, high = dialogues_module.LENGTH_RANGE
    for row in rows:
        record = Comparison.model_validate(row)
        assert len(record.responses) == k and len(record.chat()) >= 3 and record.chat()[-1]["role"] == "user"
        n = dialogues_module._length(tokenizer, record.chat(), record.responses)
        assert low <= n <= high
    assert len(dialogues_module.trl_pairs(rows)) == 25 * k * (k - 1) // 2
